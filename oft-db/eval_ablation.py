"""Evaluate trained DreamBooth runs: DINO, CLIP-I, CLIP-T and LPIPS (paper Table 1), per subject and overall.

The code and the full --help: ``oft.cli.db.eval_ablation``.
"""

from oft.cli.db.eval_ablation import cli

if __name__ == "__main__":
    cli()
