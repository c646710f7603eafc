"""C2I: canny-edge IoU and F1 of generated images against their targets (paper Table 2).

Reads a sampling output folder (source/image_{i}.png, results/result_{i}_{n}.png), runs cv2.Canny(100, 200)
on the target and on generated sample 0 (or --sample-index N, or every sample with --all-samples), and
averages the per-image IoU and F1. Writes <folder>/eval_canny.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse

from oft.cli.control.evaluation import chosen_sample, evaluation_parser, finish, run
from oft.metrics.canny import PAPER, canny_report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p, _ = evaluation_parser(__doc__)
    p.add_argument(
        "--gray",
        action="store_true",
        help="run Canny on the grayscale image; default: on the colour image, as the reference did",
    )
    p.add_argument("--out", help="JSON report path (default <folder>/eval_canny.json)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    result, folder = canny_report(args.folder, chosen_sample(args), args.gray)
    rows = [("IoU", result["iou"], PAPER["OFT"][0], PAPER["COFT"][0]),
            ("F1", result["f1"], PAPER["OFT"][1], PAPER["COFT"][1])]  # fmt: skip
    header = (f"C2I ({result['images']} images)", "value", "paper OFT", "paper COFT")
    return finish(result, args.out or folder.root / "eval_canny.json", folder, header, rows)


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run(main, parse_args)


if __name__ == "__main__":
    cli()
