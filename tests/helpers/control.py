"""Shared fixtures of the oft-control tests: tiny SD files on disk, task folders in the reference's layout and the
entry points as modules."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np

from oft.cli.control import tool_add_control_oft as tool_add_control_oft_cli
from oft.sd import build_sd
from oft.sd.loading import save_single_file
from oft.specs import synthetic
from oft.specs.tasks import TASKS
from tests.helpers import REPO  # noqa: F401  (re-exported)


def tiny_sd_file(folder: Path, seed: int = 0, name: str = "sd.ckpt") -> Path:
    """A tiny random SD as an LDM single-file checkpoint, what ``v1-5-pruned.ckpt`` is for SD1.5."""
    return save_single_file(build_sd("tiny", seed=seed), folder / name)


def random_skew_rotations_(unet, scale: float, generator) -> None:
    """Every OFT layer's R set to ``A - A^T`` with ``A ~ scale * N(0, 1)``: exactly skew, as training keeps it."""
    import torch

    import oft_layers

    with torch.no_grad():
        for _, layer in oft_layers.oft_modules(unet):
            A = torch.randn(layer.R.shape, generator=generator) * scale
            layer.R.copy_(A - A.transpose(-1, -2))


def initial_model(folder: Path, base: Path, *adapter: str) -> Path:
    """``tool_add_control_oft.py --adapter-only`` on ``base``: the step-0 control model, flags ``adapter``."""
    tool = tool_add_control_oft_cli
    args = ["--input_path", str(base), "--output_path", str(folder / "ini.safetensors"), "--adapter-only"]
    return tool.main(tool.parse_args([*args, *adapter]))


def _write_png(path: Path, rgb: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))


def make_task_tree(
    root: Path, task_name: str, n: int, size: int = 32, split: str = "train", full: bool = False
) -> list[str]:
    """Write ``n`` synthetic items in the reference layout of ``task_name`` (``full``: as the full validation
    list); returns the captions."""
    task = TASKS[task_name]
    captions, entries = [], []
    for i in range(n):
        target, caption, controls, _ = synthetic.make_item(i, 0, size)
        name = f"{i}.jpg" if task.caption_format == "json_list" else f"{i}.png"
        entry = (
            {"image": name, "prompt": caption}
            if task.caption_format == "json_list"
            else {"source": f"source/{name}", "target": f"target/{name}", "prompt": caption}
        )
        hint_rel, target_rel = task.item_files(entry, split)
        _write_png(root / task.dataset_dir / hint_rel, controls["segm"])
        _write_png(root / task.dataset_dir / target_rel, target)
        entries.append(entry)
        captions.append(caption)
    cap = root / task.caption_file(split, full)
    cap.parent.mkdir(parents=True, exist_ok=True)
    text = (
        json.dumps(entries)
        if task.caption_format == "json_list"
        else "".join(json.dumps(e) + "\n" for e in entries)
    )
    cap.write_text(text)
    return captions
