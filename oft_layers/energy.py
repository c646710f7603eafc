"""Hyperspherical energy of a layer's neurons: the quantity OFT provably leaves unchanged."""

from __future__ import annotations

import torch


def hyperspherical_energy(weight: torch.Tensor, power: float = 1.0) -> torch.Tensor:
    """``sum_{i != j} ||w_i/|w_i| - w_j/|w_j| ||^{-power}`` over the neurons (rows of the flattened weight).

    A Linear weight (out, in) has ``out`` neurons; a Conv2d weight (out, in, kh, kw) has ``out`` flattened
    filters. Computed in float64 so that it can be compared before and after a rotation.
    """
    if power <= 0:
        raise ValueError(f"power must be positive, got {power}")
    w = weight.detach().reshape(weight.shape[0], -1).double()
    w = w / w.norm(dim=1, keepdim=True)
    d = torch.cdist(w, w, compute_mode="donot_use_mm_for_euclid_dist")  # exact, not via mm
    off = ~torch.eye(len(w), dtype=torch.bool, device=w.device)
    return (d[off] ** -power).sum()
