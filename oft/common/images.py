"""Images on disk, one way each: which names are images, listing a folder, decoding, and atomic PNG/JPEG writes."""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np
from PIL import Image

from oft.common.files import atomic_write_bytes

if TYPE_CHECKING:  # torch is not imported for reading and listing images (the evaluators start in a blink)
    import torch

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def is_image_name(name: str) -> bool:
    """A complete image file name: not hidden, and ending in an image suffix (any case).

    Hidden names are never data: atomic writes put their temporaries there (``.0001.png.<random>.tmp``, left
    behind, possibly truncated, by a kill), as do macOS (``._IMG_1.jpg``) and editors."""
    return not name.startswith(".") and Path(name).suffix.lower() in IMAGE_SUFFIXES


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside ``folder`` (``is_image_name``), sorted by name; [] if it does not exist."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if is_image_name(p.name) and p.is_file())


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """An image file as an (H, W, 3) uint8 RGB array, decoded by OpenCV as the reference did (grey and RGBA
    files are converted); ``ValueError`` naming the file when it is missing or cannot be decoded."""
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if image is None:
        what = "cannot decode image" if Path(path).is_file() else "no image file"
        raise ValueError(f"{what} {path}")
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def to_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """(3, H, W) float in [0, 1] (tensor) or (H, W, 3) / (H, W) uint8 (array) -> (H, W, 3) or (H, W) uint8 RGB."""
    if isinstance(image, np.ndarray):
        return image
    return (image.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)


def write_png(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> Path:
    """Encode ``image`` (see ``to_uint8``) as PNG at ``path`` atomically (a killed job never leaves half a PNG)."""
    path = Path(path)
    rgb = to_uint8(image)
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR) if rgb.ndim == 3 else rgb)
    if not ok:
        raise ValueError(f"cannot encode an image of shape {rgb.shape} as PNG for {path}")
    return atomic_write_bytes(path, data.tobytes())


def write_jpg(path: str | os.PathLike, image: torch.Tensor | np.ndarray) -> Path:
    """Encode ``image`` (see ``to_uint8``) as JPEG at ``path`` atomically, with PIL's defaults (quality 75,
    4:2:0 chroma): the encoder and settings of ``PIL.Image.save``, with which the reference wrote class images."""
    buffer = io.BytesIO()
    Image.fromarray(to_uint8(image)).save(buffer, format="JPEG")
    return atomic_write_bytes(Path(path), buffer.getvalue())
