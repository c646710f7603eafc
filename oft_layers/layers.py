"""OFTLinear and OFTConv2d: a frozen layer whose neurons are rotated by a block-diagonal orthogonal matrix.

For a frozen weight ``W`` (out, in) and ``B = blockdiag(Q_1..Q_r)`` (in, in), the adapted layer computes
``y = x B W^T * s + bias`` i.e. ``W'' = diag(s) W B^T`` (SPEC §1): every neuron (row of W) is rotated by B, so
pairwise angles and norms between neurons, and hence hyperspherical energy, are unchanged. ``s`` exists only
with magnitude post-fitting. Bias is frozen and not rotated.

Dtypes: R (and s) are float32 parameters (float64 in a float64 model); the rotation is built in that dtype.
Activations keep the module's dtype, or autocast's: every product runs in ``compute_dtype(x)``, and the
output has that dtype, exactly as for the wrapped ``nn.Linear`` / ``nn.Conv2d``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F
from torch import nn

from . import paths
from .cayley import cayley
from .config import OFTConfig
from .functional import (
    OFTLinearFunction,
    compute_dtype,
    no_autocast,
    oft_linear_forward,
    rotate_rows,
)


class OFTLayer(nn.Module):
    """Shared machinery of OFTLinear / OFTConv2d: parameters, rotation, magnitude, merge/unmerge."""

    def __init__(
        self,
        base: nn.Module,
        config: OFTConfig,
        in_features: int,
        out_features: int,
        blocks: int | None = None,
    ) -> None:
        super().__init__()
        self.base = base.requires_grad_(False)
        self.config = config
        self.in_features, self.out_features = in_features, out_features
        # blocks: the number of diagonal blocks, config.r unless the layer fixes it (a conv's "channel" layout)
        self.blocks = config.r if blocks is None else blocks
        where = type(base).__name__ + f"({in_features}->{out_features})"
        self.block_size = config.block_size(in_features, where) if blocks is None else in_features // blocks
        b, r = self.block_size, self.blocks
        dev = base.weight.device
        # float32 parameters even in a half-precision model (the trainers' contract); float64 in a float64 one
        dtype = torch.float64 if base.weight.dtype == torch.float64 else torch.float32
        shape = (b, b) if config.block_share else (r, b, b)
        # Zero init: S = 0, Q = I, so the adapted layer equals the pretrained one at step 0.
        self.R = nn.Parameter(torch.zeros(shape, dtype=dtype, device=dev))
        self.s = nn.Parameter(torch.ones(out_features, dtype=dtype, device=dev)) if config.magnitude else None
        self.merged = False

    # --- the rotation -------------------------------------------------------------------------------------
    def rotation(self) -> torch.Tensor:
        """The orthogonal blocks (r, b, b) in float32 (float64 for a float64 R); a shared block is expanded."""
        Q = cayley(self.R, self.config.cayley, self.config.neumann_terms)
        return Q.expand(self.blocks, -1, -1) if self.config.block_share else Q

    def radius(self) -> float:
        """COFT's Frobenius radius of each block of this layer (``OFTConfig.radius`` at its block count)."""
        return self.config.radius(self.block_size, self.blocks)

    def _flat_weight(self) -> torch.Tensor:
        return self.base.weight.reshape(self.out_features, self.in_features)

    def _exact_dtype(self) -> torch.dtype:
        """The dtype weights are rotated in: float32, or float64 when the weight or R is float64."""
        return torch.promote_types(torch.promote_types(self.base.weight.dtype, self.R.dtype), torch.float32)

    def _rotated_flat(self) -> torch.Tensor:
        """``diag(s) W B^T`` as (out, in) in ``_exact_dtype`` (differentiable in R and s)."""
        dtype = self._exact_dtype()
        W = rotate_rows(self._flat_weight().to(dtype), self.rotation().to(dtype))
        return W if self.s is None else W * self.s.to(dtype)[:, None]

    @torch.no_grad()
    def rotated_weight(self, full_precision: bool = False) -> torch.Tensor:
        """``diag(s) W B^T`` in the base weight's shape and dtype, computed in float32 or float64;
        ``full_precision`` keeps that dtype (an fp16 model's weight difference then keeps its precision)."""
        W = self._rotated_flat().reshape(self.base.weight.shape)
        return W if full_precision else W.to(self.base.weight.dtype)

    def enable_magnitude(self) -> None:
        """Add the per-output scale ``s`` (init 1, so the output is unchanged) to a layer built without one:
        magnitude post-fitting of an already trained rotation."""
        if self.s is not None:
            return
        if self.merged:
            raise ValueError("cannot add a magnitude scale to a merged layer; unmerge it first")
        self.config = replace(self.config, magnitude=True)
        self.s = nn.Parameter(torch.ones(self.out_features, dtype=self.R.dtype, device=self.R.device))

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
        dtype = self._exact_dtype()
        W = self._flat_weight().to(dtype)
        if self.s is not None:
            if (self.s == 0).any():
                raise ValueError(
                    "cannot unmerge: a magnitude scale is exactly 0, the original weight is lost"
                )
            W = W / self.s.to(dtype)[:, None]
        W = rotate_rows(W, self.rotation().to(dtype), transpose=False)
        self.base.weight.copy_(W.reshape(self.base.weight.shape).to(self.base.weight.dtype))
        self.merged = False

    def extra_repr(self) -> str:
        c = self.config
        return (
            f"r={c.r}, blocks={self.blocks}, block_size={self.block_size}, coft={c.coft}, eps={c.eps}, block_share={c.block_share}, "
            f"cayley={c.cayley}, magnitude={c.magnitude}, path={c.path}, merged={self.merged}"
        )


