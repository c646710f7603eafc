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

from oft.cli.db.common import add_adapter_flags
from oft.cli.run import run_main
from oft.db.layout import EXPORT_FORMATS


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_adapter_flags(p)
    p.add_argument(
        "--output", required=True, help="output folder (diffusers) or .safetensors/.ckpt file (single-file)"
    )
    p.add_argument(
        "--format",
        choices=EXPORT_FORMATS,
        default="diffusers",
        help="diffusers folder or one LDM-layout file",
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    # the library call pulls in diffusers (~3 s): imported here so that --help and flag errors answer at once
    from oft.db.export import export_merged

    path = export_merged(args.base, args.adapter, args.output, args.format)
    print(f"wrote {path}")
    return path


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
