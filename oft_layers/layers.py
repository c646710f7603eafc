"""OFTLinear and OFTConv2d: a frozen layer whose neurons are rotated by a block-diagonal orthogonal matrix.

For a frozen weight ``W`` (out, in) and ``B = blockdiag(Q_1..Q_r)`` (in, in), the adapted layer computes
``y = x B W^T * s + bias`` i.e. ``W'' = diag(s) W B^T`` (SPEC §1): every neuron (row of W) is rotated by B, so
pairwise angles and norms between neurons, and hence hyperspherical energy, are unchanged. ``s`` exists only
with magnitude post-fitting. Bias is frozen and not rotated.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from .cayley import cayley
from .config import OFTConfig


def rotate_rows(W: torch.Tensor, Q: torch.Tensor, transpose: bool = True) -> torch.Tensor:
    """Block-rotate the last axis of ``W`` (n, r*b): block i becomes ``W_i Q_i^T`` (or ``W_i Q_i``).

    ``W @ blockdiag(Q)^T`` without materialising the (in, in) block-diagonal matrix: one batched matmul.
    """
    r, b, _ = Q.shape
    Wb = W.reshape(-1, r, b).transpose(0, 1)  # (r, n, b)
    out = torch.bmm(Wb, Q.transpose(1, 2) if transpose else Q)  # (r, n, b)
    return out.transpose(0, 1).reshape(W.shape)


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype autocast would run a matmul in, else the input's dtype."""
    dev = x.device.type
    if torch.is_autocast_enabled(dev):
        return torch.get_autocast_dtype(dev)
    return x.dtype


class _WeightCentricLinear(torch.autograd.Function):
    """``y = x (W B^T)^T + bias`` with a backward that never forms the weight gradient.

    Forward rotates W (cost out*in*b) and runs one plain matmul. Backward uses ``u = x B`` implicitly:
    ``g_u = g_y W`` (the matmul a frozen layer needs anyway), ``g_x = g_u B^T`` and ``g_Q_i = x_i^T g_u_i``
    (each N*in*b), instead of autograd's extra N*in*out product for ``g_W'``.
    """

    @staticmethod
    def forward(ctx, x, W, Q, bias):
        dtype = _compute_dtype(x)
        ctx.x_dtype, ctx.q_dtype = x.dtype, Q.dtype
        with torch.autocast(x.device.type, enabled=False):
            x, W, Qc = x.to(dtype), W.to(dtype), Q.to(dtype)
            y = F.linear(x, rotate_rows(W, Qc), None if bias is None else bias.to(dtype))
        ctx.save_for_backward(x, W, Qc)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, W, Q = ctx.saved_tensors
        r, b, _ = Q.shape
        with torch.autocast(gy.device.type, enabled=False):
            gu = torch.matmul(gy.to(W.dtype), W)  # (..., in)
            gx = gQ = None
            if ctx.needs_input_grad[0]:
                gx = rotate_rows(gu, Q, transpose=True).to(ctx.x_dtype)
            if ctx.needs_input_grad[2]:
                xb = x.reshape(-1, r, b).transpose(0, 1)  # (r, N, b)
                gub = gu.reshape(-1, r, b).transpose(0, 1)
                gQ = torch.bmm(xb.transpose(1, 2), gub).to(ctx.q_dtype)  # (r, b, b)
        return gx, None, gQ, None


