"""Pretrain the demo's tiny SD-shaped base (VAE, then UNet; text encoder random) on the synthetic task.

    python scripts/pretrain_tiny_base.py            # writes oft/demo/tiny_base/tiny-base.safetensors (+ .json)

The committed weights were made by exactly this command (seed 0, defaults below); see oft/demo/tiny_base/README.md.
Stages are reused on re-run (the VAE under --work_dir; the UNet is skipped when --out exists).
"""

from __future__ import annotations

import argparse
import json
from dataclasses import fields
from pathlib import Path

import torch

from oft.cli.run import run_main
from oft.demo.base import PretrainConfig, pretrain

DEFAULT_OUT = Path("oft/demo/tiny_base/tiny-base.safetensors")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(PretrainConfig):
        if isinstance(f.default, bool):
            p.add_argument(f"--{f.name}", action=argparse.BooleanOptionalAction, default=f.default)
        else:
            p.add_argument(
                f"--{f.name}", type=type(f.default), default=f.default, help=f"[default: {f.default}]"
            )
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="checkpoint to write [default: %(default)s]")
    p.add_argument(
        "--work_dir", type=Path, default=Path("outputs/pretrain"), help="stage outputs [default: %(default)s]"
    )
    p.add_argument("--eval_items", type=int, default=64, help="captions sampled for the colour accuracy")
    p.add_argument("--threads", type=int, default=None, help="torch threads [default: torch's]")
    args = p.parse_args(argv)
    if args.out.suffix != ".safetensors":
        p.error(f"--out must be a .safetensors file, got {args.out}")
    return args


def main(args: argparse.Namespace) -> dict:
    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = PretrainConfig(**{f.name: getattr(args, f.name) for f in fields(PretrainConfig)})
    report = pretrain(cfg, args.out, args.work_dir, args.eval_items)
    print(json.dumps({k: v for k, v in report.items() if k != "config"}, indent=2))
    return report


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
