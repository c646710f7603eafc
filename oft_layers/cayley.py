"""Skew-symmetric parameters -> orthogonal blocks by the Cayley transform (exact or Neumann series).

One convention everywhere in this project: ``Q = (I - S)(I + S)^{-1}`` with ``S = (R - R^T) / 2``. The paper
writes ``(I + S)(I - S)^{-1}``, the transpose of ours. Since ``I - S = 2I - (I + S)``, the exact transform is
``Q = 2 (I + S)^{-1} - I``: one inverse per block, whose backward needs no second solve (see ``_ExactCayley``).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

CONVENTION = "Q=(I-S)(I+S)^-1, S=(R-R^T)/2"


def skew(R: torch.Tensor) -> torch.Tensor:
    """Skew-symmetric part ``(R - R^T) / 2`` of each (b, b) block of ``R`` (shape (..., b, b))."""
    return 0.5 * (R - R.transpose(-1, -2))


def _inverse(A: torch.Tensor) -> torch.Tensor:
    """``A^{-1}`` for (r, b, b) or (b, b) matrices ``I + S`` (never singular: eigenvalues ``1 + i*lambda``).

    On CPU the batched LU (MKL) is both broken and slow: for blocks of about 150 and larger it returns wrong
    matrices, fails or hangs (PyTorch issue 142815: OFT r=4 at SD widths 640/1280 and 768-wide text keys; SPEC
    §8), and for small blocks it costs ~10 ms per call against ~0.3 ms for a loop. One unbatched inverse per
    block, written in place into the result, is correct and fast there; accelerators get the batched call.
    """
    if A.device.type != "cpu" or A.dim() == 2:
        return torch.linalg.inv(A)
    out = torch.empty_like(A)
    for a, o in zip(A.unbind(0), out.unbind(0)):
        torch.linalg.inv(a, out=o)
    return out


class _ExactCayley(torch.autograd.Function):
    """``Q = 2 (I + S)^{-1} - I`` from R, with the backward written out.

    With ``A = I + S`` and ``dA^{-1} = -A^{-1} dA A^{-1}``: ``gA = -2 M`` with ``M = A^{-T} gQ A^{-T}`` (two
    matmuls per block, reusing the forward's inverse), and since only ``S = (R - R^T) / 2`` enters,
    ``gR = (gA - gA^T) / 2 = M^T - M``.
    """

    @staticmethod
    def forward(ctx, R):
        A = skew(R)
        A.diagonal(dim1=-2, dim2=-1).add_(1.0)
        A_inv = _inverse(A)
        ctx.save_for_backward(A_inv)
        Q = 2.0 * A_inv
        Q.diagonal(dim1=-2, dim2=-1).sub_(1.0)
        return Q

    @staticmethod
    @once_differentiable
    def backward(ctx, gQ):
        (A_inv,) = ctx.saved_tensors
        A_inv_t = A_inv.transpose(-1, -2)
        M = A_inv_t @ gQ.to(A_inv.dtype) @ A_inv_t
        return M.transpose(-1, -2) - M


def cayley(R: torch.Tensor, method: str = "exact", neumann_terms: int = 5) -> torch.Tensor:
    """Orthogonal blocks ``Q = (I - S)(I + S)^{-1}`` from parameters ``R`` of shape (r, b, b) or (b, b).

    Always computed in float32 (or float64 if ``R`` is float64): inverting in half precision fails.
    ``method="neumann"`` replaces ``(I + S)^{-1}`` by ``sum_{k<neumann_terms} (-S)^k``, which approximates the
    same matrix while the rotation stays small (``||S||_2 < 1``) and needs no inverse.
    """
    dtype = R.dtype if R.dtype == torch.float64 else torch.float32
    if method == "exact":
        return _ExactCayley.apply(R.to(dtype))
    if method == "neumann":
        if neumann_terms < 1:
            raise ValueError(f"neumann_terms must be >= 1, got {neumann_terms}")
        S = skew(R.to(dtype))
        eye = torch.eye(S.shape[-1], dtype=dtype, device=S.device).expand_as(S)
        # (I + S)^{-1} ~= I - S + S^2 - ... ; Horner form: I + (-S)(I + (-S)(I + ...)).
        inv = eye
        for _ in range(neumann_terms - 1):
            inv = eye - S @ inv
        return (eye - S) @ inv
    raise ValueError(f"unknown Cayley method {method!r}; use 'exact' or 'neumann'")
