"""Tiny random DINO / CLIP / LPIPS models of the real classes, and tolerances for the scores they give."""

from __future__ import annotations

import torch

from oft.metrics.subject import SubjectMetrics
from tests.helpers.numerics import approx, network_terms


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


def metric_approx(metrics: SubjectMetrics, expected):
    """``expected`` (a score, or a dict or list of them, all O(1)) up to the float32 rounding of the metric
    networks: the same images may pass through them in other batches, hence other GEMM shapes and roundings."""
    return approx(expected, torch.float32, network_terms(metrics.dino, metrics.clip, metrics.lpips))
