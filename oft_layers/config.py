"""The options of one orthogonal adapter, validated once."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

PATHS = ("auto", "weight", "input", "dense")
CAYLEY_METHODS = ("exact", "neumann")
# How an nn.Conv2d filter w_j (in, kh, kw) is cut into blocks; both rotate each filter flattened in (in, kh, kw)
# order. "flat": r blocks of in*kh*kw/r entries; "channel": the reference's OFTInjectedConv2d layout, one block
# per input channel rotating its kh*kw patch (in blocks of kh*kw, r not used; a 1x1 conv then has no freedom).
CONV_LAYOUTS = ("flat", "channel")


@dataclass(frozen=True)
class OFTConfig:
    """Hyperparameters of an OFT/COFT layer (SPEC §1).

    r: number of diagonal blocks (not the block size); the block size is ``in_features / r``.
    eps: COFT deviation; the Frobenius radius of each block is ``eps * b**2 / sqrt(r)`` (shared: ``eps * b**2``).
    coft: project R onto that ball after every optimizer step (see ``project_``).
    block_share: one (b, b) block shared by all r blocks.
    cayley: "exact" (solve, float32) or "neumann" (truncated series, for accelerators; exact while S is small).
    magnitude: add a trainable per-output scale ``s`` (magnitude post-fitting, "re-scaled OFT").
    path: "auto" picks the cheaper of "weight" (rotate W) and "input" (rotate x) per call; "dense" is the
        reference's approach (a dense block-diagonal matrix rebuilt every forward), kept as a baseline.
    conv_layout: the blocks of an nn.Conv2d (``CONV_LAYOUTS``): "flat" (r blocks over the flattened filter) or
        "channel" (the reference's: one kh*kw block per input channel); Linear layers ignore it.
    """

    r: int = 4
    eps: float | None = None
    coft: bool = False
    block_share: bool = False
    cayley: str = "exact"
    neumann_terms: int = 5
    magnitude: bool = False
    path: str = "auto"
    conv_layout: str = "flat"

    def __post_init__(self) -> None:
        if not isinstance(self.r, int) or isinstance(self.r, bool) or self.r < 1:
            raise ValueError(f"r (number of blocks) must be a positive integer, got {self.r!r}")
        if self.coft and (self.eps is None or not math.isfinite(self.eps) or self.eps <= 0):
            raise ValueError(f"COFT needs a positive finite eps (e.g. --eps 1e-3), got {self.eps!r}")
        if self.cayley not in CAYLEY_METHODS:
            raise ValueError(f"cayley must be one of {CAYLEY_METHODS}, got {self.cayley!r}")
        if self.neumann_terms < 1:
            raise ValueError(f"neumann_terms must be >= 1, got {self.neumann_terms}")
        if self.path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, got {self.path!r}")
        if self.conv_layout not in CONV_LAYOUTS:
            raise ValueError(f"conv_layout must be one of {CONV_LAYOUTS}, got {self.conv_layout!r}")

    def block_size(self, features: int, where: str = "layer") -> int:
        """``features / r``, or a clear error when r does not divide the width."""
        if features % self.r:
            divisors = [d for d in range(1, min(features, 64) + 1) if features % d == 0]
            raise ValueError(
                f"{where}: r={self.r} blocks do not divide its {features} input features; "
                f"choose r among {divisors}{' ...' if features > 64 else ''}"
            )
        return features // self.r

    def radius(self, b: int, blocks: int | None = None) -> float:
        """COFT radius of one block: ``eps * b^2 / sqrt(blocks)`` (``blocks``: the layer's block count, default
        r), or ``eps * b^2`` for a shared block."""
        assert self.eps is not None
        n = self.r if blocks is None else blocks
        return self.eps * b * b if self.block_share else self.eps * b * b / math.sqrt(n)

    def to_dict(self) -> dict:
        """The options as a plain dict (what adapter files record per layer)."""
        return asdict(self)
