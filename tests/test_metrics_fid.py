"""FID: the Fréchet distance against closed forms, pytorch-fid's image reading, weights loading, eval_fid."""

from __future__ import annotations

import json
import math
from unittest import mock

import numpy as np
import pytest
import torch
import torchvision
from pytorch_fid import inception
from pytorch_fid.fid_score import ImagePathDataset

from oft.cli.control import eval_fid as eval_fid_cli
from oft.metrics.fid import (
    INCEPTION_FILE,
    INCEPTION_URL,
    feature_statistics,
    frechet_distance,
    inception_features,
    load_inception,
)
from tests.helpers.metrics import save
from tests.helpers.numerics import tol


def rotation(theta: float) -> np.ndarray:
    return np.array([[np.cos(theta), -np.sin(theta)], [np.sin(theta), np.cos(theta)]])


def fid_rounding_bound(sigma1: np.ndarray, sigma2: np.ndarray, cond: float = 1.0) -> float:
    """How far rounding alone can move a float64 FID of n-dimensional statistics from its exact value.

    ``sqrtm`` works on P = fl(S1 S2) = S1 S2 + E, ‖E‖ ≤ δ = γ_n ‖S1‖‖S2‖ (n-term dot products; the Schur method
    leaves a residual of the same order). S1 S2 is similar to the symmetric S1^½ S2 S1^½, so each eigenvalue
    μ ≥ 0 moves by at most δ·cond(S1)^½ (Weyl; ``cond`` = 1 for identical or commuting statistics, where the
    product is symmetric), and its square root by at most the square root of that: |√(μ+δ) - √μ| ≤ √δ, reached at
    μ = 0, i.e. for the rank-deficient covariances of fewer samples than dimensions or of equal features, where
    machines differ most (-1.3e-9 instead of 0 on one CPU). FID = Tr S1 + Tr S2 - 2 Σ √μ: |error| ≤ 2 n √δ plus
    the traces' rounding. Far from tight for well-conditioned statistics, but machine-independent, and a real
    bug moves FID by O(Tr S).
    """
    n = len(sigma1)
    delta = tol(
        torch.float64, n, worst_case=True, scale=np.linalg.norm(sigma1, 2) * np.linalg.norm(sigma2, 2)
    )
    traces = tol(torch.float64, n, worst_case=True, scale=np.trace(sigma1) + np.trace(sigma2))
    return 2 * n * math.sqrt(delta["atol"] * math.sqrt(cond)) + traces["atol"]


@pytest.mark.numerics
def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(0)
    mu, sigma = feature_statistics(rng.normal(size=(200, 6)))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=fid_rounding_bound(sigma, sigma))
    # 1-D: (m1 - m2)^2 + (s1 - s2)^2; every intermediate is a small integer, exact in float64 on any machine
    assert frechet_distance(np.array([1.0]), np.array([[4.0]]), np.array([-2.0]), np.array([[1.0]])) == 10.0
    # commuting covariances R diag(4, 9) R^T and R diag(1, 16) R^T: sqrt(S1 S2) = R diag(2, 12) R^T
    r = rotation(0.3)
    s1, s2 = r @ np.diag([4.0, 9.0]) @ r.T, r @ np.diag([1.0, 16.0]) @ r.T
    mu1, mu2 = np.array([1.0, 2.0]), np.array([0.0, 0.0])
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(
        5 + 4 + 9 + 1 + 16 - 2 * (2 + 12), abs=fid_rounding_bound(s1, s2)
    )
    # general SPD pair: Tr(S1 + S2 - 2 (S1^½ S2 S1^½)^½) computed independently with eigh
    a, b = rng.normal(size=(2, 5, 5))
    s1, s2 = a @ a.T + np.eye(5), b @ b.T + np.eye(5)
    w, v = np.linalg.eigh(s1)
    half = v @ np.diag(np.sqrt(w)) @ v.T
    inner = np.linalg.eigvalsh(half @ s2 @ half)
    assert frechet_distance(np.zeros(5), s1, np.zeros(5), s2) == pytest.approx(
        np.trace(s1) + np.trace(s2) - 2 * np.sqrt(inner).sum(),
        abs=fid_rounding_bound(s1, s2, np.linalg.cond(s1)),
    )
    # fewer samples than dimensions: singular covariances, still 0 for identical sets
    mu, sigma = feature_statistics(rng.normal(size=(4, 32)))
    assert frechet_distance(mu, sigma, mu, sigma) == pytest.approx(0, abs=fid_rounding_bound(sigma, sigma))
    with pytest.raises(ValueError, match="at least 2"):
        feature_statistics(np.zeros((1, 3)))


