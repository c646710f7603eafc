"""L2F: mean 68-point facial landmark error of generated faces (paper Table 2; lower is better).

Reads a sampling output folder (source/image_{i}.png, results/result_{i}_{n}.png), detects landmarks on
generated sample 0 of every item (or --sample-index N, or every sample with --all-samples) with
face_alignment (S3FD + 2D-FAN-4, as the reference) and compares item i with item i's ground truth (--gt),
given in CelebA-HQ's 1024-px coordinates (--gt-size) and scaled to the generated width:
  - a folder of <name>.txt files (68 lines "x y"), the reference's celebhq-text/celeba-hq-landmark2d/;
    item i is the i-th entry of celebhq-text/prompt_val_blip_full.json (default, under --data-root);
  - a .json file {"<i>": [[x, y] * 68]} or a .npy array (N, 68, 2) whose row i is item i.
Writes <folder>/eval_landmark.json (or --out) with the number of images without a detected face.
face_alignment is not installed by default (it would pull opencv-python over opencv-python-headless):
  pip install --no-deps face-alignment==1.5.0 && pip install numba
"""

from __future__ import annotations

import argparse

from oft.cli.control.evaluation import chosen_sample, evaluation_parser, finish, run
from oft.cli.flags import add_data_root
from oft.common.paths import data_root
from oft.metrics.folder import open_sample_folder, report
from oft.metrics.landmark import (
    GT_FOLDER,
    GT_SIZE,
    PAPER,
    FaceAlignmentDetector,
    LandmarkDetector,
    evaluate_landmarks,
    load_ground_truth,
)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p, _ = evaluation_parser(__doc__)
    p.add_argument("--gt", help=f"ground-truth landmarks (default <data-root>/celebhq-text/{GT_FOLDER})")
    p.add_argument("--gt-size", type=int, default=GT_SIZE, help="image size the --gt coordinates refer to")
    add_data_root(p)
    p.add_argument(
        "--model",
        help="torch hub folder whose checkpoints/ holds face_alignment's weights (default torch's hub folder)",
    )
    p.add_argument("--device", default="cpu", help="torch device for the detector, e.g. cuda")
    p.add_argument("--out", help="JSON report path (default <folder>/eval_landmark.json)")
    return p.parse_args(argv)


def main(args: argparse.Namespace, detector: LandmarkDetector | None = None) -> dict:
    """Score the folder; ``detector`` (anything with ``detect``) replaces face_alignment when given."""
    folder = open_sample_folder(args.folder)
    pairs = folder.pairs(chosen_sample(args))
    gt = load_ground_truth(args.gt, data_root(args.data_root), [p.index for p in pairs])
    detector = detector or FaceAlignmentDetector(args.device, args.model)
    metrics = evaluate_landmarks(pairs, gt, detector, args.gt_size)
    result = report("landmark", folder, chosen_sample(args), metrics)
    rows = [("landmark error (px)", metrics["landmark_error"], PAPER["OFT"], PAPER["COFT"]),
            ("images without a face", metrics["no_face"], None, None)]  # fmt: skip
    header = (f"L2F ({metrics['images']} images)", "value", "paper OFT", "paper COFT")
    return finish(result, args.out or folder.root / "eval_landmark.json", folder, header, rows)


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run(main, parse_args)


if __name__ == "__main__":
    cli()
