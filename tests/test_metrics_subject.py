"""DINO / CLIP-I / CLIP-T / LPIPS with tiny randomly initialised networks of the real classes: the maths, checked
against hand-made embeddings and against the networks' own forward passes."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
from PIL import Image

from oft.metrics.subject import (
    SubjectMetrics,
    cosine_matrix,
    load_subject_metrics,
    lpips_diversity,
    lpips_real_vs_generated,
    mean_cross_similarity,
    mean_paired_similarity,
    mean_self_similarity,
    pair_counts,
    real_pair_counts,
    to_lpips_input,
)
from tests.helpers.numerics import EFFECT, approx, network_terms, tol
from tests.helpers.subject import metric_approx, tiny_metrics


@pytest.fixture(scope="module")
def metrics() -> SubjectMetrics:
    return tiny_metrics()


def photo(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)  # a coarse random pattern, upsampled: image-like
    return Image.fromarray(base).resize(size, Image.BILINEAR)


@pytest.mark.numerics
def test_similarities_on_hand_made_embeddings():
    e = torch.eye(3)
    assert torch.equal(cosine_matrix(e, 2 * e), e)  # norms 1 and 2, products of 0s and 1s: exact in float32
    assert mean_cross_similarity(e[:2], e[:2]) == 0.5  # [[1, 0], [0, 1]]
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    n = 2 + 2 + 4  # float32: 2-term norms and dot products, then a mean of up to 4 cosines
    assert mean_cross_similarity(a, b) == approx(
        (1 + 0 + 2**-0.5 + 2**-0.5) / 4, torch.float32, n, worst_case=True
    )
    assert mean_paired_similarity(a, b) == approx((1 + 2**-0.5) / 2, torch.float32, n, worst_case=True)


@pytest.mark.numerics
def test_self_similarity_is_the_mean_over_ordered_pairs_without_the_diagonal():
    # cosines: (0, 1) = 1, (0, 2) = (1, 2) = 0; ordered pairs i != j: 6, of which 2 score 1
    e = torch.tensor([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0]])
    assert mean_self_similarity(e) == approx(2 / 6, torch.float32, 2 + 2 + 9, worst_case=True)
    # with the diagonal it would be 5/9; the reference's n (n - 1) pairs of n photos
    assert real_pair_counts(3) == {"dino": 6, "clip_i": 6, "lpips": 6}
    with pytest.raises(ValueError, match="at least 2"):
        mean_self_similarity(e[:1])
    assert pair_counts(5, 4) == {
        "dino": 20, "clip_i": 20, "clip_t": 4, "lpips": 6, "lpips_real_vs_generated": 20
    }  # fmt: skip


@pytest.mark.numerics
def test_evaluate_real_scores_the_photos_against_each_other(metrics):
    real = [photo(15), photo(16), photo(17, size=(60, 44))]
    result = metrics.evaluate_real(real)
    assert set(result) == {"dino", "clip_i", "lpips"}
    expected = {
        "dino": mean_self_similarity(metrics.dino_embed(real)),
        "clip_i": mean_self_similarity(metrics.clip_image_embed(real)),
        "lpips": lpips_diversity(metrics.lpips, to_lpips_input(real, metrics.lpips_size)),
    }
    assert result == metric_approx(metrics, expected)


@pytest.mark.numerics
def test_dino_is_cls_cosine(metrics):
    imgs = [photo(1), photo(2), photo(3)]
    emb = metrics.dino_embed(imgs)
    px = metrics.dino_processor(images=imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = metrics.dino(pixel_values=px).last_hidden_state[:, 0]
    torch.testing.assert_close(
        emb, cls, **tol(torch.float32, network_terms(metrics.dino), scale=cls.abs().max())
    )
    hidden = emb.shape[1]  # a cosine: norms and a dot product of `hidden` terms
    itself = tol(torch.float32, 2 * hidden, worst_case=True)
    # an image with itself
    assert mean_cross_similarity(emb[:1], emb[:1]) == pytest.approx(1.0, abs=itself["atol"])
    sims = cosine_matrix(emb[:1], emb[1:])
    assert mean_cross_similarity(emb[:1], emb[1:]) == approx(
        sims.mean().item(), torch.float32, 2, worst_case=True
    )
    assert (sims < 1 - EFFECT * itself["atol"]).all()  # other images: clearly not 1


@pytest.mark.numerics
def test_clip_scores_agree_with_clipmodel_forward(metrics):
    imgs = [photo(4), photo(5)]
    prompts = ["a cat wearing a red hat", "a cube shaped cat"]
    img, txt = metrics.clip_image_embed(imgs), metrics.clip_text_embed(prompts)
    tokens = metrics.tokenizer(prompts, padding=True, return_tensors="pt")
    px = metrics.clip_processor(images=imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = metrics.clip(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=px)
    cos = out.logits_per_image / metrics.clip.logit_scale.exp()  # CLIP's own image-text cosine matrix
    # our embeddings and CLIPModel's forward: the same towers, other batches and paddings; cosines are O(1)
    clip = tol(torch.float32, network_terms(metrics.clip))
    assert mean_paired_similarity(img, txt) == pytest.approx(cos.diagonal().mean().item(), abs=clip["atol"])
    torch.testing.assert_close(torch.nn.functional.normalize(img, dim=-1), out.image_embeds, **clip)
    assert mean_cross_similarity(img, img) == pytest.approx(
        cosine_matrix(out.image_embeds, out.image_embeds).mean().item(), abs=clip["atol"]
    )


@pytest.mark.numerics
def test_lpips_diversity_is_mean_over_generated_pairs(metrics):
    gen = to_lpips_input([photo(6), photo(7), photo(8)], 64)
    real = to_lpips_input([photo(9), photo(10, size=(70, 50))], 64)
    assert gen.shape == (3, 3, 64, 64) and gen.min() >= -1 and gen.max() <= 1
    with torch.no_grad():
        pair = lambda x, y: metrics.lpips(x[None], y[None]).item()  # noqa: E731
        explicit = np.mean([pair(gen[i], gen[j]) for i, j in itertools.combinations(range(3), 2)])
        cross = np.mean([pair(r, g) for r in real for g in gen])
    # batched against one pair at a time: other GEMM shapes, so LPIPS's own rounding
    lpips = tol(torch.float32, network_terms(metrics.lpips))
    assert lpips_diversity(metrics.lpips, gen) == pytest.approx(explicit, rel=lpips["rtol"])
    assert lpips_real_vs_generated(metrics.lpips, real, gen) == pytest.approx(cross, rel=lpips["rtol"])
    same = gen[:1].repeat(3, 1, 1, 1)
    # identical images: no diversity (LPIPS is quadratic in feature differences, so rounding-level feature
    # differences would leave far less than this first-order bound)
    assert lpips_diversity(metrics.lpips, same) == pytest.approx(0.0, abs=lpips["atol"])
    with pytest.raises(ValueError, match="at least 2"):
        lpips_diversity(metrics.lpips, gen[:1])


@pytest.mark.numerics
def test_evaluate_reports_every_metric(metrics):
    real, gen = [photo(11), photo(12)], [photo(13), photo(14)]
    result = metrics.evaluate(real, gen, "a dog in the snow")
    assert set(result) == {"dino", "clip_i", "clip_t", "lpips", "lpips_real_vs_generated"}
    assert all(-1 <= result[k] <= 1 for k in ("dino", "clip_i", "clip_t"))
    assert result["lpips"] > 0 and result["lpips_real_vs_generated"] > 0
    assert metrics.evaluate(real, real, "x")["dino"] == metric_approx(
        metrics, mean_cross_similarity(*[metrics.dino_embed(real)] * 2)
    )


def test_missing_model_gives_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"DINO ViT-S/16 not found at .*nowhere.*--dino"):
        load_subject_metrics(dino=str(tmp_path / "nowhere"))
