"""FID between generated images and real images, as pytorch-fid computes it (paper Table 4).

Generated set: sample 0 of every item (or --sample-index N, or every sample with --all-samples). Real set:
the ground-truth targets source/image_{i}.png of the same folder, or every image in --real DIR. Features:
pytorch-fid's InceptionV3 (2048-d pool3) with the weights file pt_inception-2015-12-05-6726825d.pth from
--model, else models/, else torch's hub cache (where pytorch-fid saves it); nothing is downloaded.
FID of a few hundred images is biased upwards: compare numbers computed on sets of the same size.
Writes <folder>/eval_fid.json (or --out) and prints a table.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oft.cli.run import run_main
from oft.common.images import list_images
from oft.metrics.fid import PAPER, evaluate_fid, load_inception
from oft.metrics.folder import excluded_note, format_table, open_sample_folder, write_json


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="sampling output folder written by test_oft_parallel.py")
    which = p.add_mutually_exclusive_group()
    which.add_argument("--sample-index", type=int, default=0, help="generated sample n per item (default 0)")
    which.add_argument("--all-samples", action="store_true", help="use every generated sample of every item")
    p.add_argument("--real", help="folder of real images (default <folder>/source)")
    p.add_argument("--model", help="Inception weights file pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--out", help="JSON report path (default <folder>/eval_fid.json)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    folder = open_sample_folder(args.folder)
    generated = [p.result for p in folder.pairs(None if args.all_samples else args.sample_index)]
    real = list_images(args.real) if args.real else [folder.source(i) for i in folder.indices]
    if args.real and not real:
        what = "holds no images" if Path(args.real).is_dir() else "does not exist"
        raise FileNotFoundError(f"--real {args.real} {what}")
    model = load_inception(args.model, args.device)
    metrics = evaluate_fid(generated, real, model, args.batch_size, args.device)
    report = {"metric": "fid", "folder": str(folder.root), "real_folder": str(args.real or folder.root / "source"),
              "samples": "all" if args.all_samples else args.sample_index, "excluded": sorted(folder.excluded),
              **metrics}  # fmt: skip
    write_json(args.out or folder.root / "eval_fid.json", report)
    rows = [("FID", metrics["fid"], PAPER["COFT"], PAPER["re-scaled COFT"])]
    title = f"FID ({metrics['generated']} generated, {metrics['real']} real)"
    print(format_table((title, "value", "paper COFT (S2I)", "paper re-scaled COFT"), rows))
    if note := excluded_note(folder):
        print(note)
    return report


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args, errors=(OSError, RuntimeError, ValueError))


if __name__ == "__main__":
    cli()
