"""Subject-fidelity metrics of DreamBooth (paper Table 1): DINO, CLIP-I, CLIP-T and LPIPS.

- DINO: cosine similarity of DINO ViT-S/16 CLS embeddings, mean over all (real, generated) pairs.
- CLIP-I: the same with CLIP ViT-L/14 image embeddings (projected, as ``CLIPModel.get_image_features``).
- CLIP-T: cosine similarity of each generated image's CLIP embedding with its prompt's, mean over images.
- LPIPS (the paper's definition): *diversity* — mean LPIPS distance over all unordered pairs of generated images
  of the same subject and prompt. The reference computed real-vs-generated LPIPS instead; that variant is
  reported too, labelled ``lpips_real_vs_generated``. Network: VGG (the reference's ``lpips.LPIPS(net="vgg")``).
- Real images (Table 1's first row, ``evaluate_real``): the same scores between a subject's own photos, over
  every ordered pair (i, j) with i != j, as the reference's ``SelfPairwiseImageDataset{DINO,CLIP,LPIPS}``
  (``oft-db/eval.py`` at df2b263, lines 188-254: n (n - 1) pairs of n photos).

Each score here is a mean over pairs (or images); ``pair_counts`` / ``real_pair_counts`` say how many, so that a
caller can pool several sets over all their pairs, as the reference did, instead of averaging their means.

The maths is in small functions of embeddings; ``SubjectMetrics`` holds the networks (real weights via
``load_subject_metrics``, or tiny random ones of the same classes in tests).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from oft.sd.tokenizer import build_tokenizer

DINO_MODEL = "facebook/dino-vits16"
CLIP_MODEL = "openai/clip-vit-large-patch14"
LPIPS_NET = "vgg"
REAL_METRICS = ("dino", "clip_i", "lpips")


def cosine_matrix(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(N, D), (M, D) -> (N, M) cosine similarities."""
    return F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).T


def mean_cross_similarity(real: torch.Tensor, generated: torch.Tensor) -> float:
    """Mean cosine similarity over all (real, generated) embedding pairs (DINO, CLIP-I)."""
    return cosine_matrix(real, generated).mean().item()


def mean_self_similarity(embeddings: torch.Tensor) -> float:
    """Mean cosine similarity over all ordered pairs (i, j), i != j, of one set (N, D), N >= 2 (real images)."""
    n = len(embeddings)
    if n < 2:
        raise ValueError(f"self-pairwise similarity needs at least 2 images, got {n}")
    sims = cosine_matrix(embeddings, embeddings)
    return ((sims.sum() - sims.diagonal().sum()) / (n * (n - 1))).item()


def pair_counts(num_real: int, num_generated: int) -> dict[str, int]:
    """How many scores each metric of ``SubjectMetrics.evaluate`` averages, for pooling over runs."""
    cross = num_real * num_generated
    return {
        "dino": cross,
        "clip_i": cross,
        "clip_t": num_generated,
        "lpips": num_generated * (num_generated - 1) // 2,
        "lpips_real_vs_generated": cross,
    }


def real_pair_counts(num_real: int) -> dict[str, int]:
    """How many ordered pairs each metric of ``SubjectMetrics.evaluate_real`` averages (LPIPS is symmetric, so
    its mean over the unordered pairs is the same)."""
    return dict.fromkeys(REAL_METRICS, num_real * (num_real - 1))


def mean_paired_similarity(images: torch.Tensor, texts: torch.Tensor) -> float:
    """Mean cosine similarity of image i with text i (CLIP-T)."""
    return F.cosine_similarity(images.float(), texts.float(), dim=-1).mean().item()


def to_lpips_input(images: list[Image.Image], size: int) -> torch.Tensor:
    """PIL images -> (N, 3, size, size) in [-1, 1], resized as the reference did (bilinear, to a square)."""
    tensors = [
        torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32)).permute(2, 0, 1) for im in images
    ]
    resized = [
        F.interpolate(
            t[None] / 127.5 - 1, size=(size, size), mode="bilinear", align_corners=False, antialias=True
        )
        for t in tensors
    ]
    return torch.cat(resized)


@torch.no_grad()
def lpips_pairs(
    model: torch.nn.Module, a: torch.Tensor, b: torch.Tensor, pairs: list[tuple[int, int]]
) -> torch.Tensor:
    """LPIPS distance of ``a[i]`` and ``b[j]`` for each (i, j) in ``pairs``: (P,)."""
    dev = next(model.parameters()).device
    out = [model(a[i : i + 1].to(dev), b[j : j + 1].to(dev)).flatten() for i, j in pairs]
    return torch.cat(out).float().cpu()


def lpips_diversity(model: torch.nn.Module, generated: torch.Tensor) -> float:
    """The paper's LPIPS: mean distance over all unordered pairs of generated images (needs >= 2)."""
    if len(generated) < 2:
        raise ValueError("LPIPS diversity needs at least 2 generated images of the same subject and prompt")
    return (
        lpips_pairs(model, generated, generated, list(itertools.combinations(range(len(generated)), 2)))
        .mean()
        .item()
    )


def lpips_real_vs_generated(model: torch.nn.Module, real: torch.Tensor, generated: torch.Tensor) -> float:
    """The reference's LPIPS: mean distance over all (real, generated) pairs."""
    return (
        lpips_pairs(model, real, generated, list(itertools.product(range(len(real)), range(len(generated)))))
        .mean()
        .item()
    )


