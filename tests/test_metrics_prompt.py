"""Prompt adherence on hand-made images: nearest named colour, regions by mask, erosion, the two summaries."""

from __future__ import annotations

import numpy as np
import pytest

from oft.metrics.prompt import (
    NAMES,
    colour_classes,
    colour_ranking,
    masked_adherence,
    region_colours,
    unmasked_adherence,
)
from oft.specs.synthetic import COLOURS, make_item


def square_image(colour: str, background: str, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    image = np.empty((size, size, 3), np.uint8)
    image[:] = COLOURS[background]
    mask = np.zeros((size, size), bool)
    mask[8:24, 8:24] = True
    image[mask] = COLOURS[colour]
    return image, mask


def test_exact_and_perturbed_palette_colours_classify_as_themselves():
    pixels = np.array([COLOURS[n] for n in NAMES], np.uint8)
    assert [NAMES[k] for k in colour_classes(pixels)] == list(NAMES)
    noisy = np.clip(pixels.astype(int) + np.array([25, -25, 20]), 0, 255).astype(np.uint8)
    assert [NAMES[k] for k in colour_classes(noisy)] == list(NAMES)
    assert NAMES[colour_classes(np.array([[200, 60, 50]], np.uint8))[0]] == "red"


def test_ranking_orders_by_pixel_count():
    pixels = np.array([COLOURS["blue"]] * 5 + [COLOURS["red"]] * 3 + [COLOURS["green"]], np.uint8)
    assert colour_ranking(pixels) == ["blue", "red", "green"]


def test_region_colours_read_inside_and_outside_the_mask():
    image, mask = square_image("red", "blue")
    assert region_colours(image, mask) == ("red", "blue")
    # a one-pixel ring of another colour on the boundary (a blurred edge) is ignored by the erosion ...
    ring = mask ^ np.pad(mask[1:-1, 1:-1], 1)
    image[ring] = COLOURS["yellow"]
    assert region_colours(image, mask, margin=2) == ("red", "blue")
    # ... while a shape of the wrong colour is not
    wrong, _ = square_image("green", "blue")
    assert region_colours(wrong, mask) == ("green", "blue")


def test_masked_adherence_fractions():
    good, mask = square_image("red", "blue")
    swapped, _ = square_image("blue", "red")
    half, _ = square_image("red", "white")
    truth = {"colour": "red", "background": "blue"}
    result = masked_adherence([good, swapped, half], [mask] * 3, [truth] * 3)
    assert result == {"shape_colour": pytest.approx(2 / 3), "background_colour": pytest.approx(1 / 3),
                      "both": pytest.approx(1 / 3), "images": 3}  # fmt: skip


def test_unmasked_adherence_uses_the_two_most_frequent_colours():
    good, _ = square_image("red", "blue")  # 256 red pixels of 1024: blue first, red second
    result = unmasked_adherence([good, good], [{"colour": "red", "background": "blue"},
                                               {"colour": "blue", "background": "red"}])  # fmt: skip
    assert result["shape_colour"] == 0.5 and result["background_colour"] == 0.5 and result["both"] == 0.5


def test_synthetic_ground_truth_scores_perfectly():
    images, masks, truths = [], [], []
    for i in range(20):
        target, _, controls, truth = make_item(i, seed=3, size=64)
        images.append(target)
        masks.append(controls["segm"].any(axis=2))
        truths.append(truth)
    assert masked_adherence(images, masks, truths)["both"] == 1.0
    assert unmasked_adherence(images, truths)["both"] == 1.0


def test_errors():
    image, mask = square_image("red", "blue")
    with pytest.raises(ValueError, match="differ in size"):
        region_colours(image, mask[:10])
    with pytest.raises(ValueError, match="at least one image"):
        masked_adherence([], [], [])
