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

from oft.control.checkpoint import FINAL_MODEL, NORM_MODEL, check_flags_match
from oft.control.cli import add_run_flags, check_run_flags, run_datasets, run_dir, train_config
from oft.control.defaults import flag_names
from oft.control.model import ControlOFT
from oft.control.training import fit
from oft.data.files import create_output_folder
from oft.entry_points import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        *flag_names("model"),
        dest="model",
        default=None,
        help=f"trained control model [default: <run folder>/{FINAL_MODEL}]",
    )
    add_run_flags(p, epochs="norm_epochs")
    return check_run_flags(p, p.parse_args(argv))


def main(args: argparse.Namespace) -> Path:
    out = run_dir(args)
    model = args.model or str(out / FINAL_MODEL)
    check_flags_match(model, r=args.r, eps=args.eps, coft=args.coft, block_share=args.block_share)
    create_output_folder(out / "norm", f"--output_dir {out}")  # before data and model load
    train_set, sample_set = run_datasets(args)
    module = ControlOFT(
        model,
        args.base,
        stage="magnitude",
        lr=args.lr,
        weight_decay=args.weight_decay,
        seed=args.seed,
        gradient_checkpointing=args.gradient_checkpointing,
        timestep_range=args.timestep_range,
    )
    trainer = fit(module, train_set, train_config(args, out / "norm"), sample_set)
    if trainer.is_global_zero:
        module.export(out / NORM_MODEL, task=args.control)
        print(f"wrote {out / NORM_MODEL}")
    return out / NORM_MODEL


if __name__ == "__main__":
    run_main(main, parse_args)
