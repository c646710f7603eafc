"""The paper's four claims, measured on the demo's runs, and a verdict for each (README, "Demo").

1. control: OFT/COFT follow the control better than LoRA -- final canny F1;
2. convergence: they learn it faster -- ``early_f1``, the mean F1 of the snapshots before the end (¼, ½, ¾ of
   the steps), i.e. the area under the learning curve;
3. stability: they do not degrade or collapse as training goes on -- ``degradation``, final F1 minus the best
   F1 of the curve (0: never worse than at its best), and ``collapsed`` runs (training loss blown up);
4. preservation: the pretrained model's semantics survive -- every adapted layer's hyperspherical energy is
   unchanged up to float rounding (``energy_tolerance``), and the colours that only the caption decides (the
   background's) are drawn as often as with LoRA.

Each measured claim is compared with LoRA per seed (paired; the seeds share data, hint-encoder initialisation
and noise): "supported" when the 95 % t-interval of the difference lies above 0, "not supported" when it lies
below, "inconclusive" when it contains 0 (or there is one seed).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

ARMS = ("oft", "coft")  # compared with LoRA
COLLAPSE_FACTOR = 3.0  # final training loss this many times above its best: a collapse (observed: 70x)
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"


def curve_scores(curve: Mapping[int, float], before_end: Sequence[int]) -> dict[str, object]:
    """The learning curve (F1 per step, 0 and the last step included) and its two summaries:
    ``early_f1`` (mean F1 at the ``before_end`` steps; the final F1 if there are none) and ``degradation``."""
    final = curve[max(curve)]
    early = [curve[s] for s in before_end] or [final]
    return {
        "curve": {str(s): curve[s] for s in sorted(curve)},
        "early_f1": sum(early) / len(early),
        "degradation": final - max(curve.values()),
    }


def collapsed(losses: Sequence[tuple[int, float]], window: int = 5) -> bool:
    """True when the mean training loss of the last tenth of the logged steps exceeds ``COLLAPSE_FACTOR`` times
    the lowest ``window``-point moving average of the run (a run that stays near its best is not collapsed)."""
    values = [loss for _, loss in losses]
    if len(values) < 2 * window:
        return False
    best = min(sum(values[i : i + window]) / window for i in range(len(values) - window + 1))
    tail = values[-max(window, len(values) // 10) :]
    return sum(tail) / len(tail) > COLLAPSE_FACTOR * best


def energy_tolerance(block: int, dtype: torch.dtype = torch.float32) -> float:
    """The largest relative energy change float rounding explains: each rotated entry is a ``block``-term dot
    product, off by at most ``block`` units of rounding, and the energy's pairwise distances inherit that."""
    return 4 * block * torch.finfo(dtype).eps


def interval_verdict(interval: Mapping[str, float | None]) -> str:
    """``supported`` / ``not supported`` / ``inconclusive`` from a paired difference (arm − LoRA)."""
    if interval["lo"] is None:
        return INCONCLUSIVE
    if interval["lo"] > 0:
        return SUPPORTED
    return NOT_SUPPORTED if interval["hi"] < 0 else INCONCLUSIVE


def collapse_counts(results: Mapping) -> dict[str, int]:
    """Collapsed runs per trained method."""
    return {
        m: sum(bool(run["collapsed"]) for run in r["per_seed"].values())
        for m, r in results["methods"].items()
        if m != "base"
    }


def claims(results: Mapping) -> list[dict[str, object]]:
    """One row per (claim, arm): the measure, the paired difference to LoRA and the verdict."""
    rows = []
    measured = (("control", "f1", "final canny F1"), ("convergence", "early_f1", "mean F1 at ¼, ½, ¾ of the steps"),
                ("stability", "degradation", "final F1 − best F1 on the curve"),
                ("preservation", "background_colour", "caption's background colour drawn"))  # fmt: skip
    energy = results["energy_change"]
    for claim, score, measure in measured:
        for arm in ARMS:
            interval = results["paired"][f"{arm}-lora"][score]
            rows.append({"claim": claim, "arm": arm, "measure": measure, "interval": interval,
                         "verdict": interval_verdict(interval)})  # fmt: skip
    for arm in ARMS:
        kept = energy[arm]["max"] <= energy["tolerance"]
        rows.append({"claim": "preservation", "arm": arm, "measure": "hyperspherical energy unchanged",
                     "value": energy[arm]["max"], "verdict": SUPPORTED if kept else NOT_SUPPORTED})  # fmt: skip
    return rows
