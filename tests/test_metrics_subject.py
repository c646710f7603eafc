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
    to_lpips_input,
)


def tiny_metrics(seed: int = 0) -> SubjectMetrics:
    """ViTModel / CLIPModel / LPIPS of the real classes, tiny and random (LPIPS keeps its shipped linear layers)."""
    import lpips
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, ViTConfig, ViTImageProcessor, ViTModel

    from oft.sd.tokenizer import build_tokenizer

    torch.manual_seed(seed)
    small = {"hidden_size": 32, "intermediate_size": 37, "num_hidden_layers": 1, "num_attention_heads": 4}
    dino = ViTModel(ViTConfig(image_size=32, patch_size=8, **small), add_pooling_layer=False).eval()
    clip = CLIPModel(
        CLIPConfig(
            text_config={"vocab_size": 49408, "max_position_embeddings": 77, **small},
            vision_config={"image_size": 32, "patch_size": 8, **small},
            projection_dim=16,
        )
    ).eval()
    return SubjectMetrics(
        dino=dino,
        dino_processor=ViTImageProcessor(size={"height": 32, "width": 32}),
        clip=clip,
        clip_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
        tokenizer=build_tokenizer(),
        lpips=lpips.LPIPS(net="alex", pnet_rand=True, verbose=False).eval(),
        lpips_size=64,
    )


@pytest.fixture(scope="module")
def metrics() -> SubjectMetrics:
    return tiny_metrics()


def photo(seed: int, size=(48, 40)) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)  # a coarse random pattern, upsampled: image-like
    return Image.fromarray(base).resize(size, Image.BILINEAR)


def test_similarities_on_hand_made_embeddings():
    e = torch.eye(3)
    assert torch.allclose(cosine_matrix(e, 2 * e), e)
    assert mean_cross_similarity(e[:2], e[:2]) == pytest.approx(0.5)  # [[1, 0], [0, 1]]
    a = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    b = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    assert mean_cross_similarity(a, b) == pytest.approx((1 + 0 + 2**-0.5 + 2**-0.5) / 4)
    assert mean_paired_similarity(a, b) == pytest.approx((1 + 2**-0.5) / 2)


def test_dino_is_cls_cosine(metrics):
    imgs = [photo(1), photo(2), photo(3)]
    emb = metrics.dino_embed(imgs)
    px = metrics.dino_processor(images=imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        cls = metrics.dino(pixel_values=px).last_hidden_state[:, 0]
    assert torch.allclose(emb, cls, atol=1e-6)
    assert mean_cross_similarity(emb[:1], emb[:1]) == pytest.approx(1.0, abs=1e-6)  # an image with itself
    sims = cosine_matrix(emb[:1], emb[1:])
    assert (
        mean_cross_similarity(emb[:1], emb[1:]) == pytest.approx(sims.mean().item())
        and (sims < 1 - 1e-4).all()
    )


def test_clip_scores_agree_with_clipmodel_forward(metrics):
    imgs = [photo(4), photo(5)]
    prompts = ["a cat wearing a red hat", "a cube shaped cat"]
    img, txt = metrics.clip_image_embed(imgs), metrics.clip_text_embed(prompts)
    tokens = metrics.tokenizer(prompts, padding=True, return_tensors="pt")
    px = metrics.clip_processor(images=imgs, return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        out = metrics.clip(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, pixel_values=px)
    cos = out.logits_per_image / metrics.clip.logit_scale.exp()  # CLIP's own image-text cosine matrix
    assert mean_paired_similarity(img, txt) == pytest.approx(cos.diagonal().mean().item(), abs=1e-5)
    assert torch.allclose(torch.nn.functional.normalize(img, dim=-1), out.image_embeds, atol=1e-5)
    assert mean_cross_similarity(img, img) == pytest.approx(
        cosine_matrix(out.image_embeds, out.image_embeds).mean().item(), abs=1e-5
    )


def test_lpips_diversity_is_mean_over_generated_pairs(metrics):
    gen = to_lpips_input([photo(6), photo(7), photo(8)], 64)
    real = to_lpips_input([photo(9), photo(10, size=(70, 50))], 64)
    assert gen.shape == (3, 3, 64, 64) and gen.min() >= -1 and gen.max() <= 1
    with torch.no_grad():
        pair = lambda x, y: metrics.lpips(x[None], y[None]).item()  # noqa: E731
        explicit = np.mean([pair(gen[i], gen[j]) for i, j in itertools.combinations(range(3), 2)])
        cross = np.mean([pair(r, g) for r in real for g in gen])
    assert lpips_diversity(metrics.lpips, gen) == pytest.approx(explicit, rel=1e-5)
    assert lpips_real_vs_generated(metrics.lpips, real, gen) == pytest.approx(cross, rel=1e-5)
    same = gen[:1].repeat(3, 1, 1, 1)
    assert lpips_diversity(metrics.lpips, same) == pytest.approx(
        0.0, abs=1e-6
    )  # identical images: no diversity
    with pytest.raises(ValueError, match="at least 2"):
        lpips_diversity(metrics.lpips, gen[:1])


def test_evaluate_reports_every_metric(metrics):
    real, gen = [photo(11), photo(12)], [photo(13), photo(14)]
    result = metrics.evaluate(real, gen, "a dog in the snow")
    assert set(result) == {"dino", "clip_i", "clip_t", "lpips", "lpips_real_vs_generated"}
    assert all(-1 <= result[k] <= 1 for k in ("dino", "clip_i", "clip_t"))
    assert result["lpips"] > 0 and result["lpips_real_vs_generated"] > 0
    assert metrics.evaluate(real, real, "x")["dino"] == pytest.approx(
        mean_cross_similarity(*[metrics.dino_embed(real)] * 2)
    )


def test_missing_model_gives_one_clear_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(FileNotFoundError, match=r"DINO ViT-S/16 not found at .*nowhere.*--dino"):
        load_subject_metrics(dino=str(tmp_path / "nowhere"))
