"""Tolerances from the dtype and the size of a computation, so that a float comparison passes on every CPU.

Two evaluations of one formula by different kernels round differently: AVX2 and AVX-512 GEMMs block a dot
product differently, a vectorised reduction adds in another order than a scalar loop, two threads split a sum
where one thread does not, another batch size makes MKL pick another kernel. How far apart the results can land
is set by the dtype's machine epsilon (``eps = torch.finfo(dtype).eps``, twice the unit roundoff u) and by how
many rounded terms feed each result, not by the machine a constant was tuned on:

* ``worst_case=True``: a sum or dot product of n terms, in any order (recursive, pairwise, blocked, split across
  threads), is within γ_n·Σ|terms| of its exact value, γ_n = n·u/(1 - n·u) (Higham, *Accuracy and Stability of
  Numerical Algorithms*, 2nd ed., Lemma 3.1 and eq. 3.5). Rigorous, so it holds on any machine; ``c·eps·n`` with
  c = 2 covers γ_n and the few roundings around the sum (a division, a square root, a bias). Use it for short
  computations: a 27-term patch, the b² entries of a block's norm.
* default: rounding errors of long computations behave like independent random errors (ibid. §2.8), so n rounded
  terms move a result by about u·sqrt(n)·scale. Through a network each output accumulates the terms of every
  layer on its path, at most the sum of the layers' fan-ins (``network_terms``); layers pass earlier errors on
  with gain about 1 (normalisation keeps activations O(1)). ``c·eps·sqrt(n)`` with c = 4 because the largest of
  ~10⁴ compared outputs lies about 4 standard deviations out.

A real bug (a wrong sign, a missing term, another seed) changes a result by O(scale), orders of magnitude outside
either tolerance; tests that also show an effect assert it is at least ``EFFECT`` times the tolerance.
Exact equality stays where both sides run the same kernels on the same inputs in one process (a rerun, a
resumed run against an uninterrupted one, a file round trip, counts on hand-made images).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

# An effect a test relies on (what it compares would differ without it) is at least this times its tolerance.
EFFECT = 10


def eps(dtype: torch.dtype) -> float:
    """Machine epsilon of ``dtype`` (float32: 1.19e-7, float64: 2.2e-16), twice the unit roundoff."""
    return float(torch.finfo(dtype).eps)


def tol(
    dtype: torch.dtype, n_terms: int, *, scale: float = 1.0, c: float | None = None, worst_case: bool = False
) -> dict[str, float]:
    """``rtol``/``atol`` for two ``dtype`` evaluations of a result fed by ``n_terms`` rounded terms of size ``scale``.

    rtol = c·eps·n (``worst_case``, c = 2) or c·eps·sqrt(n) (c = 4); atol = rtol·scale, for results near zero.
    For ``torch.testing.assert_close(a, b, **tol(...))`` and ``torch.allclose(a, b, **tol(...))``.
    """
    if c is None:
        c = 2.0 if worst_case else 4.0
    rtol = c * eps(dtype) * (n_terms if worst_case else math.sqrt(n_terms))
    return {"rtol": rtol, "atol": rtol * float(scale)}


def approx(expected, dtype: torch.dtype, n_terms: int, **kwargs):
    """``pytest.approx(expected)`` with ``tol(dtype, n_terms, **kwargs)`` (rel = rtol, abs = atol)."""
    t = tol(dtype, n_terms, **kwargs)
    return pytest.approx(expected, rel=t["rtol"], abs=t["atol"])


def fan_in(module: nn.Module) -> int:
    """Terms each output of a Linear / Conv2d sums (in_features; in_channels/groups·kh·kw); 0 for other modules."""
    if isinstance(module, nn.Linear):
        return module.in_features
    if isinstance(module, nn.Conv2d):
        return module.in_channels // module.groups * math.prod(module.kernel_size)
    return 0


def network_terms(*modules: nn.Module, passes: int = 1) -> int:
    """Rounded terms an output of ``modules`` run one after another (``passes`` times) accumulates, at most:
    the sum of every Linear / Conv2d fan-in (wrapped layers' base layers included). Tiny SD: UNet 14,052,
    VAE decoder 5,812, text encoder 448."""
    return passes * sum(fan_in(m) for module in modules for m in module.modules())


def is_duration(value: object) -> bool:
    """A recorded time is a finite, non-negative number (its size depends on the machine: never assert it)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )
