"""The tiny preset can represent colour: no GroupNorm of its UNet or VAE has a single channel per group."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from oft.sd import build_sd


@pytest.mark.parametrize("part", ["unet", "vae"])
def test_group_norms_keep_the_constant_part_of_channels(part):
    """A flat-coloured region is a spatially constant value per channel. GroupNorm with one channel per group
    maps every such input to its bias (the colour is erased; the pretrained demo base could not learn colours);
    with several channels per group the differences between channels survive."""
    net = getattr(build_sd("tiny"), part)
    norms = [m for m in net.modules() if isinstance(m, nn.GroupNorm)]
    assert norms
    g = torch.Generator().manual_seed(0)
    for norm in norms:
        flat = torch.randn(1, norm.num_channels, 1, 1, generator=g).expand(1, -1, 4, 4)
        out = nn.functional.group_norm(flat, norm.num_groups, eps=norm.eps)
        assert out.abs().amax() > 0.1, f"{part}: GroupNorm({norm.num_groups}, {norm.num_channels}) erases colour"
        one_per_group = nn.functional.group_norm(flat, norm.num_channels, eps=norm.eps)
        assert one_per_group.abs().amax() < 1e-3  # what the property guards against
