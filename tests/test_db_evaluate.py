"""Averaging of the DreamBooth scores over runs and subjects: pooled over all pairs (the reference's) against the
mean of run means, on hand-made numbers with unequal photo counts; and the "Real images" row."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from oft.db.evaluate import evaluate_real_images, pooled_mean, summarise, to_markdown

METRIC_VALUES = {"clip_t": 0.25, "lpips": 0.5, "lpips_real_vs_generated": 0.75}


def run_row(subject: str, num_real: int, dino: float) -> dict:
    return {
        "subject": subject,
        "prompt_index": 0,
        "prompt": "p",
        "num_real": num_real,
        "num_generated": 4,
        "dino": dino,
        "clip_i": 1 - dino,
        **METRIC_VALUES,
    }


def test_pooled_over_pairs_differs_from_the_mean_of_run_means():
    # subject a: 2 photos x 4 images = 8 pairs per run, two runs at DINO 0.5 and 0.25;
    # subject b: 6 photos x 4 images = 24 pairs, one run at DINO 1.0
    runs = {"a-0": run_row("a", 2, 0.5), "a-1": run_row("a", 2, 0.25), "b-0": run_row("b", 6, 1.0)}
    out = summarise(runs, [], step=1000, num_images=4, clip_t_prompt="plain", real_images=None)
    pooled = (8 * 0.5 + 8 * 0.25 + 24 * 1.0) / (8 + 8 + 24)  # 30 / 40 = 0.75
    assert out["overall"]["dino"] == pytest.approx(0.75) == pytest.approx(pooled)
    assert out["overall_mean_of_runs"]["dino"] == pytest.approx((0.5 + 0.25 + 1.0) / 3)
    assert out["overall"]["clip_i"] == pytest.approx(1 - 0.75)
    # within a subject the runs share the photos: pooled = mean of its runs
    assert out["subjects"]["a"]["dino"] == pytest.approx(0.375) and out["subjects"]["b"]["dino"] == 1.0
    # metrics with equal counts per run pool to their plain mean
    assert {m: out["overall"][m] for m in METRIC_VALUES} == pytest.approx(METRIC_VALUES)
    assert (out["overall"]["runs"], out["overall_mean_of_runs"]["runs"]) == (3, 3)
    md = to_markdown(out)
    assert "| **overall** (pooled over all pairs, the reference's) | 3 | 0.750 |" in md
    assert "| overall (mean of run means) | 3 | 0.583 |" in md
    assert "**real images**" not in md  # not computed


def test_pooled_mean_weights_by_count():
    assert pooled_mean([0.5, 1.0], [1, 3]) == 0.875


class FakeMetrics:
    """A stand-in for ``SubjectMetrics.evaluate_real``: every score is the photo count / 10."""

    def evaluate_real(self, real: list[Image.Image]) -> dict[str, float]:
        return dict.fromkeys(("dino", "clip_i", "lpips"), len(real) / 10)


def test_real_images_row_pools_the_ordered_pairs_of_all_subjects(tmp_path):
    for subject, n in (("a", 2), ("b", 3)):
        (tmp_path / subject).mkdir()
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(tmp_path / subject / f"{i}.jpg")
    row = evaluate_real_images(FakeMetrics(), ["a", "b"], tmp_path)
    assert row["subjects"] == {
        "a": {"photos": 2, "dino": 0.2, "clip_i": 0.2, "lpips": 0.2},
        "b": {"photos": 3, "dino": 0.3, "clip_i": 0.3, "lpips": 0.3},
    }
    # a: 2 * 1 = 2 ordered pairs at 0.2, b: 3 * 2 = 6 at 0.3 -> (0.4 + 1.8) / 8 = 0.275
    assert row["overall"] == pytest.approx(dict.fromkeys(("dino", "clip_i", "lpips"), 0.275))
    assert row["overall_mean_of_subjects"] == pytest.approx(dict.fromkeys(("dino", "clip_i", "lpips"), 0.25))
    out = summarise({}, [], step=1, num_images=4, clip_t_prompt="plain", real_images=row)
    assert "| **real images** (photo vs photo, pooled) | – | 0.275 | 0.275 | – | 0.275 | – |" in to_markdown(
        out
    )
    with pytest.raises(FileNotFoundError, match="no real images of c"):
        evaluate_real_images(FakeMetrics(), ["c"], tmp_path)