@dataclass
class SubjectMetrics:
    """The three networks and their preprocessing. ``tokenizer`` must be CLIP's (``oft.sd.tokenizer``)."""

    dino: torch.nn.Module  # transformers ViTModel
    dino_processor: object  # ViTImageProcessor
    clip: torch.nn.Module  # transformers CLIPModel
    clip_processor: object  # CLIPImageProcessor
    tokenizer: object
    lpips: torch.nn.Module  # lpips.LPIPS
    lpips_size: int = 512

    @property
    def device(self) -> torch.device:
        return next(self.clip.parameters()).device

    @torch.no_grad()
    def dino_embed(self, images: list[Image.Image]) -> torch.Tensor:
        """DINO CLS embeddings (N, D): ``last_hidden_state[:, 0]``."""
        px = self.dino_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")[
            "pixel_values"
        ]
        return self.dino(pixel_values=px.to(self.device)).last_hidden_state[:, 0].float().cpu()

    @torch.no_grad()
    def clip_image_embed(self, images: list[Image.Image]) -> torch.Tensor:
        """CLIP image embeddings (N, P): the vision tower's pooled output through the visual projection."""
        px = self.clip_processor(images=[im.convert("RGB") for im in images], return_tensors="pt")[
            "pixel_values"
        ]
        pooled = self.clip.vision_model(pixel_values=px.to(self.device)).pooler_output
        return self.clip.visual_projection(pooled).float().cpu()

    @torch.no_grad()
    def clip_text_embed(self, prompts: list[str]) -> torch.Tensor:
        """CLIP text embeddings (N, P): the text tower's pooled (end-token) output through the text projection."""
        tokens = self.tokenizer(
            list(prompts), padding=True, truncation=True, max_length=77, return_tensors="pt"
        )
        out = self.clip.text_model(
            input_ids=tokens.input_ids.to(self.device), attention_mask=tokens.attention_mask.to(self.device)
        )
        return self.clip.text_projection(out.pooler_output).float().cpu()

    def evaluate(
        self, real: list[Image.Image], generated: list[Image.Image], prompt: str
    ) -> dict[str, float]:
        """All metrics of one subject-and-prompt set of generated images against the subject's real photos."""
        lp_real, lp_gen = (to_lpips_input(x, self.lpips_size) for x in (real, generated))
        gen_clip = self.clip_image_embed(generated)
        return {
            "dino": mean_cross_similarity(self.dino_embed(real), self.dino_embed(generated)),
            "clip_i": mean_cross_similarity(self.clip_image_embed(real), gen_clip),
            "clip_t": mean_paired_similarity(gen_clip, self.clip_text_embed([prompt] * len(generated))),
            "lpips": lpips_diversity(self.lpips, lp_gen),
            "lpips_real_vs_generated": lpips_real_vs_generated(self.lpips, lp_real, lp_gen),
        }

    def evaluate_real(self, real: list[Image.Image]) -> dict[str, float]:
        """DINO, CLIP-I and LPIPS among one subject's own photos (>= 2): the "Real images" row of Table 1."""
        return {
            "dino": mean_self_similarity(self.dino_embed(real)),
            "clip_i": mean_self_similarity(self.clip_image_embed(real)),
            "lpips": lpips_diversity(self.lpips, to_lpips_input(real, self.lpips_size)),
        }


def _pretrained(load, name: str, what: str, flag: str):
    try:
        return load(name)
    except (OSError, ValueError) as err:
        raise FileNotFoundError(
            f"{what} not found at {name!r} (local folder or hub cache): download it once with "
            f"`huggingface-cli download {name if '/' in name else '<repo>'}` or pass {flag} PATH ({type(err).__name__})"
        ) from None


def load_subject_metrics(
    dino: str = DINO_MODEL,
    clip: str = CLIP_MODEL,
    lpips_net: str = LPIPS_NET,
    device: str = "cpu",
    lpips_size: int = 512,
) -> SubjectMetrics:
    """The real networks, from local folders or the Hugging Face cache (no download is attempted when
    ``HF_HUB_OFFLINE=1``); a missing one gives one line naming it and how to get it."""
    import lpips  # optional (the eval extra) and slow to import: only when the real networks are loaded
    from transformers import AutoImageProcessor, CLIPModel, ViTModel

    dino_model = _pretrained(
        lambda n: ViTModel.from_pretrained(n, add_pooling_layer=False), dino, "DINO ViT-S/16", "--dino"
    )
    dino_proc = _pretrained(
        AutoImageProcessor.from_pretrained, dino, "DINO ViT-S/16 preprocessing config", "--dino"
    )
    clip_model = _pretrained(CLIPModel.from_pretrained, clip, "CLIP ViT-L/14", "--clip")
    clip_proc = _pretrained(
        AutoImageProcessor.from_pretrained, clip, "CLIP ViT-L/14 preprocessing config", "--clip"
    )
    try:
        lpips_model = lpips.LPIPS(net=lpips_net, verbose=False)
    except Exception as err:  # torchvision fetches the backbone weights at run time
        raise FileNotFoundError(
            f"LPIPS needs torchvision's ImageNet {lpips_net} weights in $TORCH_HOME/hub/checkpoints "
            f"(downloaded on first use; run once online or copy the file there): {err}"
        ) from None
    return SubjectMetrics(
        dino=dino_model.eval().to(device),
        dino_processor=dino_proc,
        clip=clip_model.eval().to(device),
        clip_processor=clip_proc,
        tokenizer=build_tokenizer(),  # CLIP ViT-L/14's BPE, built offline (SPEC §8: the hub tokenizer trap)
        lpips=lpips_model.eval().to(device),
        lpips_size=lpips_size,
    )