class OFTLayer(nn.Module):
    """Shared machinery of OFTLinear / OFTConv2d: parameters, rotation, magnitude, merge/unmerge."""

    def __init__(self, base: nn.Module, config: OFTConfig, in_features: int, out_features: int) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.config = config
        self.in_features, self.out_features = in_features, out_features
        self.block_size = config.block_size(
            in_features, where=type(base).__name__ + f"({in_features}->{out_features})"
        )
        b, r = self.block_size, config.r
        dev = base.weight.device
        shape = (b, b) if config.block_share else (r, b, b)
        # Zero init: S = 0, Q = I, so the adapted layer equals the pretrained one at step 0.
        self.R = nn.Parameter(torch.zeros(shape, dtype=torch.float32, device=dev))
        self.s = (
            nn.Parameter(torch.ones(out_features, dtype=torch.float32, device=dev))
            if config.magnitude
            else None
        )
        self.merged = False

    # --- the rotation -------------------------------------------------------------------------------------
    def rotation(self) -> torch.Tensor:
        """The orthogonal blocks (r, b, b) in float32; a shared block is expanded (gradients accumulate)."""
        Q = cayley(self.R, self.config.cayley, self.config.neumann_terms)
        return Q.expand(self.config.r, -1, -1) if self.config.block_share else Q

    def _flat_weight(self) -> torch.Tensor:
        return self.base.weight.reshape(self.out_features, self.in_features)

    @torch.no_grad()
    def rotated_weight(self) -> torch.Tensor:
        """``diag(s) W B^T`` in the base weight's shape and dtype (computed in float32)."""
        W = rotate_rows(self._flat_weight().float(), self.rotation())
        if self.s is not None:
            W = W * self.s.float()[:, None]
        return W.reshape(self.base.weight.shape).to(self.base.weight.dtype)

    def enable_magnitude(self) -> None:
        """Add the per-output scale ``s`` (init 1, so the output is unchanged) to a layer built without one:
        magnitude post-fitting of an already trained rotation."""
        if self.s is not None:
            return
        if self.merged:
            raise ValueError("cannot add a magnitude scale to a merged layer; unmerge it first")
        self.config = replace(self.config, magnitude=True)
        self.s = nn.Parameter(torch.ones(self.out_features, dtype=torch.float32, device=self.R.device))

    # --- merge / unmerge ----------------------------------------------------------------------------------
    @torch.no_grad()
    def merge(self) -> None:
        """Fold the rotation (and scale) into the base weight once; forward then costs exactly the base layer."""
        if self.merged:
            return
        if not torch.isfinite(self.R).all() or (self.s is not None and not torch.isfinite(self.s).all()):
            raise ValueError("cannot merge: the OFT parameters contain NaN/inf (training diverged?)")
        self.base.weight.copy_(self.rotated_weight())
        self.merged = True

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo ``merge``: ``W = diag(1/s) W'' B`` (exact up to float rounding, since B is orthogonal)."""
        if not self.merged:
            return
        W = self._flat_weight().float()
        if self.s is not None:
            if (self.s == 0).any():
                raise ValueError(
                    "cannot unmerge: a magnitude scale is exactly 0, the original weight is lost"
                )
            W = W / self.s.float()[:, None]
        W = rotate_rows(W, self.rotation(), transpose=False)
        self.base.weight.copy_(W.reshape(self.base.weight.shape).to(self.base.weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"r={c.r}, block_size={self.block_size}, coft={c.coft}, eps={c.eps}, block_share={c.block_share}, "
            f"cayley={c.cayley}, magnitude={c.magnitude}, path={c.path}, merged={self.merged}"
        )


class OFTLinear(OFTLayer):
    """A frozen ``nn.Linear`` with OFT. ``path`` chooses how the rotation is applied (same result):

    - "weight": rotate W block by block, one matmul (custom backward, see ``_WeightCentricLinear``);
    - "input": rotate x block by block, then the frozen layer;
    - "dense": the reference's approach, a dense (in, in) block-diagonal matrix product in every forward;
    - "auto": "weight" when out_features <= tokens, else "input" (the cheaper in FLOPs, forward and backward).
    """

    def __init__(self, base: nn.Linear, config: OFTConfig | None = None, **options) -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"OFTLinear wraps nn.Linear, got {type(base).__name__}")
        super().__init__(base, config or OFTConfig(**options), base.in_features, base.out_features)

    def choose_path(self, x: torch.Tensor) -> str:
        """The compute path this call uses (resolves "auto" from the number of tokens)."""
        if self.config.path != "auto":
            return self.config.path
        tokens = x.numel() // self.in_features
        # weight-centric costs out*in*b extra, input-centric N*in*b (forward and backward alike).
        return "weight" if self.out_features <= tokens else "input"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        W, bias = self.base.weight, self.base.bias
        Q = self.rotation()
        path = self.choose_path(x)
        bias_in = bias if self.s is None else None  # with a scale, bias is added after scaling
        if path == "weight" and not W.requires_grad:
            y = _WeightCentricLinear.apply(x, W, Q, bias_in)
        elif path == "dense":
            dense = torch.block_diag(*Q.unbind(0)).to(W.dtype)  # (in, in)
            y = F.linear(x, W @ dense.T, bias_in)
        elif path == "weight":  # base weight unfrozen by the user: let autograd do everything
            y = F.linear(x, rotate_rows(W, Q.to(W.dtype)), bias_in)
        else:
            xr = rotate_rows(x, Q.to(_compute_dtype(x)), transpose=False)  # x B, block by block
            y = F.linear(xr, W, bias_in)
        if self.s is not None:
            y = y * self.s.to(y.dtype)
            if bias is not None:
                y = y + bias.to(y.dtype)
        return y


class OFTConv2d(OFTLayer):
    """A frozen ``nn.Conv2d`` with OFT on its flattened filters (blocks over the in*kh*kw axis).

    The output equals ``conv2d(x, W'')`` where every filter is rotated, for any kernel size, stride, padding and
    dilation; angles between filters are preserved. (The reference reshaped with ``view`` and mixed filters.)
    """

    def __init__(self, base: nn.Conv2d, config: OFTConfig | None = None, **options) -> None:
        if not isinstance(base, nn.Conv2d):
            raise TypeError(f"OFTConv2d wraps nn.Conv2d, got {type(base).__name__}")
        if base.groups != 1:
            raise ValueError(f"OFTConv2d supports groups=1 only, got groups={base.groups}")
        kh, kw = base.kernel_size
        super().__init__(base, config or OFTConfig(**options), base.in_channels * kh * kw, base.out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        W = rotate_rows(self._flat_weight().float(), self.rotation())
        if self.s is not None:
            W = W * self.s[:, None]
        W = W.reshape(self.base.weight.shape).to(_compute_dtype(x))
        bias = self.base.bias
        return self.base._conv_forward(x, W, None if bias is None else bias.to(W.dtype))
