"""Shared helpers of the metric tests: the oft-control entry points as modules, and images on disk."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from tests.helpers import REPO  # noqa: F401  (re-exported)


def save(path: Path, image: np.ndarray) -> Path:
    """Write an (H, W[, 3]) uint8 array as a PNG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
