"""Evaluate the full 750-run DreamBooth benchmark (all 30 subjects x 25 prompts): ``eval_ablation.py --prompts all``.

    python oft-db/eval_benchmark.py --output_root outputs/dreambooth [--step 1000]

Every option of eval_ablation.py applies (see ``python oft-db/eval_ablation.py --help``).
"""

from __future__ import annotations

import sys

from oft.cli.db import eval_ablation
from oft.cli.run import run_main


def parse_args(argv: list[str] | None = None):
    return eval_ablation.parse_args(["--prompts", "all", *(sys.argv[1:] if argv is None else argv)])


def main(args) -> dict:
    return eval_ablation.main(args)


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
