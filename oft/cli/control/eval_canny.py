"""C2I: canny-edge IoU and F1 of generated images against their targets (paper Table 2).

Reads a sampling output folder (source/image_{i}.png, results/result_{i}_{n}.png), runs cv2.Canny(100, 200)
on the target and on generated sample 0 (or --sample-index N, or every sample with --all-samples), and
averages the per-image IoU and F1. Writes <folder>/eval_canny.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse

from oft.cli.run import run_main
from oft.metrics.canny import PAPER, canny_report
from oft.metrics.folder import excluded_note, format_table, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="sampling output folder written by test_oft_parallel.py")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--sample-index", type=int, default=0, help="generated sample n scored per item (default 0)"
    )
    which.add_argument(
        "--all-samples", action="store_true", help="score every sample of every item and average"
    )
    p.add_argument(
        "--gray",
        action="store_true",
        help="run Canny on the grayscale image; default: on the colour image, as the reference did",
    )
    p.add_argument("--out", help="JSON report path (default <folder>/eval_canny.json)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    report, folder = canny_report(args.folder, None if args.all_samples else args.sample_index, args.gray)
    write_json(args.out or folder.root / "eval_canny.json", report)
    rows = [("IoU", report["iou"], PAPER["OFT"][0], PAPER["COFT"][0]),
            ("F1", report["f1"], PAPER["OFT"][1], PAPER["COFT"][1])]  # fmt: skip
    print(format_table((f"C2I ({report['images']} images)", "value", "paper OFT", "paper COFT"), rows))
    if note := excluded_note(folder):
        print(note)
    return report


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args, errors=(OSError, RuntimeError, ValueError))


if __name__ == "__main__":
    cli()
