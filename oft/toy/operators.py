"""A convolution's response split into angle and magnitude, and the bottleneck rebuilt from one of them.

The bottleneck is the last encoder convolution ``z_j = <w_j, p> + b_j`` (filter ``w_j`` and input patch ``p``,
both flattened to ``in·k·k``); it is rebuilt from one factor of ``<w_j, p> = ‖w_j‖ ‖p‖ cos θ_j`` only:

* angle-only:     ``z_j = s · cos θ_j + b_j`` with one fixed scalar ``s`` (see :func:`oft.toy.model.angle_scale`);
* magnitude-only: ``z_j = ‖w_j‖ ‖p‖ + b_j`` (the angle dropped, i.e. ``cos θ_j = 1``).

The bias is a per-filter constant that carries no information about the input, so it is kept in all three
variants; the normal bottleneck is then exactly ``‖w_j‖ ‖p‖ cos θ_j + b_j``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def patch_norm(x: torch.Tensor, kernel_size: int, stride: int = 1, padding: int = 0) -> torch.Tensor:
    """Euclidean norm of every input patch a convolution sees.

    :param x: [B x C x H x W] input of the convolution.
    :return: [B x 1 x H' x W'] ``‖p‖`` over the C·k·k values of each patch (zero padding included, as the
        convolution sees it), on the convolution's output grid.
    """
    ones = x.new_ones(1, x.shape[1], kernel_size, kernel_size)
    # Summing squares with a ones kernel equals ‖unfold(x)‖² per column without materialising the patches.
    return F.conv2d(x * x, ones, stride=stride, padding=padding).clamp_min(0).sqrt()


def filter_norm(weight: torch.Tensor) -> torch.Tensor:
    """Norm of each flattened filter: [out x in x k x k] -> [out]."""
    return weight.flatten(1).norm(dim=1)


def bottleneck_decomposition(x: torch.Tensor, conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Split a convolution's bias-free response ``<w_j, p> = ‖w_j‖ ‖p‖ cos θ_j`` into angle and magnitude.

    :param x: [B x C x H x W] input of ``conv`` (square kernel, no groups or dilation).
    :return: ``(cos, magnitude)``, both [B x out x H' x W']: ``cos θ_j`` between filter j and the patch, and
        ``‖w_j‖ ‖p‖``. A zero patch has no direction; its cosine is defined as 0 (its response is 0 too).
    """
    if conv.groups != 1 or conv.dilation != (1, 1) or conv.kernel_size[0] != conv.kernel_size[1]:
        raise ValueError("bottleneck_decomposition needs a square, ungrouped, undilated Conv2d")
    inner = F.conv2d(x, conv.weight, stride=conv.stride, padding=conv.padding)
    p_norm = patch_norm(x, conv.kernel_size[0], conv.stride[0], conv.padding[0])  # [B, 1, H', W']
    magnitude = p_norm * filter_norm(conv.weight).view(1, -1, 1, 1)  # [B, out, H', W']
    cos = inner / magnitude.clamp_min(torch.finfo(x.dtype).tiny)
    return cos.clamp(-1.0, 1.0), magnitude


def _bias(conv: nn.Conv2d, like: torch.Tensor) -> torch.Tensor:
    """The conv's bias shaped [1 x out x 1 x 1] (zeros when it has none)."""
    if conv.bias is None:
        return like.new_zeros(1, like.shape[1], 1, 1)
    return conv.bias.view(1, -1, 1, 1)


def angle_only(x: torch.Tensor, conv: nn.Conv2d, scale: float) -> torch.Tensor:
    """Bottleneck rebuilt from angles alone: ``scale · cos θ_j + b_j``, [B x out x H' x W']."""
    cos, _ = bottleneck_decomposition(x, conv)
    return scale * cos + _bias(conv, cos)


def magnitude_only(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """Bottleneck rebuilt from magnitudes alone: ``‖w_j‖ ‖p‖ + b_j`` (angle dropped), [B x out x H' x W']."""
    _, magnitude = bottleneck_decomposition(x, conv)
    return magnitude + _bias(conv, magnitude)
