"""Prompt adherence on the synthetic task: do the generated colours match the caption's named colours?

Every pixel is classified as its nearest named colour (Euclidean RGB distance to ``oft.specs.synthetic.COLOURS``);
a region's colour is its most frequent class. Two measures:

- ``masked_adherence``: the shape colour is the dominant class inside the ground-truth shape mask, the background
  colour the dominant class outside it (both masks eroded by ``margin`` px so blurred edges do not vote). It asks
  for the caption's colours *where the control put the shape*, so it is the measure for controlled models.
- ``unmasked_adherence``: the background colour is the most frequent class of the whole image and the shape colour
  the next one; it needs no mask, so it measures an uncontrolled text-to-image model (the pretrained base).
"""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from oft.specs.synthetic import COLOURS

NAMES: tuple[str, ...] = tuple(COLOURS)
_PALETTE = np.array([COLOURS[n] for n in NAMES], np.float32)  # (K, 3)


def colour_classes(pixels: np.ndarray) -> np.ndarray:
    """(N,) index into ``NAMES`` of the nearest named colour of each (N, 3) uint8 RGB pixel."""
    d = ((pixels.reshape(-1, 1, 3).astype(np.float32) - _PALETTE[None]) ** 2).sum(-1)  # (N, K)
    return d.argmin(1)


def colour_ranking(pixels: np.ndarray) -> list[str]:
    """Named colours present among ``pixels`` (N, 3), most frequent first."""
    counts = np.bincount(colour_classes(pixels), minlength=len(NAMES))
    return [NAMES[k] for k in np.argsort(-counts, kind="stable") if counts[k] > 0]


def _erode(mask: np.ndarray, margin: int) -> np.ndarray:
    if margin <= 0:
        return mask
    kernel = np.ones((2 * margin + 1, 2 * margin + 1), np.uint8)
    return cv2.erode(mask.astype(np.uint8), kernel, borderType=cv2.BORDER_CONSTANT, borderValue=1) > 0


def region_colours(image: np.ndarray, mask: np.ndarray, margin: int = 2) -> tuple[str | None, str | None]:
    """(dominant colour inside ``mask``, dominant colour outside it) of an (H, W, 3) uint8 RGB image.

    ``mask`` (H, W) bool marks the shape; both regions are eroded by ``margin`` px first. None for an empty region.
    """
    if image.shape[:2] != mask.shape:
        raise ValueError(f"image {image.shape[:2]} and mask {mask.shape} differ in size")
    inside, outside = _erode(mask, margin), _erode(~mask, margin)
    rank_in = colour_ranking(image[inside]) if inside.any() else []
    rank_out = colour_ranking(image[outside]) if outside.any() else []
    return (rank_in[0] if rank_in else None), (rank_out[0] if rank_out else None)


def _summary(shape_ok: list[bool], background_ok: list[bool]) -> dict:
    if not shape_ok:
        raise ValueError("prompt adherence needs at least one image")
    both = [s and b for s, b in zip(shape_ok, background_ok, strict=True)]
    return {
        "shape_colour": float(np.mean(shape_ok)),
        "background_colour": float(np.mean(background_ok)),
        "both": float(np.mean(both)),
        "images": len(shape_ok),
    }


def masked_adherence(
    images: Sequence[np.ndarray], masks: Sequence[np.ndarray], truths: Sequence[dict], margin: int = 2
) -> dict:
    """Fractions of ``images`` whose shape / background / both colours match ``truths`` (``{"colour",
    "background"}``), read inside / outside the ground-truth ``masks``."""
    shape_ok, background_ok = [], []
    for image, mask, truth in zip(images, masks, truths, strict=True):
        shape, background = region_colours(image, mask, margin)
        shape_ok.append(shape == truth["colour"])
        background_ok.append(background == truth["background"])
    return _summary(shape_ok, background_ok)


def unmasked_adherence(images: Sequence[np.ndarray], truths: Sequence[dict]) -> dict:
    """Like ``masked_adherence`` without masks: background = most frequent named colour, shape = the next one."""
    shape_ok, background_ok = [], []
    for image, truth in zip(images, truths, strict=True):
        ranking = colour_ranking(image.reshape(-1, 3)) + [None, None]
        background_ok.append(ranking[0] == truth["background"])
        shape_ok.append(ranking[1] == truth["colour"])
    return _summary(shape_ok, background_ok)
