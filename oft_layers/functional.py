"""The rotation applied to tensors: block products and the OFT linear map with its own backward.

For a frozen ``W`` (out, in) and ``B = blockdiag(Q_1..Q_r)`` (in, in), ``y = x B W^T + bias``. Two ways to
compute it give the same maths (SPEC §1); costs are multiply-adds beyond the frozen layer's two GEMMs
(``y = x W^T`` and ``gx = gy W``, N*in*out each), in units of in*b:

- rotate the weight: forward ``W' = W B^T`` (out), then ``y = x W'^T``; backward
  ``gx = gy W'`` (the frozen layer's GEMM, with W'), and since ``gy W = gx B``,
  ``gQ_i = x_i^T (gy W)_i = (x_i^T gx_i) Q_i``: one block product (N). Training: out + N; inference: out.
- rotate the input: forward ``u = x B`` (N), then ``y = u W^T``; backward ``gu = gy W``,
  ``gx = gu B^T`` (N) and ``gQ_i = x_i^T gu_i`` (N). Training: 3N; inference: N.

Autograd on a rotated weight would form the (out, in) weight gradient instead: one more N*in*out GEMM. No
(in, in) block-diagonal matrix is ever built, and no activation is copied into block-major order.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable


def _blocks(t: torch.Tensor, r: int) -> torch.Tensor:
    """A (M, r*b) matrix seen as r column blocks (r, M, b): a strided view (no copy) when its rows are dense."""
    return t.reshape(t.shape[0], r, -1).transpose(0, 1)


def block_matmul(A: torch.Tensor, Q: torch.Tensor, transpose: bool = False) -> torch.Tensor:
    """``A @ blockdiag(Q)`` (or ``@ blockdiag(Q)^T``) for A (..., r*b) and Q (r, b, b), in A's shape.

    One batched matmul over strided column blocks of A, written straight into the (M, r*b) result: the (in, in)
    block-diagonal matrix is never formed and A is never copied into block-major order. Where autograd must
    record the product (``out=`` is not differentiable), the same bmm returns block-major and is copied back.
    """
    r = Q.shape[0]
    A2 = A.reshape(-1, A.shape[-1])
    Qx = Q.transpose(1, 2) if transpose else Q
    if torch.is_grad_enabled() and (A.requires_grad or Q.requires_grad):
        return torch.bmm(_blocks(A2, r), Qx).transpose(0, 1).reshape(A.shape)
    out = torch.empty(A2.shape, dtype=A2.dtype, device=A2.device)
    torch.bmm(_blocks(A2, r), Qx, out=_blocks(out, r))
    return out.view(A.shape)


def rotate_rows(W: torch.Tensor, Q: torch.Tensor, transpose: bool = True) -> torch.Tensor:
    """Rotate every row of ``W`` (n, r*b): block i becomes ``W_i Q_i^T`` (``transpose``) or ``W_i Q_i``.

    ``W @ blockdiag(Q)^T``: the neurons of a weight matrix rotated by B (``W' = W B^T``).
    """
    return block_matmul(W, Q, transpose=transpose)


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul of ``x`` in, else ``x``'s own dtype."""
    dev = x.device.type
    if torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


def no_autocast(x: torch.Tensor):
    """A context with autocast off on ``x``'s device (a no-op where the device has no autocast, e.g. meta)."""
    dev = x.device.type
    return torch.autocast(dev, enabled=False) if torch.amp.is_autocast_available(dev) else nullcontext()


def oft_linear_forward(
    x: torch.Tensor, W: torch.Tensor, Q: torch.Tensor, bias: torch.Tensor | None, rotate_input: bool
) -> torch.Tensor:
    """``x B W^T + bias`` by either way of the module doc, with whatever autograd the operands carry."""
    if rotate_input:
        return F.linear(block_matmul(x, Q), W, bias)
    return F.linear(x, rotate_rows(W, Q), bias)


def block_gram(x: torch.Tensor, g: torch.Tensor, r: int) -> torch.Tensor:
    """``x_i^T g_i`` for the r column blocks of x and g (both (N, r*b)): (r, b, b), one strided bmm."""
    return torch.bmm(_blocks(x, r).transpose(1, 2), _blocks(g, r))


class OFTLinearFunction(torch.autograd.Function):
    """``y = x B W^T + bias`` for a frozen W, computed by rotating the weight or the input (module doc).

    Inputs: x (..., in), W (out, in), Q (r, b, b) orthogonal blocks, bias (out) or None, ``rotate_input``.
    Runs in the autocast dtype when autocast is on (like ``F.linear``), else in x's dtype; returns gradients for
    x, Q and (when it requires one) bias in their own dtypes; W gets none (frozen by contract). Saves x, Q and
    W' = W B^T (rotated weight) or W (rotated input); ``x B`` is never kept.
    """

    @staticmethod
    def forward(ctx, x, W, Q, bias, rotate_input: bool):
        dtype = compute_dtype(x)
        ctx.dtypes = (x.dtype, Q.dtype, None if bias is None else bias.dtype)
        ctx.rotate_input = rotate_input
        with no_autocast(x):
            xc, Wc, Qc = x.to(dtype), W.to(dtype), Q.to(dtype)
            bc = None if bias is None else bias.to(dtype)
            if rotate_input:
                y = F.linear(block_matmul(xc, Qc), Wc, bc)
            else:
                Wc = rotate_rows(Wc, Qc)  # W' = W B^T
                y = F.linear(xc, Wc, bc)
        ctx.save_for_backward(xc, Wc, Qc)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx, gy):
        x, W, Q = ctx.saved_tensors  # W is W' when the weight was rotated
        x_dtype, q_dtype, b_dtype = ctx.dtypes
        r = Q.shape[0]
        with no_autocast(gy):
            gy2 = gy.reshape(-1, gy.shape[-1]).to(W.dtype)
            g = torch.mm(gy2, W)  # rotated weight: gx = gy W'; rotated input: gu = gy W (N, in)
            gx = gQ = gb = None
            if ctx.needs_input_grad[2]:
                G = block_gram(x.reshape(g.shape), g, r)
                gQ = (G if ctx.rotate_input else torch.bmm(G, Q)).to(q_dtype)  # gy W = gx B
            if ctx.needs_input_grad[0]:
                gx = block_matmul(g, Q, transpose=True) if ctx.rotate_input else g
                gx = gx.view(x.shape).to(x_dtype)
            if ctx.needs_input_grad[3]:
                gb = gy2.sum(0).to(b_dtype)
        return gx, None, gQ, gb, None
