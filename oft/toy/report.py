"""What a run shows: reconstruction errors, the labelled PNG grid, and the one-line verdict."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from oft.common.images import write_png

GRID_LABELS = ("input", "normal", "angle only", "mag. only")  # short: a 64-px column fits ~10 characters


def mse_01(pred: torch.Tensor, target: torch.Tensor) -> float:
    """Mean squared error on pixels in [0, 1] (inputs in [-1, 1], hence the factor ¼)."""
    return F.mse_loss(pred, target).item() / 4.0


def psnr_01(mse: float) -> float:
    """PSNR in dB for a mean squared error on [0, 1] pixels."""
    return 10.0 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def error_report(
    recons: dict[str, torch.Tensor], target: torch.Tensor, train_images: torch.Tensor
) -> dict[str, dict[str, float]]:
    """Reconstruction errors of every mode on [0, 1] pixels (MSE and PSNR), next to a trivial baseline that
    predicts the training set's mean colour everywhere, which tells how much of the image a mode recovered."""
    mse = {mode: mse_01(rec, target) for mode, rec in recons.items()}
    mean_colour = train_images.mean(dim=(0, 2, 3), keepdim=True).expand_as(target)  # [N, 3, S, S]
    mse["mean_colour_baseline"] = mse_01(mean_colour, target)
    return {"mse": mse, "psnr_db": {k: psnr_01(v) for k, v in mse.items()}}


def save_grid(path: Path, columns: Sequence[torch.Tensor], labels: Sequence[str], upscale: int = 1) -> None:
    """Atomically write a PNG with one row per image and one labelled column per tensor.

    :param columns: tensors [N x 3 x S x S] in [-1, 1], e.g. input | normal | angle-only | magnitude-only.
    """
    from PIL import Image, ImageDraw

    n, _, side, _ = columns[0].shape
    cell, gap, header = side * upscale, 4, 16
    grid = Image.new("RGB", (len(columns) * (cell + gap) + gap, header + n * (cell + gap) + gap), "white")
    draw = ImageDraw.Draw(grid)
    for c, (col, label) in enumerate(zip(columns, labels, strict=True)):
        x0 = gap + c * (cell + gap)
        draw.text((x0 + 2, 2), label, fill="black")
        pixels = (
            ((col.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 1).numpy()
        )  # [N,S,S,3]
        for r in range(n):
            tile = Image.fromarray(pixels[r]).resize((cell, cell), Image.NEAREST)
            grid.paste(tile, (x0, header + gap + r * (cell + gap)))
    write_png(path, np.asarray(grid))


def verdict(mse: dict[str, float]) -> str:
    """One line: does the angle-only code reconstruct better than the magnitude-only one, and by how much."""
    a, m = mse["angle_only"], mse["magnitude_only"]
    ratio = m / a if a > 0 else float("inf")
    if a < m:
        return (
            f"angle-only MSE {a:.4f} is {ratio:.1f}x lower than magnitude-only {m:.4f} (normal {mse['normal']:.4f}): "
            "the angles between neurons carry the image, as in the paper's Fig. 2"
        )
    return f"NOT reproduced: angle-only MSE {a:.4f} >= magnitude-only {m:.4f} (normal {mse['normal']:.4f})"
