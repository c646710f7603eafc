"""Seed summaries: known answers for the mean, the sample deviation and the paired t-interval."""

import math

import pytest

from oft.metrics.stats import mean_sd, paired_interval


def test_mean_and_sample_sd():
    assert mean_sd([1.0, 2.0, 3.0]) == {"mean": 2.0, "sd": 1.0, "n": 3}
    assert mean_sd([0.5]) == {"mean": 0.5, "sd": None, "n": 1}


def test_paired_interval_is_the_t_interval_of_the_differences():
    # differences 1, 2, 3: mean 2, sd 1, t(0.975; 2 dof) = 4.302652729749464 (tables: 4.3027)
    got = paired_interval([2.0, 4.0, 6.0], [1.0, 2.0, 3.0])
    half = 4.302652729749464 / math.sqrt(3)
    assert got["mean"] == 2.0 and got["n"] == 3
    assert got["lo"] == pytest.approx(2 - half, rel=1e-12) and got["hi"] == pytest.approx(2 + half, rel=1e-12)
    assert paired_interval([1.0], [0.5]) == {"mean": 0.5, "lo": None, "hi": None, "n": 1, "confidence": 0.95}
    with pytest.raises(ValueError, match="equal, non-zero lengths"):
        paired_interval([1.0], [1.0, 2.0])
