"""COFT: keep each block of R inside a Frobenius ball centred at zero, after every optimizer step."""

from __future__ import annotations

import torch
from torch import nn

from .layers import OFTLayer

# A block whose norm exceeds its radius by at most this relative amount is on the ball, not outside it: a
# projected float32 block has norm rho * (1 +- 2^-24) (each entry rounds by at most half an ulp), so 4 ulps
# keep an already projected block from being re-scaled and counted again on any CPU or GPU.
ON_BALL_RTOL = 4 * torch.finfo(torch.float32).eps


def _norm_dtype(R: torch.Tensor) -> torch.dtype:
    """Block norms are taken in float64 (exact enough to decide to an ulp), except where a device lacks it."""
    return torch.float32 if R.device.type == "mps" else torch.float64


@torch.no_grad()
def _project(model: nn.Module) -> tuple[dict[torch.device, torch.Tensor], dict[torch.device, torch.Tensor]]:
    """Project every COFT layer's R; per device, the number of blocks moved and whether any was non-finite.

    No host-device synchronisation: both results stay on their device until someone asks for them.
    """
    moved: dict[torch.device, torch.Tensor] = {}
    bad: dict[torch.device, torch.Tensor] = {}
    for layer in model.modules():
        if not isinstance(layer, OFTLayer) or not layer.config.coft:
            continue
        R = layer.R
        norms = torch.linalg.matrix_norm(R.to(_norm_dtype(R)), ord="fro", keepdim=True)  # (r, 1, 1) or (1, 1)
        rho = layer.radius()
        outside = norms > rho * (1 + ON_BALL_RTOL)
        factor = torch.where(outside, rho / norms, torch.ones_like(norms))
        R.mul_(factor.to(R.dtype))
        dev = R.device
        moved[dev] = moved.get(dev, 0) + outside.sum()  # int64 on dev
        bad[dev] = bad.get(dev, False) | ~torch.isfinite(norms).all()
    return moved, bad


def project_(model: nn.Module) -> int:
    """Project R of every COFT layer in ``model`` onto its ball; returns the number of blocks that moved.

    Radius ``eps * b^2 / sqrt(r)`` (shared block ``eps * b^2``), SPEC §1: if ``||R_i||_F > rho`` then
    ``R_i <- rho R_i / ||R_i||_F``; a block within ``ON_BALL_RTOL`` of its radius counts as on the ball and is
    left as it is. Synchronises once (after all layers) to return the count and to raise on NaN/inf.
    """
    moved, bad = _project(model)
    total = 0
    for dev, count in moved.items():
        count, diverged = torch.stack([count, bad[dev].long()]).tolist()  # the one sync per device
        if diverged:
            raise FloatingPointError(
                "COFT projection found NaN/inf in R: training diverged; lower the learning rate"
            )
        total += count
    return total


def project_after_step(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Make ``optimizer.step()`` apply the COFT projection to ``model`` right after each update.

    The hook never synchronises with the device (a GPU step keeps running ahead of the host); a diverged R is
    reported where it is used: ``merge``, saving and loading an adapter refuse NaN/inf. Returns the hook
    handle (``handle.remove()`` detaches it).
    """
    return optimizer.register_step_post_hook(lambda *_: _project(model))
