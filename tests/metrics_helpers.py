"""Shared helpers of the metric tests: the oft-control entry points as modules, and images on disk."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str):
    """Import ``oft-control/<name>.py`` (not a package) to call its ``parse_args``/``main`` in-process."""
    spec = importlib.util.spec_from_file_location(name, REPO / "oft-control" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def save(path: Path, image: np.ndarray) -> Path:
    """Write an (H, W[, 3]) uint8 array as a PNG, creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)
    return path