class MeanColour(torch.nn.Module):
    """Stand-in feature extractor with InceptionV3's interface: [(B, 3, 1, 1) mean colour]."""

    def __init__(self) -> None:
        super().__init__()
        self.inputs: list[torch.Tensor] = []

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        self.inputs.append(x)
        return [x.mean(dim=(2, 3), keepdim=True)]


def test_images_are_read_as_pytorch_fid_reads_them(tmp_path):
    rng = np.random.default_rng(0)
    paths = [save(tmp_path / f"{k}.png", rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)) for k in range(3)]
    paths.append(save(tmp_path / "3.png", rng.integers(0, 256, (5, 5), dtype=np.uint8)))  # other size, gray
    model = MeanColour()
    features = inception_features(paths, model, batch_size=2)
    assert features.shape == (4, 3)
    assert [tuple(x.shape) for x in model.inputs] == [(2, 3, 9, 7), (1, 3, 9, 7), (1, 3, 5, 5)]
    expected = torch.stack(
        [ImagePathDataset(paths[:3], torchvision.transforms.ToTensor())[k] for k in range(3)]
    )
    assert torch.equal(torch.cat(model.inputs[:2]), expected)


def random_fid_inception_weights(path) -> dict:
    """A randomly initialised FID Inception state dict, saved where --model can point."""
    torch.manual_seed(0)
    with (
        mock.patch.object(inception, "load_state_dict_from_url", return_value={}),
        mock.patch.object(torchvision.models.Inception3, "load_state_dict"),
    ):
        state = inception.fid_inception_v3().state_dict()
    torch.save(state, path)
    return state


def test_inception_loads_from_a_local_file_or_names_the_download(tmp_path, monkeypatch):
    state = random_fid_inception_weights(tmp_path / INCEPTION_FILE)
    model = load_inception(tmp_path / INCEPTION_FILE)
    assert isinstance(model, inception.InceptionV3) and not model.training
    assert model.output_blocks == [3] and model.resize_input and model.normalize_input
    assert torch.equal(model.blocks[3][2].branch_pool.conv.weight, state["Mixed_7c.branch_pool.conv.weight"])
    assert torch.equal(model.blocks[0][0].conv.weight, state["Conv2d_1a_3x3.conv.weight"])

    (tmp_path / "bad.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="is not pytorch-fid's"):
        load_inception(tmp_path / "bad.pth")
    torch.save({"conv.weight": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="is not pytorch-fid's"):
        load_inception(tmp_path / "other.pth")

    monkeypatch.setenv("OFT_MODELS_ROOT", str(tmp_path / "models"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match=f"{INCEPTION_FILE} not found.*download {INCEPTION_URL}"):
        load_inception()


@pytest.mark.numerics
def test_eval_fid_script_with_a_known_feature_extractor(tmp_path, monkeypatch, capsys):
    # features = mean colour / 255: targets grey levels 0, 51, 102; sample 0 the same; sample 1 shifted by 51
    levels = (0, 51, 102)
    for i, level in enumerate(levels):
        save(tmp_path / "source" / f"image_{i}.png", np.full((4, 4, 3), level, np.uint8))
        save(tmp_path / "results" / f"result_{i}_0.png", np.full((4, 4, 3), level, np.uint8))
        save(tmp_path / "results" / f"result_{i}_1.png", np.full((4, 4, 3), level + 51, np.uint8))
    script = eval_fid_cli
    monkeypatch.setattr(script, "load_inception", lambda path, device: MeanColour())
    report = script.main(script.parse_args([str(tmp_path)]))
    # equal features in all 3 dimensions: a rank-1 covariance, the worst case of fid_rounding_bound
    sigma = feature_statistics(np.array([[level / 255] * 3 for level in levels]))[1]
    zero = pytest.approx(0, abs=fid_rounding_bound(sigma, sigma))
    assert report["fid"] == zero and (report["generated"], report["real"]) == (3, 3)
    assert json.loads((tmp_path / "eval_fid.json").read_text())["fid"] == zero
    assert "FID" in capsys.readouterr().out
    # a pure shift of the mean by 0.2 in all 3 features: FID = Σ Δ² = 3 * 0.2^2, up to FID's rounding and the
    # float32 features (means of 16 pixels ≤ 0.6, each within γ_16·0.6 of level/255, so each Δ within twice that)
    feature_error = tol(torch.float32, 16, worst_case=True, scale=0.6)["atol"]
    shifted = script.main(script.parse_args([str(tmp_path), "--sample-index", "1"]))
    assert shifted["fid"] == pytest.approx(
        3 * 0.2**2, abs=2 * 3 * 0.2 * 2 * feature_error + fid_rounding_bound(sigma, sigma)
    )
    # every sample against a real folder
    every = script.main(
        script.parse_args([str(tmp_path), "--all-samples", "--real", str(tmp_path / "source")])
    )
    assert every["generated"] == 6 and every["fid"] > 0
