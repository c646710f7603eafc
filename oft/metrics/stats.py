"""Summaries over seeds: mean and standard deviation, and the paired difference of two methods with its
t-interval (the seeds pair the runs: same data, same initial hint encoder, same noise streams)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from scipy import stats


def mean_sd(values: Sequence[float]) -> dict[str, float | None]:
    """Mean and sample standard deviation (None for one value)."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else None
    return {"mean": mean, "sd": sd, "n": n}


def paired_interval(
    a: Sequence[float], b: Sequence[float], confidence: float = 0.95
) -> dict[str, float | None]:
    """The mean of ``a[i] - b[i]`` and its two-sided Student-t ``confidence`` interval (None below 2 pairs)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired samples need equal, non-zero lengths, got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    summary = mean_sd(diffs)
    if summary["sd"] is None:
        return {"mean": summary["mean"], "lo": None, "hi": None, "n": 1, "confidence": confidence}
    half = float(stats.t.ppf((1 + confidence) / 2, len(diffs) - 1)) * summary["sd"] / math.sqrt(len(diffs))
    return {"mean": summary["mean"], "lo": summary["mean"] - half, "hi": summary["mean"] + half,
            "n": len(diffs), "confidence": confidence}  # fmt: skip
