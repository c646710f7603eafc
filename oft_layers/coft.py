"""COFT: keep each block of R inside a Frobenius ball centred at zero, after every optimizer step."""

from __future__ import annotations

import torch
from torch import nn

from .layers import OFTLayer


@torch.no_grad()
def project_(model: nn.Module) -> int:
    """Project R of every COFT layer in ``model`` onto its ball; returns the number of blocks that moved.

    Radius ``eps * b^2 / sqrt(r)`` (shared block ``eps * b^2``), SPEC §1: if ``||R_i||_F > rho`` then
    ``R_i <- rho R_i / ||R_i||_F``. Called after each step, so checkpoints always hold projected values.
    """
    moved = torch.zeros((), dtype=torch.long)
    for layer in model.modules():
        if not isinstance(layer, OFTLayer) or not layer.config.coft:
            continue
        R = layer.R
        norms = torch.linalg.matrix_norm(R.float(), ord="fro", keepdim=True)  # (r, 1, 1) or (1, 1)
        if not torch.isfinite(norms).all():
            raise FloatingPointError(
                "COFT projection found NaN/inf in R: training diverged; lower the learning rate"
            )
        rho = layer.config.radius(layer.block_size)
        factor = torch.clamp(rho / norms.clamp_min(torch.finfo(norms.dtype).tiny), max=1.0)
        R.mul_(factor.to(R.dtype))
        moved = moved + (factor < 1).sum().cpu()
    return int(moved)


def project_after_step(optimizer: torch.optim.Optimizer, model: nn.Module):
    """Make ``optimizer.step()`` apply the COFT projection to ``model`` right after each update.

    Returns the hook handle (``handle.remove()`` detaches it).
    """
    return optimizer.register_step_post_hook(lambda *_: project_(model))
