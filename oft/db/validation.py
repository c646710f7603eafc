"""Validation images of a DreamBooth run: the rotations folded into the weights for sampling (then restored
exactly), and the validation prompt sampled with fixed seeds into ``validation/<name>/``."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

import oft_layers
from oft.common.files import atomic_folder, atomic_write_bytes
from oft.common.images import write_png
from oft.db.config import DreamBoothConfig
from oft.sd.models import SDModels
from oft.sd.sampling import sample


@contextmanager
def merged_for_inference(model: torch.nn.Module):
    """Fold every rotation into its weight for the block (sampling at the base model's cost), then restore the
    original weights exactly (from a copy, so repeated validations never drift the frozen weights)."""
    layers = [layer for _, layer in oft_layers.oft_modules(model)]
    saved = [layer.base.weight.detach().clone() for layer in layers]
    oft_layers.merge(model)
    try:
        yield
    finally:
        with torch.no_grad():
            for layer, weight in zip(layers, saved, strict=True):
                layer.base.weight.copy_(weight)
                layer.merged = False


def validation_images(models: SDModels, cfg: DreamBoothConfig, folder: Path) -> torch.Tensor:
    """Sample the validation prompt with seeds ``seed..seed+N-1`` and save ``folder/00.png, 01.png, ...`` and
    ``prompt.txt``; the folder appears complete (written under a hidden name, then renamed)."""
    n = cfg.num_validation_images
    images = sample(
        models,
        [cfg.validation_prompt] * n,
        sampler=cfg.validation_sampler,
        steps=cfg.validation_inference_steps,
        guidance=cfg.guidance_scale,
        seeds=[cfg.seed + i for i in range(n)],
        height=cfg.resolution,
        width=cfg.resolution,
        progress=False,
    )

    def write(tmp: Path) -> None:
        for i, image in enumerate(images):
            write_png(tmp / f"{i:02d}.png", image)
        atomic_write_bytes(tmp / "prompt.txt", (cfg.validation_prompt + "\n").encode())

    atomic_folder(folder, write)
    return images
