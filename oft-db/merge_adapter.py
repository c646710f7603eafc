"""Merge a trained DreamBooth-OFT adapter into SD1.5 and save a standalone model any SD tool opens.

    python oft-db/merge_adapter.py --adapter outputs/dreambooth/dog-0/adapter.safetensors --output models/dog-0
    python oft-db/merge_adapter.py --adapter ... --output models/dog-0.safetensors --format single-file

``diffusers`` writes a ``StableDiffusionPipeline.save_pretrained`` folder; ``single-file`` writes the original
LDM key layout (``.safetensors`` or ``.ckpt``), like ``v1-5-pruned.ckpt``. The rotations are folded into the
attention weights, so the model is exactly as large and as fast as the base.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oft.db.export import FORMATS, export_merged
from oft.db.train import TrainConfig
from oft.entry_points import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="adapter.safetensors written by train_dreambooth_oft.py")
    p.add_argument(
        "--base",
        default=TrainConfig.pretrained_model,
        help="the SD1.5 it was trained on (file or diffusers folder)",
    )
    p.add_argument(
        "--output", required=True, help="output folder (diffusers) or .safetensors/.ckpt file (single-file)"
    )
    p.add_argument(
        "--format", choices=FORMATS, default="diffusers", help="diffusers folder or one LDM-layout file"
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    path = export_merged(args.base, args.adapter, args.output, args.format)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    run_main(main, parse_args)
