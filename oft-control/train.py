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

from oft.control.checkpoint import FINAL_MODEL, check_flags_match
from oft.control.cli import add_run_flags, check_run_flags, run_datasets, run_dir, train_config
from oft.control.defaults import flag_names
from oft.control.model import ControlOFT
from oft.control.training import fit
from oft.data.files import create_output_folder
from oft.entry_points import run_main
from oft.paths import models_root


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        *flag_names("model"),
        "--resume_path",
        dest="model",
        default=str(models_root() / "control_sd15_ini_oft.ckpt"),
        help="initial control model from tool_add_control_oft.py [default: %(default)s]",
    )
    add_run_flags(p)
    return check_run_flags(p, p.parse_args(argv))


def main(args: argparse.Namespace) -> Path:
    check_flags_match(args.model, r=args.r, eps=args.eps, coft=args.coft, block_share=args.block_share)
    out = run_dir(args)
    create_output_folder(out, f"--output_dir {out}")  # before data and model load: fails in a second
    train_set, sample_set = run_datasets(args)
    module = ControlOFT(
        args.model,
        args.base,
        stage="oft",
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        timestep_range=args.timestep_range,
    )
    trainer = fit(module, train_set, train_config(args, out), sample_set)
    if trainer.is_global_zero:
        module.export(out / FINAL_MODEL, task=args.control)
        print(f"wrote {out / FINAL_MODEL}")
    return out / FINAL_MODEL


if __name__ == "__main__":
    run_main(main, parse_args)
