"""Writing images the way every long job here must: atomically, so a killed job never leaves a half PNG."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import torch

from oft.data.files import atomic_write_bytes


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) float in [0, 1] (tensor) or (H, W, 3) / (H, W) uint8 (array) -> (H, W, 3) or (H, W) uint8 RGB."""
    if isinstance(image, torch.Tensor):
        return (
            (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        )
    return image


def write_png(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> Path:
    """Encode ``image`` (see ``to_uint8``) as PNG at ``path`` via a temporary file and a rename."""
    path = Path(path)
    rgb = to_uint8(image)
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)
    if not ok:
        raise ValueError(f"cannot encode an image of shape {rgb.shape} as PNG for {path}")
    return atomic_write_bytes(path, data.tobytes())


def read_png(path: str | os.PathLike) -> np.ndarray:
    """A PNG written by ``write_png`` back as (H, W, 3) uint8 RGB."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        raise ValueError(f"cannot decode image {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)
