"""Magnitude post-fitting ("re-scaled OFT", paper §3 / Table 4): load a trained OFT/COFT control model, freeze
its rotations and hint encoder, add a per-output scale to every OFT layer (init 1) and train only the scales.

    python oft-control/train_with_norm.py --eps=1e-3 --r=4 --coft --control segm

reads <run folder>/control_final.safetensors (or --model) and writes <run folder>/control_norm.safetensors;
checkpoints and logs go to <run folder>/norm/. The paper fitted one extra epoch (default); the reference code
ran 5 (--epochs 5).

The flags name the run, as for train.py: with none, the plain-OFT run (r 4). The reference's script instead read
a hard-coded COFT run (eps 1e-3, r 4, epoch 19: train_with_norm.py:53-56 at df2b263) whatever its flags said;
pass --coft for that one (a default of --coft here would make "drop --coft" post-fit, and overwrite, the COFT run).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oft.cli.control.runs import parse_run
from oft.cli.run import run_main
from oft.control.config import FINAL_MODEL, PostFit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    return parse_run(
        __doc__, argv, PostFit, None, f"trained control model [default: <run folder>/{FINAL_MODEL}]"
    )


def main(args: argparse.Namespace) -> Path:
    # the job pulls in Lightning and diffusers (~4 s): imported here so that --help and flag errors answer at once
    from oft.control import jobs

    model = args.model or args.experiment.run_dir / FINAL_MODEL
    return jobs.train(args.experiment, args.training, model, stage="magnitude")


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
