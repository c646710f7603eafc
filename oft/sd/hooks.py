"""Adding a control signal to the UNet right after ``conv_in``, in training and sampling alike (SPEC §3).

The hint encoder's output (B, C0, h, w) is added to ``conv_in``'s output once. Under classifier-free guidance the
UNet sees the doubled batch ``cat([uncond, cond])`` of the same B items, so the features are tiled to it: the
unconditional branch keeps the control, as in the paper.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import Tensor, nn


@contextmanager
def add_to_conv_in(unet: nn.Module, features: Tensor) -> Iterator[None]:
    """Within the block, ``unet.conv_in(x) + features`` replaces ``unet.conv_in(x)``.

    :param features: (B, C0, h, w), C0 = ``unet.conv_in.out_channels``, h, w the latent size; may carry gradients
        (training the hint encoder). A UNet batch of k·B (k = 2 under CFG) gets ``features`` tiled k times,
        matching ``torch.cat([x] * k)``.
    """

    def hook(_module: nn.Module, _inputs: tuple[Tensor, ...], out: Tensor) -> Tensor:
        if out.shape[0] % features.shape[0] or out.shape[1:] != features.shape[1:]:
            raise ValueError(
                f"control features of shape {tuple(features.shape)} do not fit conv_in's output {tuple(out.shape)}: "
                "give one feature map per item with conv_in's channels and the latent size"
            )
        return out + features.to(out.dtype).repeat(out.shape[0] // features.shape[0], 1, 1, 1)

    handle = unet.conv_in.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def conv_in_channels(unet: nn.Module) -> int:
    """The channel count the control features must have (320 for SD1.5)."""
    return int(unet.conv_in.out_channels)
