"""The CPU demo (``make demo``): OFT, COFT and a rank-matched LoRA teach a pretrained tiny SD-shaped model to
follow canny edges on the synthetic task, through the real pipeline (tool, train.py, test_oft_parallel.py,
eval_canny.py); prints a table and writes outputs/demo/{results.md,results.json,grid.png,loss.png}.

    python scripts/demo.py                                    # ~10 min on an idle 2-core CPU
    python scripts/demo.py --steps 3000 --lr 1e-3 --devices 1 --out_dir outputs/demo_gpu   # fuller, GPU

Re-running reuses finished stages (delete the output folder to start over).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from oft.demo.pipeline import Demo, DemoConfig
from oft.entry_points import run_main

HELP = {
    "out_dir": "output folder",
    "base": "pretrained base (single-file SD checkpoint)",
    "steps": "optimizer steps per method (same for LoRA, OFT, COFT)",
    "batch_size": "training batch size",
    "lr": "AdamW learning rate, all methods",
    "timestep_range": "training timesteps LO HI: drawn from [LO, HI) (train.py --timestep_range)",
    "r": "OFT blocks per layer",
    "eps": "COFT eps",
    "resolution": "image size in pixels (multiple of 8)",
    "train_items": "synthetic training items",
    "val_items": "validation items sampled and evaluated",
    "sample_steps": "DDIM steps",
    "guidance": "classifier-free guidance scale",
    "devices": "training devices (Lightning) and sampling workers",
    "threads": "torch threads per process",
    "seed": "seed of data, training and sampling",
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(DemoConfig):
        kind = Path if isinstance(f.default, Path) else (int if f.name == "threads" else type(f.default))
        shape = (
            {"type": int, "nargs": 2, "metavar": ("LO", "HI")}
            if isinstance(f.default, tuple)
            else {"type": kind}
        )
        p.add_argument(
            f"--{f.name}", **shape, default=f.default, help=f"{HELP[f.name]} [default: {f.default}]"
        )
    args = p.parse_args(argv)
    args.timestep_range = tuple(args.timestep_range)
    for name in ("steps", "batch_size", "val_items", "train_items", "sample_steps", "devices"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be positive, got {getattr(args, name)}")
    if args.resolution % 8:
        p.error(f"--resolution must be a multiple of 8, got {args.resolution}")
    return args


def main(args: argparse.Namespace) -> dict:
    return Demo(DemoConfig(**vars(args))).run()


if __name__ == "__main__":
    run_main(main, parse_args)
