"""The control branch of oft-control: ControlNet's input hint block, added once to the UNet after ``conv_in``.

Not lllyasviel's trainable UNet copy: the reference trained only this small encoder plus the OFT rotations
(SPEC §3). Its last conv is zero-initialised, so at step 0 the controlled model equals the base model.
"""

from __future__ import annotations

import torch
from torch import nn

# (in, out, stride) of the 3x3 convs before the zero conv; SiLU after each: 512-px hint -> 64x64x256.
HINT_LAYERS: tuple[tuple[int, int, int], ...] = (
    (3, 16, 1),
    (16, 16, 1),
    (16, 32, 2),
    (32, 32, 1),
    (32, 96, 2),
    (96, 96, 1),
    (96, 256, 2),
)
DOWNSAMPLE = 8  # three stride-2 convs: hint pixels -> latent pixels, as SD's VAE


class HintEncoder(nn.Module):
    """Control image (B, 3, H, W) in [0, 1] -> features (B, out_channels, H/8, W/8) for the UNet's conv_in output.

    ``out_channels`` is the UNet's first block width (320 for SD1.5: 1,086,480 parameters).
    """

    def __init__(self, out_channels: int = 320) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        for c_in, c_out, stride in HINT_LAYERS:
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.SiLU()]
        self.zero_conv = nn.Conv2d(HINT_LAYERS[-1][1], out_channels, 3, padding=1)
        nn.init.zeros_(self.zero_conv.weight)
        nn.init.zeros_(self.zero_conv.bias)
        self.body = nn.Sequential(*layers)
        self.out_channels = out_channels

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        if hint.shape[-1] % DOWNSAMPLE or hint.shape[-2] % DOWNSAMPLE:
            raise ValueError(
                f"hint size {tuple(hint.shape[-2:])} is not a multiple of {DOWNSAMPLE}: resize the control image"
            )
        return self.zero_conv(self.body(hint))
