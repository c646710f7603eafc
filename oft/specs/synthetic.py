"""A procedurally generated control task for tests and CPU demos: coloured shapes on coloured backgrounds.

Every item is a pure function of ``(index, seed, size)``: a target image ("a red circle on a blue background"),
its caption, and control images derived from it the way the real tasks derive theirs (canny edges with the C2I
thresholds 100/200; a segmentation-style mask in a fixed class palette). The ground-truth colour and shape
names come along so a demo can check that generated images follow the control and the caption.
"""

from __future__ import annotations

import cv2
import numpy as np

from oft.specs.tasks import CANNY_THRESHOLDS

# name -> RGB; chosen far apart so a colour classifier on generated images is unambiguous
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 180, 40),
    "blue": (30, 60, 220),
    "yellow": (240, 220, 30),
    "white": (245, 245, 245),
    "black": (15, 15, 15),
    "orange": (245, 140, 20),
    "purple": (140, 40, 170),
}
SHAPES = ("circle", "square", "triangle")
# segmentation palette: background class 0, then one class per shape (ADE20K-style colour coding)
SEGM_PALETTE: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "circle": (255, 0, 0),
    "square": (0, 255, 0),
    "triangle": (0, 0, 255),
}
HINT_KINDS = ("canny", "segm")
# Canny at 100/200 needs a grey-level step of about 60 to mark an edge (Sobel gain 4 on an 8-bit step), so
# shape and background are drawn from colour pairs at least this far apart in luminance.
MIN_GRAY_STEP = 60


def _gray(rgb: tuple[int, int, int]) -> int:
    return int(cv2.cvtColor(np.array([[rgb]], np.uint8), cv2.COLOR_RGB2GRAY)[0, 0])


def _draw(canvas: np.ndarray, shape: str, cx: int, cy: int, half: int, colour: tuple[int, int, int]) -> None:
    """Draw a filled ``shape`` of half-size ``half`` centred at (cx, cy) onto ``canvas`` (H, W, 3) in place."""
    if shape == "circle":
        cv2.circle(canvas, (cx, cy), half, colour, thickness=-1, lineType=cv2.LINE_8)
    elif shape == "square":
        cv2.rectangle(canvas, (cx - half, cy - half), (cx + half, cy + half), colour, thickness=-1)
    else:
        pts = np.array([[cx, cy - half], [cx - half, cy + half], [cx + half, cy + half]], np.int32)
        cv2.fillPoly(canvas, [pts], colour, lineType=cv2.LINE_8)


def make_item(
    index: int, seed: int = 0, size: int = 64
) -> tuple[np.ndarray, str, dict[str, np.ndarray], dict[str, str]]:
    """Item ``index`` of the synthetic task: (target (size, size, 3) uint8 RGB, caption, controls, truth).

    ``controls``: ``"canny"`` (size, size) uint8 in {0, 255} = ``cv2.Canny(gray(target), 100, 200)``, and
    ``"segm"`` (size, size, 3) uint8 in ``SEGM_PALETTE``. ``truth``: ``{"shape", "colour", "background"}``.
    """
    if index < 0 or size < 16:
        raise ValueError(f"synthetic items need index >= 0 and size >= 16, got index={index}, size={size}")
    rng = np.random.default_rng([seed, index])
    names = list(COLOURS)
    colour = names[int(rng.integers(len(names)))]
    backgrounds = [n for n in names if abs(_gray(COLOURS[n]) - _gray(COLOURS[colour])) >= MIN_GRAY_STEP]
    background = backgrounds[int(rng.integers(len(backgrounds)))]
    shape = SHAPES[int(rng.integers(len(SHAPES)))]
    half = int(rng.uniform(0.18, 0.32) * size)
    cx, cy = (int(v) for v in rng.integers(half + 1, size - half - 1, size=2))

    target = np.empty((size, size, 3), np.uint8)
    target[:] = COLOURS[background]
    _draw(target, shape, cx, cy, half, COLOURS[colour])
    segm = np.empty_like(target)
    segm[:] = SEGM_PALETTE["background"]
    _draw(segm, shape, cx, cy, half, SEGM_PALETTE[shape])
    gray = cv2.cvtColor(target, cv2.COLOR_RGB2GRAY)
    canny = cv2.Canny(gray, *CANNY_THRESHOLDS)
    article = "an" if colour[0] in "aeiou" else "a"
    caption = f"{article} {colour} {shape} on a {background} background"
    return (
        target,
        caption,
        {"canny": canny, "segm": segm},
        {"shape": shape, "colour": colour, "background": background},
    )
