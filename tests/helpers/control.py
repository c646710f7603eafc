"""Shared fixtures of the oft-control tests: tiny SD files on disk and the entry points as modules."""

from __future__ import annotations

from pathlib import Path

from oft.cli.control import tool_add_control_oft as tool_add_control_oft_cli
from oft.sd import build_sd
from oft.sd.loading import save_single_file
from tests.helpers import REPO  # noqa: F401  (re-exported)


def tiny_sd_file(folder: Path, seed: int = 0, name: str = "sd.ckpt") -> Path:
    """A tiny random SD as an LDM single-file checkpoint, what ``v1-5-pruned.ckpt`` is for SD1.5."""
    return save_single_file(build_sd("tiny", seed=seed), folder / name)


def initial_model(folder: Path, base: Path, *adapter: str) -> Path:
    """``tool_add_control_oft.py --adapter-only`` on ``base``: the step-0 control model, flags ``adapter``."""
    tool = tool_add_control_oft_cli
    args = ["--input_path", str(base), "--output_path", str(folder / "ini.safetensors"), "--adapter-only"]
    return tool.main(tool.parse_args([*args, *adapter]))
