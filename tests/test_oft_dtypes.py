"""Dtypes as a tested matrix: OFTLinear (every path) and OFTConv2d x {float64, float32, bfloat16, float16, float32
under bf16 autocast} x {cast before / after wrapping}, forward, backward, merge and unmerge, each against a
float64 reference computed from the same (already rounded) operands.

Tolerances come from the dtype and the size of the computation, never from a machine: a dot product of K terms
computed in a dtype with unit roundoff u is within ``gamma * u * (|x| |W'|^T)`` of the exact value, where the
operands' own rounding (u each), the rounded intermediate (the rotated weight or input: u), and the
accumulation (at most ~K u in the worst order, ~sqrt(K) u typically; CPU bf16/fp16 GEMMs accumulate in fp32)
give ``gamma = 4 + 2 sqrt(K) u_acc / u`` (``gamma``). A wrong sign, block or transpose is O(1) relative off: far outside.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import oft_layers as ol
from tests.helpers.numerics import eps

pytestmark = pytest.mark.numerics

# name -> (module dtype, autocast dtype or None)
DTYPES = {
    "float64": (torch.float64, None),
    "float32": (torch.float32, None),
    "bfloat16": (torch.bfloat16, None),
    "float16": (torch.float16, None),
    "float32+autocast_bf16": (torch.float32, torch.bfloat16),
}
KINDS = ["linear-weight", "linear-input", "linear-dense", "linear-auto", "conv2d"]
IN, OUT, R_BLOCKS = 32, 24, 4


def unit_roundoff(dtype: torch.dtype) -> float:
    """Half an ulp at 1: 2^-53 (float64), 2^-24 (float32), 2^-8 (bfloat16), 2^-11 (float16)."""
    return eps(dtype) / 2


def gamma(k: int, dtype: torch.dtype) -> float:
    """Rounding-error multiple of u for K-term sums in ``dtype``: a few roundings of operands, intermediates and
    the result, plus the accumulation's ~sqrt(K) roundings in the accumulator. CPU bfloat16/float16 matmuls
    accumulate in float32, so for them the accumulation term is scaled by u32/u (negligible)."""
    u_acc = unit_roundoff(torch.float32) if torch.finfo(dtype).bits < 32 else unit_roundoff(dtype)
    return 4 + 2 * math.sqrt(k) * u_acc / unit_roundoff(dtype)


def build(kind: str, dtype: torch.dtype, cast_after: bool) -> ol.OFTLayer:
    """A layer with non-identity R and a non-trivial bias, its module dtype set before or after wrapping."""
    g = torch.Generator().manual_seed(0)
    base = nn.Conv2d(IN // 8, OUT, 3, padding=1) if kind == "conv2d" else nn.Linear(IN, OUT)
    with torch.no_grad():
        for p in base.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    if not cast_after:
        base = base.to(dtype)
    if kind == "conv2d":  # in*kh*kw = 4*9 = 36: 4 blocks of 9
        layer = ol.OFTConv2d(base, r=R_BLOCKS)
    else:
        layer = ol.OFTLinear(base, r=R_BLOCKS, path=kind.split("-")[1])
    with torch.no_grad():
        layer.R.copy_(torch.randn(layer.R.shape, generator=g) * 0.2)
    return layer.to(dtype) if cast_after else layer


def make_input(kind: str, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (2, IN // 8, 5, 5) if kind == "conv2d" else (2, 7, IN)
    return torch.randn(shape, generator=g).to(dtype).requires_grad_(True)


def reference(layer: ol.OFTLayer, x: torch.Tensor, run_dtype: torch.dtype):
    """Float64 output and ``|x| |B| |W|^T`` bound from the operands as the layer's kernels see them.

    Operands are first rounded to ``run_dtype`` (what autocast or the module dtype makes of them); R enters as
    stored (its Cayley transform is computed in float32 or float64, whatever R's dtype).
    """
    Q = ol.cayley(layer.R.detach().double())
    B = torch.block_diag(*(Q.expand(R_BLOCKS, -1, -1) if Q.dim() == 2 else Q))
    W = layer.base.weight.detach().to(run_dtype).double()
    bias = layer.base.bias.detach().to(run_dtype).double()
    xd = x.detach().to(run_dtype).double()
    Wf = W.reshape(W.shape[0], -1)
    if isinstance(layer, ol.OFTConv2d):
        W_rot = (Wf @ B.T).reshape(W.shape)
        y = nn.functional.conv2d(xd, W_rot, bias, padding=1)
        bound = nn.functional.conv2d(xd.abs(), (Wf.abs() @ B.abs().T).reshape(W.shape), padding=1)
    else:
        y = xd @ (Wf @ B.T).T + bias
        bound = (xd.abs() @ B.abs()) @ Wf.abs().T
    return y, bound + (bias.abs()[:, None, None] if isinstance(layer, ol.OFTConv2d) else bias.abs())


def _forward64(layer, x64, W64, Q64, bias64):
    """The layer's map in float64 from explicit operands (Q: (r, b, b) blocks)."""
    rot = ol.rotate_rows(W64.reshape(W64.shape[0], -1), Q64).reshape(W64.shape)
    if isinstance(layer, ol.OFTConv2d):
        return nn.functional.conv2d(x64, rot, bias64, padding=1)
    return x64 @ rot.T + (0 if bias64 is None else bias64)


def reference_gradients(layer, x, weights, run_dtype):
    """Float64 gradients of ``sum(weights * y)`` w.r.t. x and R, and their absolute-value bounds.

    The bounds are the same gradients with every operand replaced by its absolute value (and Q by |Q|):
    ``|g| |W| |B|^T`` for gx and ``|x_i|^T (|g| |W|)_i`` for gQ_i, the sums whose rounding the kernels make.
    """
    W64 = layer.base.weight.detach().to(run_dtype).double()
    b64 = layer.base.bias.detach().to(run_dtype).double()
    x64 = x.detach().to(run_dtype).double().requires_grad_(True)
    R64 = layer.R.detach().double().requires_grad_(True)
    (_forward64(layer, x64, W64, ol.cayley(R64), b64) * weights).sum().backward()
    xa = x64.detach().abs().requires_grad_(True)
    Qa = ol.cayley(R64.detach()).abs().requires_grad_(True)
    (_forward64(layer, xa, W64.abs(), Qa, None) * weights.abs()).sum().backward()
    return x64.grad, R64.grad, xa.grad, Qa.grad


@pytest.mark.parametrize("cast_after", [False, True], ids=["cast-then-wrap", "wrap-then-cast"])
@pytest.mark.parametrize("dtype_name", list(DTYPES))
@pytest.mark.parametrize("kind", KINDS)
def test_dtype_matrix_forward_backward_merge_unmerge(kind, dtype_name, cast_after):
    module_dtype, autocast_dtype = DTYPES[dtype_name]
    run_dtype = autocast_dtype or module_dtype
    u = unit_roundoff(run_dtype)
    layer = build(kind, module_dtype, cast_after)
    r_dtype = layer.R.dtype
    weight_before = layer.base.weight.detach().clone()
    x = make_input(kind, module_dtype)
    K = IN if kind != "conv2d" else IN // 8 * 9

    with torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
        y = layer(x)
    # the dtype contract: output in the run dtype, parameters and base weight untouched in dtype and value
    assert y.dtype == run_dtype
    assert layer.R.dtype == r_dtype and layer.base.weight.dtype == module_dtype
    assert torch.equal(layer.base.weight, weight_before)
    y_ref, bound = reference(layer, x, run_dtype)
    assert ((y.double() - y_ref).abs() <= gamma(K, run_dtype) * u * bound).all(), (
        (y.double() - y_ref).abs().max()
    )

    # backward: finite gradients in each parameter's own dtype, matching float64 autograd on the reference
    weights = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape(y.shape)
    (y.double() * weights).sum().backward()
    assert x.grad.dtype == module_dtype and layer.R.grad.dtype == r_dtype
    assert torch.isfinite(x.grad).all() and torch.isfinite(layer.R.grad).all()
    gx_ref, gR_ref, gx_bound, gQ_bound = reference_gradients(layer, x, weights, run_dtype)
    # elementwise for gx (K-term dot products, the upstream gradient rounded once); normwise for gR, whose
    # Cayley backward (-2 A^-T gQ A^-T, ||A^-1||_2 <= 1) at most doubles the error of gQ
    n_tokens = x.numel() // (x.shape[1] if kind == "conv2d" else IN)  # gQ's reduction: tokens or positions
    assert ((x.grad.double() - gx_ref).abs() <= gamma(K + OUT, run_dtype) * u * gx_bound).all()
    gR_err = (layer.R.grad.double() - gR_ref).norm()
    assert gR_err <= 2 * (gamma(n_tokens, run_dtype) + gamma(OUT, run_dtype)) * u * gQ_bound.norm(), gR_err

    # merge folds the rotation in: a merged layer is the plain layer with rotated weights, within one rounding
    with (
        torch.no_grad(),
        torch.autocast("cpu", dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None),
    ):
        y_unmerged = layer(x)
        layer.merge()
        assert layer.merged and layer.base.weight.dtype == module_dtype
        y_merged = layer(x)
        layer.unmerge()
        y_again = layer(x)
    merge_tol = gamma(K, run_dtype) * (u + unit_roundoff(module_dtype)) * bound
    assert ((y_merged.double() - y_unmerged.double()).abs() <= 2 * merge_tol).all()
    assert ((y_again.double() - y_unmerged.double()).abs() <= 3 * merge_tol).all()
    # unmerge restores W to within the two roundings of a weight in the module dtype (merge, unmerge)
    u_w = unit_roundoff(module_dtype)
    w_err = (layer.base.weight.double() - weight_before.double()).abs().max()
    assert w_err <= gamma(K, module_dtype) * 2 * u_w * weight_before.double().abs().max(), w_err
