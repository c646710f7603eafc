"""Which way ``OFTLinear(path="auto")`` computes a call: a FLOP rule, or a measurement where the rule is unsure.

``functional`` gives the extra work of each way, in units of in*b multiply-adds (and about as many values
moved): rotating the weight costs out + N in training (out at inference), rotating the input 3N (N). Far from
a tie that count decides on any hardware (measured at SD1.5's shapes with MKL at AVX-512 and at AVX2: the rule
picked the faster way within 4 % everywhere, bench/RESULTS_layers.md). Near a tie fixed costs (kernel
launches, allocations, GEMM tile shapes) decide, and they depend on the machine: with the policy "measure"
each such shape class is timed once on first use and the winner cached, as ``torch.backends.cudnn.benchmark``
does for convolutions.

The default policy is "flops", for the same reason ``cudnn.benchmark`` is off by default: both ways compute the
same maths but round differently, and a timed choice can differ between two processes, so runs would no longer
be bit-identical across processes (a resume against an uninterrupted run, DDP ranks, sampling workers).
``set_path_policy("measure")``, ``use_path_policy("measure")`` or ``OFT_PATH_POLICY=measure`` turn timing on;
the trainers then save ``path_cache()`` in their checkpoints and ``load_path_cache`` it on resume, so a resumed
run keeps its choices. ``OFTLinear(path="weight" | "input")`` pins one layer.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch

POLICIES = ("measure", "flops")
AMBIGUOUS = 2.0  # measure only where the two ways' extra work is within this factor of each other
MARGIN = 0.05  # a measured winner must be this much faster; otherwise the FLOP rule's choice stands
REPEATS = 3  # timed calls per candidate (the minimum counts), after one warm-up call each

_policy = os.environ.get("OFT_PATH_POLICY", "flops")
if _policy not in POLICIES:
    raise ValueError(f"OFT_PATH_POLICY must be one of {POLICIES}, got {_policy!r}")
_cache: dict[tuple, str] = {}
_clock = time.perf_counter  # replaced in tests to script the timings


def set_path_policy(policy: str) -> None:
    """``"flops"`` (default): the FLOP rule decides every call; ``"measure"``: time the two ways where the rule
    is unsure (``AMBIGUOUS``) and cache the winner."""
    global _policy
    if policy not in POLICIES:
        raise ValueError(f"path policy must be one of {POLICIES}, got {policy!r}")
    _policy = policy


@contextmanager
def use_path_policy(policy: str) -> Iterator[None]:
    """``set_path_policy(policy)`` for the block, then the policy before it."""
    before = _policy
    set_path_policy(policy)
    try:
        yield
    finally:
        set_path_policy(before)


def get_path_policy() -> str:
    """The current policy (``"measure"`` or ``"flops"``)."""
    return _policy


def path_cache() -> dict[tuple, str]:
    """A copy of the measured choices: (device, dtype, in, out, r, token bucket, backward) -> way."""
    return dict(_cache)


def load_path_cache(choices: dict[tuple, str]) -> None:
    """Adopt measured choices (``path_cache()`` of an earlier process, e.g. saved with a training checkpoint),
    so that a resumed run computes each shape class the same way, and so rounds the same, as before."""
    for key, path in choices.items():
        if path not in ("weight", "input"):
            raise ValueError(f"path cache entry {key!r}: {path!r} is neither 'weight' nor 'input'")
        _cache[tuple(key)] = path


def clear_path_cache() -> None:
    """Forget every measured choice (the next call of each shape class measures again)."""
    _cache.clear()


def extra_work(path: str, out_features: int, tokens: int, backward: bool) -> int:
    """Multiply-adds beyond the frozen layer's GEMMs, in units of in*b (``functional``'s module doc)."""
    if path == "weight":
        return out_features + (tokens if backward else 0)
    return 3 * tokens if backward else tokens


def flop_rule(out_features: int, tokens: int, backward: bool = True) -> str:
    """The way with less extra work: rotate the weight when ``out <= 2N`` in training (``out <= N`` without a
    backward), else rotate the input."""
    weight = extra_work("weight", out_features, tokens, backward)
    return "weight" if weight <= extra_work("input", out_features, tokens, backward) else "input"


def _synchronize(device: torch.device) -> None:
    if device.type != "cpu":
        torch.accelerator.synchronize(device)


def _can_time(x: torch.Tensor) -> bool:
    """False where timing is impossible or meaningless: meta tensors, tracing/compiling, CUDA graph capture."""
    if x.device.type == "meta" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return False
    return not (x.device.type == "cuda" and torch.cuda.is_current_stream_capturing())


def shape_class(
    x: torch.Tensor, dtype: torch.dtype, in_features: int, out_features: int, r: int, backward: bool
) -> tuple:
    """The cache key of one call: device, compute dtype, layer shape, the token count's power of two, and
    whether a backward follows."""
    tokens = x.numel() // in_features
    return (str(x.device), str(dtype), in_features, out_features, r, tokens.bit_length(), backward)


def measure(run: Callable[[str], object], device: torch.device, rule: str) -> str:
    """Time ``run("weight")`` and ``run("input")`` (interleaved, minimum of ``REPEATS``); the clear winner."""
    best = {"weight": float("inf"), "input": float("inf")}
    for path in best:
        run(path)  # warm-up: first-call allocations and kernel selection
    for i in range(REPEATS):
        for path in ("weight", "input") if i % 2 == 0 else ("input", "weight"):
            _synchronize(device)
            t0 = _clock()
            run(path)
            _synchronize(device)
            best[path] = min(best[path], _clock() - t0)
    other = "input" if rule == "weight" else "weight"
    return other if best[other] < (1 - MARGIN) * best[rule] else rule


def choose(
    x: torch.Tensor,
    dtype: torch.dtype,
    in_features: int,
    out_features: int,
    r: int,
    backward: bool,
    run: Callable[[str], object],
) -> str:
    """The way to compute a call on ``x`` (..., in): the FLOP rule, or the cached/measured winner near a tie.

    ``run(path)`` computes the call that way (forward, and backward when ``backward``); used only to measure.
    """
    tokens = x.numel() // in_features
    rule = flop_rule(out_features, tokens, backward)
    lo, hi = sorted(extra_work(p, out_features, max(tokens, 1), backward) for p in ("weight", "input"))
    if _policy == "flops" or hi > AMBIGUOUS * lo or not _can_time(x):
        return rule
    key = shape_class(x, dtype, in_features, out_features, r, backward)
    if key not in _cache:
        _cache[key] = measure(run, x.device, rule)
    return _cache[key]
