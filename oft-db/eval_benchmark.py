"""Evaluate the full 750-run DreamBooth benchmark (all 30 subjects x 25 prompts): ``eval_ablation.py --prompts all``.

The code and the full --help: ``oft.cli.db.eval_benchmark``.
"""

from oft.cli.db.eval_benchmark import cli

if __name__ == "__main__":
    cli()
