"""Prepare COCO 2017 for the canny (canny1k/5k/20k/50k) and depth control tasks.

    python scripts/prepare_coco.py [--data-root /shared/data] [--coco-dir /shared/coco2017] [--workers 16]

Without --coco-dir, COCO 2017 (train2017.zip, val2017.zip, annotations_trainval2017.zip; about 19 GB) is
downloaded into <data root>/coco2017/ with the resumable, verified helper of scripts/setup_data.py. The
result is <data root>/COCO/{train,val}/{color,canny[,depth]}/ with the caption files the loaders read.
Deterministic given --seed; rerunning skips finished images, so an interrupted run resumes.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from oft.cli.flags import add_data_root
from oft.common.paths import data_root
from oft.setup.coco import prepare_coco
from oft.setup.download import run_job, setup
from oft.setup.sources import SOURCES
from oft.specs.tasks import CANNY_THRESHOLDS

COCO_SOURCES = ("coco_train2017", "coco_val2017", "coco_annotations")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the command line."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_data_root(parser)
    parser.add_argument(
        "--coco-dir",
        type=Path,
        help="existing COCO 2017 folder with train2017/, val2017/, annotations/ (default: download "
        "into <data root>/coco2017)",
    )
    parser.add_argument(
        "--captions-train",
        type=Path,
        help="BLIP (or other) captions for train2017 instead of "
        'COCO\'s: {"file name": caption} or records {"image": ..., "prompt": ...}',
    )
    parser.add_argument("--captions-val", type=Path, help="the same for val2017")
    parser.add_argument(
        "--size", type=int, default=512, help="side of the square targets and hints (default 512)"
    )
    parser.add_argument("--seed", type=int, default=0, help="seed of the subsets and the validation preview")
    parser.add_argument(
        "--workers", type=int, default=os.cpu_count(), help="processes for canny (default: all cores)"
    )
    parser.add_argument(
        "--val-preview", type=int, default=8, help="images in prompt_val_blip.json (default 8)"
    )
    parser.add_argument(
        "--depth-model",
        type=Path,
        help="local transformers depth-estimation folder (DPT/MiDaS); without it depth/ is skipped",
    )
    parser.add_argument("--retries", type=int, default=5, help="download retries on network failures")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.epilog = (
        f"Canny thresholds {CANNY_THRESHOLDS} (the reference's). Layout: see the README's data section."
    )
    args = parser.parse_args(argv)
    if args.size < 8 or args.workers < 1 or args.val_preview < 1:
        parser.error("--size must be >= 8, --workers and --val-preview >= 1")
    for flag in ("captions_train", "captions_val", "coco_dir"):
        path = getattr(args, flag)
        if path is not None and not path.exists():
            parser.error(f"--{flag.replace('_', '-')} {path} does not exist")
    return args


def main(args: argparse.Namespace) -> int:
    """Download COCO if needed, prepare it, print the layout summary; 1 with one error line on failure."""
    root = data_root(args.data_root)

    def job() -> str:
        coco_dir = args.coco_dir
        if coco_dir is None:
            for name in COCO_SOURCES:
                print(setup(SOURCES[name], root, retries=args.retries, progress=not args.no_progress))
            coco_dir = root / "coco2017"
        captions = {
            s: p for s, p in (("train", args.captions_train), ("val", args.captions_val)) if p is not None
        }
        summary = prepare_coco(
            coco_dir,
            root,
            captions=captions,
            size=args.size,
            seed=args.seed,
            workers=args.workers,
            val_preview=args.val_preview,
            depth_model=args.depth_model,
            progress=not args.no_progress,
        )
        return f"COCO ready at {root / 'COCO'}: {summary}"

    return run_job(job)


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    sys.exit(main(parse_args()))


if __name__ == "__main__":
    cli()
