"""Prepare the control model on SD1.5; ``--count-only`` prints its trainable parameters (paper Table 3).

    python oft-control/tool_add_control_oft.py --count-only --r 2 4 8 16

builds the real SD1.5 architecture without weights (meta device), injects OFT on the 144 control targets and
prints, per r, the OFT skew degrees of freedom, the hint encoder and the totals next to the paper's figures.
"""

from __future__ import annotations

import argparse

from oft.control.params import count_control_parameters, format_parameter_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--count-only", action="store_true", help="print the trainable-parameter table and exit")
    p.add_argument("--r", type=int, nargs="+", default=[4], help="numbers of OFT blocks (e.g. --r 2 4 8 16)")
    args = p.parse_args(argv)
    if not args.count_only:
        p.error("only --count-only is available in this version of the tool")
    if any(r < 1 for r in args.r):
        p.error(f"--r takes positive block counts, got {args.r}")
    return args


def main(args: argparse.Namespace) -> str:
    table = format_parameter_table([count_control_parameters(r) for r in args.r])
    print(table)
    return table


if __name__ == "__main__":
    main(parse_args())
