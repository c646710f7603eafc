"""The demo's claim measures and verdicts on known inputs: curve summaries, collapse, the energy tolerance."""

from __future__ import annotations

import pytest
import torch

from oft.demo.claims import (
    INCONCLUSIVE,
    NOT_SUPPORTED,
    SUPPORTED,
    claims,
    collapse_counts,
    collapsed,
    curve_scores,
    energy_tolerance,
    interval_verdict,
)
from oft.metrics.stats import paired_interval
from oft_layers import cayley, hyperspherical_energy


def test_curve_scores_average_the_snapshots_before_the_end_and_measure_the_drop_from_the_best():
    curve = {0: 0.03, 100: 0.10, 200: 0.20, 300: 0.15, 400: 0.12}
    scores = curve_scores(curve, [100, 200, 300])
    assert scores["early_f1"] == pytest.approx((0.10 + 0.20 + 0.15) / 3)
    assert scores["degradation"] == pytest.approx(0.12 - 0.20)
    assert list(scores["curve"]) == ["0", "100", "200", "300", "400"]
    rising = curve_scores({0: 0.03, 50: 0.05, 100: 0.09}, [50])
    assert rising["degradation"] == 0 and rising["early_f1"] == 0.05
    assert (
        curve_scores({0: 0.03, 1: 0.04}, [])["early_f1"] == 0.04
    )  # no snapshot before the end: the final F1


def test_a_collapse_is_a_blown_up_end_of_training_not_noise():
    steady = [(i, 0.02 + 0.01 * (i % 3)) for i in range(100)]  # noisy, never far from its best
    blown = steady[:80] + [(i, 1.0) for i in range(80, 100)]  # the observed failure: 0.013 -> ~1.0
    recovered = steady[:40] + [(i, 1.0) for i in range(40, 60)] + steady[60:]
    assert not collapsed(steady) and collapsed(blown) and not collapsed(recovered)
    assert not collapsed(blown[:9])  # too few points to judge


def test_verdicts_follow_the_interval_of_the_paired_difference():
    assert interval_verdict(paired_interval([0.2, 0.3, 0.25], [0.1, 0.12, 0.11])) == SUPPORTED
    assert interval_verdict(paired_interval([0.1, 0.12, 0.11], [0.2, 0.3, 0.25])) == NOT_SUPPORTED
    assert interval_verdict(paired_interval([0.2, 0.1, 0.3], [0.15, 0.2, 0.2])) == INCONCLUSIVE
    assert interval_verdict(paired_interval([0.9], [0.1])) == INCONCLUSIVE  # one seed: no interval


@pytest.mark.numerics
@pytest.mark.parametrize("b", [8, 32, 64])
def test_the_energy_tolerance_covers_the_rounding_of_a_rotation_and_not_a_real_change(b):
    g = torch.Generator().manual_seed(b)
    w = torch.randn(3 * b, b, generator=g)
    q = torch.randn(b, b, generator=g)
    rot = cayley((q - q.T) * 0.3)
    rotated = (w @ rot.T).float()  # float32 weights, as the demo's layers compute them
    before = hyperspherical_energy(w.double())
    change = float((hyperspherical_energy(rotated.double()) - before).abs() / before)
    assert change <= energy_tolerance(b)
    nudged = w + 0.05 * torch.randn(w.shape, generator=g)  # a small non-orthogonal update (~1e-4 and more)
    assert float((hyperspherical_energy(nudged.double()) - before).abs() / before) > energy_tolerance(b)


def _results(oft_f1, lora_f1, energy_max):
    per = {
        m: {str(s): {"collapsed": m == "lora" and s == 0} for s in range(3)} for m in ("lora", "oft", "coft")
    }
    paired = {
        f"{arm}-lora": {k: paired_interval(oft_f1, lora_f1) for k in ("f1", "early_f1", "degradation", "background_colour")}
        for arm in ("oft", "coft")
    }  # fmt: skip
    energy = {m: {"max": energy_max[m]} for m in ("lora", "oft", "coft")} | {"tolerance": 1e-5}
    methods = {m: {"per_seed": runs} for m, runs in per.items()} | {"base": {"per_seed": {}}}
    return {"paired": paired, "energy_change": energy, "methods": methods}


def test_claims_give_one_row_per_claim_and_arm():
    results = _results([0.2, 0.3, 0.25], [0.1, 0.12, 0.11], {"lora": 6e-3, "oft": 4e-9, "coft": 2e-5})
    rows = claims(results)
    assert {(r["claim"], r["arm"]) for r in rows} == {
        (c, a) for c in ("control", "convergence", "stability", "preservation") for a in ("oft", "coft")
    }
    assert len(rows) == 10  # preservation: prompt colours and energy, per arm
    energy = {r["arm"]: r["verdict"] for r in rows if r["measure"].startswith("hyperspherical")}
    assert energy == {"oft": SUPPORTED, "coft": NOT_SUPPORTED}  # 2e-5 is above the tolerance of 1e-5
    assert all(r["verdict"] == SUPPORTED for r in rows if "interval" in r)
    assert collapse_counts(results) == {"lora": 1, "oft": 0, "coft": 0}
