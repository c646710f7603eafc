"""The reference's convolutional autoencoder, run with the normal, angle-only or magnitude-only bottleneck.

The bottleneck has no activation (as in the reference), so the rebuilt code goes straight to the decoder.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from oft.toy.operators import angle_only, bottleneck_decomposition, magnitude_only

MODES = ("normal", "angle_only", "magnitude_only")


class ConvAutoEncoder(nn.Module):
    """The reference's autoencoder: encoder 3→32→64→128 (3×3, stride 2, ReLU between), linear bottleneck,
    decoder of transposed convolutions 128→64→32→3 (ReLU between, tanh out). Images in [-1, 1], side % 8 == 0.
    """

    def __init__(self) -> None:
        super().__init__()
        self.enc1 = nn.Conv2d(3, 32, 3, stride=2, padding=1)
        self.enc2 = nn.Conv2d(32, 64, 3, stride=2, padding=1)
        self.bottleneck = nn.Conv2d(64, 128, 3, stride=2, padding=1)
        self.dec1 = nn.ConvTranspose2d(128, 64, 3, stride=2, padding=1, output_padding=1)
        self.dec2 = nn.ConvTranspose2d(64, 32, 3, stride=2, padding=1, output_padding=1)
        self.dec3 = nn.ConvTranspose2d(32, 3, 3, stride=2, padding=1, output_padding=1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """[B x 3 x S x S] image -> [B x 64 x S/4 x S/4], the input of the bottleneck convolution."""
        return F.relu(self.enc2(F.relu(self.enc1(x))))

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """[B x 128 x S/8 x S/8] code -> [B x 3 x S x S] image in [-1, 1]."""
        return torch.tanh(self.dec3(F.relu(self.dec2(F.relu(self.dec1(z))))))

    def forward(self, x: torch.Tensor, mode: str = "normal", scale: float | None = None) -> torch.Tensor:
        """Reconstruct ``x`` with the normal, angle-only (needs ``scale``) or magnitude-only bottleneck."""
        h = self.features(x)
        if mode == "normal":
            z = self.bottleneck(h)
        elif mode == "angle_only":
            if scale is None:
                raise ValueError("angle_only needs the rescale factor (see angle_scale)")
            z = angle_only(h, self.bottleneck, scale)
        elif mode == "magnitude_only":
            z = magnitude_only(h, self.bottleneck)
        else:
            raise ValueError(f"unknown mode {mode!r}; choose one of {MODES}")
        return self.decode(z)


@torch.no_grad()
def angle_scale(model: ConvAutoEncoder, images: torch.Tensor, batch_size: int = 256) -> float:
    """The angle-only rescale ``s``: mean of ``‖w_j‖ ‖p‖`` over the training images, filters and positions.

    One scalar measured once, so the angle-only code has the magnitude the decoder was trained on while no
    per-input (or per-filter) magnitude leaks into it; the reference hand-picked a constant (60) instead.
    """
    total, count = 0.0, 0
    for batch in images.split(batch_size):
        _, magnitude = bottleneck_decomposition(model.features(batch), model.bottleneck)
        total += magnitude.sum().item()
        count += magnitude.numel()
    return total / count


@torch.no_grad()
def reconstruct(model: ConvAutoEncoder, images: torch.Tensor, scale: float) -> dict[str, torch.Tensor]:
    """The three reconstructions of ``images`` ([N x 3 x S x S] in [-1, 1]), keyed by :data:`MODES`."""
    model.eval()
    return {mode: model(images, mode, scale) for mode in MODES}
