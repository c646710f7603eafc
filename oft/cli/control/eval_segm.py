"""S2I: SegFormer-B4 segments the generated images; mIoU / mAcc / aAcc against ADE20K labels (paper Table 2).

Segments generated sample 0 of every item (or --sample-index N, or every sample with --all-samples; with
--real the ground-truth targets source/image_{i}.png, the "real images" upper bound) and scores the
predictions against the ADE20K annotations as mmsegmentation does (150 classes, label 0 "other" ignored,
areas summed over the set). Item i's annotation is --labels/<stem>.png, <stem> being the target of line i of
<data-root>/ADE20K/val/prompt_val_blip_full.json (the file the sampler read). The default --labels folder,
<data-root>/ADE20K/val/annotations, holds ADEChallengeData2016/annotations/validation/*.png.
Model: nvidia/segformer-b4-finetuned-ade-512-512 from --model (a transformers folder), else
models/segformer-b4-finetuned-ade-512-512, else the local Hugging Face cache; nothing is downloaded.
Writes <folder>/eval_segm.json (or <folder>/eval_segm_real.json with --real; or --out) and prints a table.
"""

from __future__ import annotations

import argparse

from oft.cli.control.evaluation import chosen_sample, evaluation_parser, finish, run
from oft.cli.flags import add_data_root
from oft.common.paths import data_root
from oft.metrics.folder import open_sample_folder, report
from oft.metrics.segmentation import PAPER, Segmenter, evaluate_segmentation, folder_inputs, load_segformer


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p, which = evaluation_parser(__doc__)
    which.add_argument("--real", action="store_true", help="segment the ground-truth targets instead")
    p.add_argument(
        "--labels", help="folder of ADE20K annotation PNGs (default <data-root>/ADE20K/val/annotations)"
    )
    add_data_root(p)
    p.add_argument(
        "--no-reduce-zero-label",
        action="store_true",
        help="labels are already 0..149 with 255 ignored (default: ADE20K's 0 = other, 1..150)",
    )
    p.add_argument("--model", help="SegFormer transformers folder (default: see above)")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--out", help="JSON report path (default <folder>/eval_segm[_real].json)")
    return p.parse_args(argv)


def main(args: argparse.Namespace, segmenter: Segmenter | None = None) -> dict:
    """Score the folder; ``segmenter`` (image, label size) -> class map replaces SegFormer when given."""
    folder = open_sample_folder(args.folder)
    root = data_root(args.data_root)
    images, labels = folder_inputs(folder, root, chosen_sample(args), real=args.real, labels=args.labels)
    segmenter = segmenter or load_segformer(args.model, args.device)
    metrics = evaluate_segmentation(images, labels, segmenter, reduce_zero=not args.no_reduce_zero_label)
    result = report("segmentation", folder, "real" if args.real else chosen_sample(args), metrics)
    rows = [
        (k, metrics[k], PAPER["OFT"][j], PAPER["COFT"][j]) for j, k in enumerate(("mIoU", "mAcc", "aAcc"))
    ]
    header = (f"S2I ({metrics['images']} images, %)", "value", "paper OFT", "paper COFT")
    mismatch = metrics["aspect_mismatch"]
    notes = (
        [f"note: {mismatch} images differ in aspect ratio from their label maps (cropped?)"]
        if mismatch
        else []
    )
    out = args.out or folder.root / f"eval_segm{'_real' if args.real else ''}.json"
    return finish(result, out, folder, header, rows, notes)


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run(main, parse_args)


if __name__ == "__main__":
    cli()
