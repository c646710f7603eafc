"""Magnitude post-fitting ("re-scaled OFT", paper §3 / Table 4): load a trained OFT/COFT control model, freeze
its rotations and hint encoder, add a per-output scale to every OFT layer (init 1) and train only the scales.

    python oft-control/train_with_norm.py --eps=1e-3 --r=4 --coft --control segm

reads <run folder>/control_final.safetensors (or --model) and writes <run folder>/control_norm.safetensors;
checkpoints and logs go to <run folder>/norm/. The paper fitted one extra epoch (default); the reference code
ran 5 (--epochs 5).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oft.cli.flags import add_options, flag_names, options_from
from oft.cli.run import run_main
from oft.control import jobs
from oft.control.checkpoint import FINAL_MODEL
from oft.control.config import Experiment, PostFit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        *flag_names("model"),
        dest="model",
        default=None,
        help=f"trained control model [default: <run folder>/{FINAL_MODEL}]",
    )
    add_options(p, Experiment)
    add_options(p, PostFit)
    args = p.parse_args(argv)
    args.experiment, args.training = options_from(Experiment, args, p), options_from(PostFit, args, p)
    return args


def main(args: argparse.Namespace) -> Path:
    model = args.model or args.experiment.run_dir / FINAL_MODEL
    return jobs.train(args.experiment, args.training, model, stage="magnitude")


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
