"""The flags the oft-db command lines share, each defined once: the benchmark's folders and the adapter/base pair."""

from __future__ import annotations

import argparse

from oft.cli.flags import add_data_root
from oft.db.config import DreamBoothConfig
from oft.db.runs import DEFAULT_OUTPUT_ROOT

Flags = argparse.ArgumentParser | argparse._ArgumentGroup  # where flags are added: a parser or a group


def add_output_root(p: Flags, help: str) -> None:
    """``--output_root``: the folder of the run folders ``{subject}-{prompt}``."""
    p.add_argument("--output_root", default=DEFAULT_OUTPUT_ROOT, help=f"{help} (default: %(default)s)")


def add_benchmark_folders(p: Flags, holds: str, runs: str) -> None:
    """``--data-root`` (also spelled ``--data_root``: the datasets folder, holding ``holds``) and
    ``--output_root`` (``runs``: what the run folders there are for)."""
    add_data_root(p, holds)
    add_output_root(p, runs)


def add_adapter_flags(p: Flags) -> None:
    """``--adapter`` (a trained adapter file or PEFT folder) and ``--base`` (the SD base it was trained on)."""
    p.add_argument(
        "--adapter",
        required=True,
        help="adapter.safetensors written by train_dreambooth_oft.py, or a PEFT OFT/BOFT adapter folder",
    )
    p.add_argument(
        "--base",
        default=DreamBoothConfig.pretrained_model,
        help="the SD base it was trained on, SD1.5, SD2.1 or SDXL (file or diffusers folder; default: %(default)s)",
    )
