"""Export a trained DreamBooth-OFT adapter: merged into its base (SD1.5, SD2.1, SDXL) as a standalone model any SD
tool opens, or as an adapter PEFT, AUTOMATIC1111 and ComfyUI (SD1.5) load.

    python oft-db/merge_adapter.py --adapter outputs/dreambooth/dog-0/adapter.safetensors --output models/dog-0
    python oft-db/merge_adapter.py --adapter ... --output models/dog-0.safetensors --format single-file
    python oft-db/merge_adapter.py --adapter ... --output exports/dog-0-peft --format peft
    python oft-db/merge_adapter.py --adapter ... --output loras/dog-0.safetensors --format webui
    python oft-db/merge_adapter.py --adapter exports/dog-0-peft --output dog-0.safetensors --format adapter

``diffusers`` writes a ``StableDiffusionPipeline.save_pretrained`` folder; ``single-file`` writes the original
LDM key layout (``.safetensors`` or ``.ckpt``), like ``v1-5-pruned.ckpt`` (each base in its own): the rotations are folded into the
attention weights, so the model is exactly as large and as fast as the base. ``peft`` writes a folder for
``PeftModel.from_pretrained(unet, folder)``; ``webui`` the per-layer weight differences the web UIs apply to any
SD1.5 checkpoint (put the file in A1111's models/Lora or ComfyUI's models/loras). ``--adapter`` also takes a PEFT
OFT/BOFT folder, so ``--format adapter`` converts one into this project's file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oft.cli.db.common import add_adapter_flags
from oft.cli.run import run_main
from oft.db.layout import EXPORT_FORMATS

DTYPES = ("float16", "float32")  # of the webui file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_adapter_flags(p)
    p.add_argument(
        "--output", required=True, help="output folder (diffusers, peft) or file (the other formats)"
    )
    p.add_argument(
        "--format",
        choices=list(EXPORT_FORMATS),
        default="diffusers",
        help="; ".join(f"{k}: {v}" for k, v in EXPORT_FORMATS.items()) + " (default: %(default)s)",
    )
    p.add_argument(
        "--dtype", choices=DTYPES, default="float16", help="dtype of the webui file (default: %(default)s)"
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    # the library call pulls in diffusers (~3 s): imported here so that --help and flag errors answer at once
    import torch

    from oft.db.export import export

    path = export(args.base, args.adapter, args.output, args.format, getattr(torch, args.dtype))
    print(f"wrote {path}")
    return path


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
