"""Evaluate the full 750-run DreamBooth benchmark (all 30 subjects x 25 prompts): ``eval_ablation.py --prompts all``.

    python oft-db/eval_benchmark.py --output_root outputs/dreambooth [--step 1000]

Every option of eval_ablation.py applies (see ``python oft-db/eval_ablation.py --help``).
"""

from __future__ import annotations

import sys

from oft.entry_points import load_script, run_main

# the sibling script (oft-db/ has a dash: not a package)
eval_ablation = load_script("eval_ablation", "oft-db")


def parse_args(argv: list[str] | None = None):
    return eval_ablation.parse_args(["--prompts", "all", *(sys.argv[1:] if argv is None else argv)])


def main(args) -> dict:
    return eval_ablation.main(args)


if __name__ == "__main__":
    run_main(main, parse_args)
