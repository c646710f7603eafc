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

from oft.cli.flags import add_data_root
from oft.cli.run import run_main
from oft.common.paths import data_root
from oft.metrics.folder import excluded_note, format_table, item_names, open_sample_folder, write_json
from oft.metrics.segmentation import (
    LABELS_DIR,
    PAPER,
    Segmenter,
    evaluate_segmentation,
    label_paths,
    load_segformer,
)
from oft.specs.tasks import get_task


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="sampling output folder written by test_oft_parallel.py")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--sample-index", type=int, default=0, help="generated sample n scored per item (default 0)"
    )
    which.add_argument("--all-samples", action="store_true", help="score every sample of every item")
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
    if args.real:
        indices, images = list(folder.indices), [folder.source(i) for i in folder.indices]
    else:
        pairs = folder.pairs(None if args.all_samples else args.sample_index)
        indices, images = [p.index for p in pairs], [p.result for p in pairs]
    root = data_root(args.data_root)
    task = get_task("segm")
    labels = label_paths(
        args.labels or root / task.dataset_dir / LABELS_DIR,
        item_names("segm", root),
        indices,
        root / task.caption_file("val", full=True),  # the file item_names reads
    )
    segmenter = segmenter or load_segformer(args.model, args.device)
    metrics = evaluate_segmentation(images, labels, segmenter, reduce_zero=not args.no_reduce_zero_label)
    samples = "real" if args.real else "all" if args.all_samples else args.sample_index
    report = {
        "metric": "segmentation",
        "folder": str(folder.root),
        "samples": samples,
        "excluded": sorted(folder.excluded),
        **metrics,
    }
    write_json(args.out or folder.root / f"eval_segm{'_real' if args.real else ''}.json", report)
    rows = [
        (k, metrics[k], PAPER["OFT"][j], PAPER["COFT"][j]) for j, k in enumerate(("mIoU", "mAcc", "aAcc"))
    ]
    print(format_table((f"S2I ({metrics['images']} images, %)", "value", "paper OFT", "paper COFT"), rows))
    if metrics["aspect_mismatch"]:
        print(
            f"note: {metrics['aspect_mismatch']} images differ in aspect ratio from their label maps (cropped?)"
        )
    if note := excluded_note(folder):
        print(note)
    return report


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args, errors=(OSError, RuntimeError, ValueError))


if __name__ == "__main__":
    cli()
