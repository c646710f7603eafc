"""Train oft-control: OFT rotations on the 144 control targets + the hint encoder, SD1.5 frozen (paper §3).

    python oft-control/tool_add_control_oft.py --input_path=./models/v1-5-pruned.ckpt \\
        --output_path=./models/control_sd15_ini_oft.ckpt --eps=1e-3 --r=4 --coft
    python oft-control/train.py --eps=1e-3 --r=4 --coft --control segm                 # one GPU
    python oft-control/train.py --eps=1e-3 --r=4 --coft --devices 4 --strategy ddp     # the paper's 4 GPUs

Defaults are the paper's: AdamW lr 1e-5, batch 16 per GPU (landmark 4), fp32, the task's epochs. The run
folder gets checkpoints/last.ckpt (resumed automatically), logs/ (TensorBoard + CSV), samples/ and, at the end,
control_final.safetensors (the trained model for train_with_norm.py and test_oft_parallel.py).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oft.cli.control.runs import parse_run
from oft.cli.run import run_main
from oft.common.paths import models_root
from oft.control.config import Training


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    model = str(models_root() / "control_sd15_ini_oft.ckpt")
    helps = "initial control model from tool_add_control_oft.py [default: %(default)s]"
    return parse_run(__doc__, argv, Training, model, helps, ("--resume_path",))


def main(args: argparse.Namespace) -> Path:
    # the job pulls in Lightning and diffusers (~4 s): imported here so that --help and flag errors answer at once
    from oft.control import jobs

    return jobs.train(args.experiment, args.training, args.model, stage="oft")


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
