"""Evaluate the full 750-run DreamBooth benchmark (all 30 subjects x 25 prompts): ``eval_ablation.py --prompts all``.

    python oft-db/eval_benchmark.py --output_root outputs/dreambooth [--step 1000]

Every option of eval_ablation.py applies (see ``python oft-db/eval_ablation.py --help``).
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

# the sibling script (oft-db/ is not a package: its name has a dash, as the reference named it)
_spec = importlib.util.spec_from_file_location("eval_ablation", Path(__file__).with_name("eval_ablation.py"))
eval_ablation = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(eval_ablation)


def parse_args(argv: list[str] | None = None):
    return eval_ablation.parse_args(["--prompts", "all", *(sys.argv[1:] if argv is None else argv)])


def main(args) -> dict:
    return eval_ablation.main(args)


if __name__ == "__main__":
    try:
        main(parse_args())
    except (ValueError, FileNotFoundError) as err:
        sys.exit(f"error: {err}")
