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

from oft.cli.control.evaluation import chosen_sample, evaluation_parser, finish, run
from oft.common.images import list_images
from oft.metrics.fid import PAPER, evaluate_fid, load_inception
from oft.metrics.folder import open_sample_folder, report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p, _ = evaluation_parser(__doc__)
    p.add_argument("--real", help="folder of real images (default <folder>/source)")
    p.add_argument("--model", help="Inception weights file pt_inception-2015-12-05-6726825d.pth")
    p.add_argument("--batch-size", type=int, default=50, help="images per Inception batch")
    p.add_argument("--device", default="cpu", help="torch device, e.g. cuda")
    p.add_argument("--out", help="JSON report path (default <folder>/eval_fid.json)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> dict:
    folder = open_sample_folder(args.folder)
    generated = [p.result for p in folder.pairs(chosen_sample(args))]
    real = list_images(args.real) if args.real else [folder.source(i) for i in folder.indices]
    if args.real and not real:
        what = "holds no images" if Path(args.real).is_dir() else "does not exist"
        raise FileNotFoundError(f"--real {args.real} {what}")
    model = load_inception(args.model, args.device)
    metrics = evaluate_fid(generated, real, model, args.batch_size, args.device)
    real_folder = str(args.real or folder.source(0).parent)
    result = report("fid", folder, chosen_sample(args), metrics, real_folder=real_folder)
    rows = [("FID", metrics["fid"], PAPER["COFT"], PAPER["re-scaled COFT"])]
    header = (f"FID ({metrics['generated']} generated, {metrics['real']} real)", "value", "paper COFT (S2I)",
              "paper re-scaled COFT")  # fmt: skip
    return finish(result, args.out or folder.root / "eval_fid.json", folder, header, rows)


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run(main, parse_args)


if __name__ == "__main__":
    cli()
