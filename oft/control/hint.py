"""The control branch of oft-control: ControlNet's input hint block, added once to the UNet after ``conv_in``.

Not lllyasviel's trainable UNet copy: the reference trained only this small encoder plus the OFT rotations
(SPEC §3). Its last conv is zero-initialised, so at step 0 the controlled model equals the base model.
"""

from __future__ import annotations

import torch
from torch import nn

# Output channels and strides of the 3x3 convs before the zero conv (SiLU after each): 512-px hint -> 64x64x256.
HINT_WIDTHS: tuple[int, ...] = (16, 16, 32, 32, 96, 96, 256)
HINT_STRIDES: tuple[int, ...] = (1, 1, 2, 1, 2, 1, 2)
DOWNSAMPLE = 8  # three stride-2 convs: hint pixels -> latent pixels, as SD's VAE


def scaled_widths(scale: float) -> tuple[int, ...]:
    """``HINT_WIDTHS`` times ``scale``, rounded, at least 1 each: the same block for a narrower UNet."""
    if scale <= 0:
        raise ValueError(f"the hint encoder's channel scale must be positive, got {scale}")
    return tuple(max(1, round(w * scale)) for w in HINT_WIDTHS)


class HintEncoder(nn.Module):
    """Control image (B, 3, H, W) in [0, 1] -> features (B, out_channels, H/8, W/8) for the UNet's conv_in output.

    ``out_channels`` is the UNet's first block width (320 for SD1.5: 1,086,480 parameters); ``widths`` are the
    channels of the seven convs before the zero conv (ControlNet's by default; ``scaled_widths`` for a toy).
    """

    def __init__(self, out_channels: int = 320, widths: tuple[int, ...] = HINT_WIDTHS) -> None:
        super().__init__()
        if len(widths) != len(HINT_STRIDES) or min(widths) < 1:
            raise ValueError(f"the hint encoder takes {len(HINT_STRIDES)} positive widths, got {widths}")
        layers: list[nn.Module] = []
        for c_in, c_out, stride in zip((3, *widths[:-1]), widths, HINT_STRIDES, strict=True):
            layers += [nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1), nn.SiLU()]
        self.zero_conv = nn.Conv2d(widths[-1], out_channels, 3, padding=1)
        nn.init.zeros_(self.zero_conv.weight)
        nn.init.zeros_(self.zero_conv.bias)
        self.body = nn.Sequential(*layers)
        self.out_channels, self.widths = out_channels, tuple(widths)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        if hint.shape[-1] % DOWNSAMPLE or hint.shape[-2] % DOWNSAMPLE:
            raise ValueError(
                f"hint size {tuple(hint.shape[-2:])} is not a multiple of {DOWNSAMPLE}: resize the control image"
            )
        return self.zero_conv(self.body(hint))
