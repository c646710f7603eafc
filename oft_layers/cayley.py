"""Skew-symmetric parameters -> orthogonal blocks by the Cayley transform (exact or Neumann series).

One convention everywhere in this project: ``Q = (I - S)(I + S)^{-1}`` with ``S = (R - R^T) / 2``, computed as
``solve(I + S, I - S)`` (the two factors commute). The paper writes ``(I + S)(I - S)^{-1}``, the transpose of ours.
"""

from __future__ import annotations

import torch

CONVENTION = "Q=(I-S)(I+S)^-1, S=(R-R^T)/2"


def skew(R: torch.Tensor) -> torch.Tensor:
    """Skew-symmetric part ``(R - R^T) / 2`` of each (b, b) block of ``R`` (shape (..., b, b))."""
    return 0.5 * (R - R.transpose(-1, -2))


def _solve(A: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``A^{-1} B`` for (r, b, b) or (b, b) systems.

    On CPU the batched LU (MKL) is both broken and slow: for blocks of about 150 and larger with more than one
    thread it returns wrong matrices or fails (PyTorch issue 142815: OFT r=4 at SD widths 640/1280 and 768-wide
    text keys), and for small blocks it costs ~10 ms per call against ~0.3 ms for a loop. One unbatched solve per
    block is correct and fast there; accelerators get the batched solve.
    """
    if A.device.type == "cpu" and A.dim() == 3:
        return torch.stack([torch.linalg.solve(a, b) for a, b in zip(A.unbind(0), B.unbind(0))])
    return torch.linalg.solve(A, B)


def cayley(R: torch.Tensor, method: str = "exact", neumann_terms: int = 5) -> torch.Tensor:
    """Orthogonal blocks ``Q = (I - S)(I + S)^{-1}`` from parameters ``R`` of shape (r, b, b) or (b, b).

    Always computed in float32 (or float64 if ``R`` is float64): solving in half precision fails.
    ``method="neumann"`` replaces ``(I + S)^{-1}`` by ``sum_{k<neumann_terms} (-S)^k``, which approximates the
    same matrix while the rotation stays small (``||S||_2 < 1``) and avoids the solve on accelerators.
    """
    dtype = R.dtype if R.dtype == torch.float64 else torch.float32
    S = skew(R.to(dtype))
    eye = torch.eye(S.shape[-1], dtype=dtype, device=S.device).expand_as(S)
    if method == "exact":
        return _solve(eye + S, eye - S)
    if method == "neumann":
        if neumann_terms < 1:
            raise ValueError(f"neumann_terms must be >= 1, got {neumann_terms}")
        # (I + S)^{-1} ~= I - S + S^2 - ... ; Horner form: I + (-S)(I + (-S)(I + ...)).
        inv = eye
        for _ in range(neumann_terms - 1):
            inv = eye - S @ inv
        return (eye - S) @ inv
    raise ValueError(f"unknown Cayley method {method!r}; use 'exact' or 'neumann'")
