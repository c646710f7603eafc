"""Sample the validation set with a trained control model, for evaluation (paper §3): DDIM 50 steps, CFG 9, the
control kept in the unconditional branch, 6 samples per condition, each seeded by (item, sample) so the images
do not depend on how the work is split (byte for byte at equal --threads on the same device and software:
other thread counts change the last bits of some pixels). Finished items are skipped, so a killed job just
runs again. An item whose files cannot be read stops the run before sampling, naming its index and file
(--skip-unreadable: record it in <out>/excluded/ for the evaluators and sample the others). As the reference,
each item is sampled with the prompt "<caption>, " (its empty added prompt: one more token) and chunks hold 20
items; --bare_prompt samples with the caption alone.

    python oft-control/test_oft_parallel.py --img_ID=1 --eps=1e-3 --r=4 --coft      # chunk 1 (a job-array task)
    python oft-control/test_oft_parallel.py --eps=1e-3 --r=4 --coft                 # all chunks, one worker per GPU
    python oft-control/test_oft_parallel.py --eps=1e-3 --r=4 --coft --workers 2 --threads 1   # CPU workers

Writes <run folder>/generated/{source/image_i.png, hints/hint_i.png, results/result_i_n.png}.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oft.cli.flags import add_options, flag_names, options_from
from oft.cli.run import run_main
from oft.control.config import FINAL_MODEL, GENERATED_DIR, Experiment, Sampling


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, Experiment)
    add_options(p, Sampling)
    p.add_argument(
        *flag_names("img_ID", ("--img-id",)),
        dest="img_ID",
        type=int,
        default=None,
        help="process only chunk N: items N*batch .. N*batch+batch-1 (20N .. 20N+19 at the default --batch, "
        "the items of the reference's job-array task N); default: all chunks locally",
    )
    p.add_argument(
        *flag_names("model"),
        dest="model",
        default=None,
        help=f"trained control model [default: <run folder>/{FINAL_MODEL}; "
        "use control_norm.safetensors for the magnitude-fitted one]",
    )
    p.add_argument(
        *flag_names("out_dir"),
        dest="out_dir",
        default=None,
        help=f"where source/ hints/ results/ go [default: <run folder>/{GENERATED_DIR}]",
    )
    args = p.parse_args(argv)
    args.experiment, args.sampling = options_from(Experiment, args, p), options_from(Sampling, args, p)
    return args


def main(args: argparse.Namespace) -> Path:
    # the job pulls in Lightning and diffusers (~4 s): imported here so that --help and flag errors answer at once
    from oft.control import jobs

    return jobs.sample(args.experiment, args.sampling, args.model, out_dir=args.out_dir, img_id=args.img_ID)


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