class OFTLinear(OFTLayer):
    """A frozen ``nn.Linear`` with OFT. ``path`` chooses how the rotation is applied (same result):

    - "weight": rotate W block by block, then one GEMM;
    - "input": rotate x block by block, then the frozen GEMM (each with its own backward, see ``functional``);
    - "dense": the reference's approach, a dense (in, in) block-diagonal matrix product in every forward;
    - "auto": "weight" or "input" by the FLOP rule (``oft_layers.paths``; with the policy "measure", timed
      once per shape class where the rule is unsure).
    """

    def __init__(self, base: nn.Linear, config: OFTConfig | None = None, **options) -> None:
        if not isinstance(base, nn.Linear):
            raise TypeError(f"OFTLinear wraps nn.Linear, got {type(base).__name__}")
        super().__init__(base, config or OFTConfig(**options), base.in_features, base.out_features)

    def choose_path(self, x: torch.Tensor, Q: torch.Tensor | None = None) -> str:
        """The way a call on ``x`` is computed ("auto" resolved by ``paths.choose``)."""
        if self.config.path != "auto":
            return self.config.path
        backward = torch.is_grad_enabled() and (x.requires_grad or self.R.requires_grad)
        Q = (self.rotation() if Q is None else Q).detach()

        def run(path: str) -> None:  # the call that way, on detached copies: no gradient reaches the layer
            if not backward:
                with torch.no_grad():
                    self._linear(x, Q, path)
                return
            with torch.enable_grad():
                y = self._linear(x.detach().requires_grad_(x.requires_grad), Q.requires_grad_(True), path)
                y.backward(torch.ones_like(y))

        return paths.choose(
            x, compute_dtype(x), self.in_features, self.out_features, self.config.r, backward, run
        )

    def _linear(self, x: torch.Tensor, Q: torch.Tensor, path: str) -> torch.Tensor:
        """``x B W^T (+ bias unless scaled)`` by ``path``."""
        W, bias = self.base.weight, self.base.bias
        bias_in = bias if self.s is None else None  # with a scale, bias is added after scaling
        if path == "dense":
            dense = torch.block_diag(*Q.unbind(0)).to(W.dtype)  # (in, in)
            return F.linear(x, W @ dense.T, bias_in)
        if W.requires_grad:  # base weight unfrozen by the user: let autograd do everything
            return oft_linear_forward(x, W, Q.to(compute_dtype(x)), bias_in, path == "input")
        return OFTLinearFunction.apply(x, W, Q, bias_in, path == "input")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        Q = self.rotation()
        y = self._linear(x, Q, self.choose_path(x, Q))
        if self.s is None:
            return y
        y = y * self.s.to(y.dtype)
        bias = self.base.bias
        return y if bias is None else y + bias.to(y.dtype)


class OFTConv2d(OFTLayer):
    """A frozen ``nn.Conv2d`` with OFT on its flattened filters: each filter (in, kh, kw) is flattened in that
    order and rotated by ``blockdiag(Q)``, with ``config.conv_layout`` "flat" (r blocks over the in*kh*kw axis)
    or "channel" (the reference's layout: ``in`` blocks of kh*kw, block c rotating the patch of input channel c).

    The output equals ``conv2d(x, W'')`` where every filter is rotated, for any kernel size, stride, padding and
    dilation; angles between filters are preserved. (The reference reshaped with ``view`` and mixed filters.)
    """

    def __init__(self, base: nn.Conv2d, config: OFTConfig | None = None, **options) -> None:
        if not isinstance(base, nn.Conv2d):
            raise TypeError(f"OFTConv2d wraps nn.Conv2d, got {type(base).__name__}")
        if base.groups != 1:
            raise ValueError(f"OFTConv2d supports groups=1 only, got groups={base.groups}")
        kh, kw = base.kernel_size
        config = config or OFTConfig(**options)
        blocks = base.in_channels if config.conv_layout == "channel" else None
        super().__init__(base, config, base.in_channels * kh * kw, base.out_channels, blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.merged:
            return self.base(x)
        dtype = compute_dtype(x)
        W = self._rotated_flat().reshape(self.base.weight.shape).to(dtype)
        bias = self.base.bias
        with no_autocast(x):
            return self.base._conv_forward(x.to(dtype), W, None if bias is None else bias.to(dtype))
