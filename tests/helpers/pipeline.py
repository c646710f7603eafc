"""A trained-looking tiny control file for the pipeline and app tests: random skew rotations and a random zero
conv, so that both the adapter and the control image change the images (an initial file changes nothing), on the
shipped pretrained tiny base, whose VAE turns other latents into visibly other images (a random tiny VAE's
images are nearly flat grey: another seed moves them by 1e-4)."""

from __future__ import annotations

from pathlib import Path

import torch

from oft.control.checkpoint import build_initial, load_control, save_control
from oft.control.hint import scaled_widths
from oft.demo.app_model import APP_BASE
from tests.helpers.control import random_skew_rotations_

SIZE = 32  # pixels: 4 x 4 latents on the tiny preset


def random_control_file(folder: Path, **meta: object) -> Path:
    """A control file in ``folder`` on the shipped tiny base (``meta``: extra metadata, e.g. ``task``)."""
    ini = build_initial(
        APP_BASE,
        folder / "ini.safetensors",
        r=2,
        eps=None,
        coft=False,
        adapter_only=True,
        hint_widths=scaled_widths(0.1),
    )
    cm = load_control(ini)
    gen = torch.Generator().manual_seed(0)
    random_skew_rotations_(cm.sd.unet, 0.1, gen)
    with torch.no_grad():
        for conv in cm.hint.modules():  # He-normal: features of order 1 after seven SiLU layers
            if isinstance(conv, torch.nn.Conv2d):
                fan_in = conv.weight[0].numel()
                conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen) * (2 / fan_in) ** 0.5)
    return save_control(cm, folder / "trained.safetensors", extra=meta)


def random_control_image(seed: int, size: int = SIZE) -> torch.Tensor:
    """(3, size, size) in [0, 1], uint8-exact (k/255), so PIL and array forms of it are the same image."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, size, size), generator=gen).float() / 255
