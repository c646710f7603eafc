"""The sampler's output folder (the reference's layout, SPEC §3), spelled once: the sampler writes it, every
evaluator and the demo read it.

    <out>/source/image_{i}.png        target (ground truth) of validation item i
    <out>/hints/hint_{i}.png          its control image
    <out>/results/result_{i}_{n}.png  generated sample n of item i
    <out>/excluded/item_{i}.json      only with --skip-unreadable: item i could not be read (why); no outputs
"""

from __future__ import annotations

import re
from pathlib import Path

SOURCE, HINTS, RESULTS, EXCLUDED = "source", "hints", "results", "excluded"
SOURCE_NAME = re.compile(r"image_(\d+)\.png")
RESULT_NAME = re.compile(r"result_(\d+)_(\d+)\.png")
EXCLUDED_NAME = re.compile(r"item_(\d+)\.json")
LAYOUT_HELP = "source/image_{i}.png, hints/hint_{i}.png, results/result_{i}_{n}.png"


def source_path(root: Path, index: int) -> Path:
    """The ground-truth target of item ``index``."""
    return Path(root) / SOURCE / f"image_{index}.png"


def hint_path(root: Path, index: int) -> Path:
    """The control image of item ``index``."""
    return Path(root) / HINTS / f"hint_{index}.png"


def result_path(root: Path, index: int, n: int) -> Path:
    """Generated sample ``n`` of item ``index``."""
    return Path(root) / RESULTS / f"result_{index}_{n}.png"


def excluded_path(root: Path, index: int) -> Path:
    """The record of an item the sampler could not read."""
    return Path(root) / EXCLUDED / f"item_{index}.json"
