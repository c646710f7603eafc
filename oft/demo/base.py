"""Pretraining the tiny SD-shaped base of the demo on the synthetic task (text-to-image, no control).

SD1.5 came with a trained VAE, text encoder and UNet; the tiny preset (``oft.sd.build_sd("tiny")``) has random
ones. This module gives it what the demo needs, in SD's own order:

1. the VAE is trained as an autoencoder (MSE + a small KL term) on synthetic images, then its latent scale is
   calibrated: SD multiplies latents by 0.18215 because that made them unit-variance; we keep that constant and
   rescale the VAE's ``quant_conv``/``post_quant_conv`` instead (an exact reparameterisation of the same model),
   so ``SDModels`` and every SD code path work unchanged;
2. the UNet learns ε-prediction on the frozen latents with 10% empty captions (SD's classifier-free-guidance
   dropout), so sampling with guidance works as on SD;
3. the CLIP text encoder, which SD inherited pretrained, is trained jointly with the UNet (``train_text_encoder``):
   its seeded random features do differ per colour word, but only slightly (distance about 1.5 between tokens of
   norm 5.7), and a frozen random encoder left the base choosing the wrong background colour most of the time.

Every image is ``oft.specs.synthetic.make_item(index, seed, size)``; pretraining draws from its own seed stream
(``PRETRAIN_SEED``), disjoint from the control task's train/val streams.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from diffusers import AutoencoderKL
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

from oft.common.files import atomic_write, atomic_write_bytes, atomic_write_json
from oft.metrics.prompt import unmasked_adherence
from oft.sd import SDModels, build_sd, load_sd, sample
from oft.sd.loading import save_single_file
from oft.specs import synthetic
from oft.specs.sampling import DEMO

PRETRAIN_SEED = 1000  # synthetic seed stream of pretraining (the control task uses 2*seed and 2*seed + 1)
INITIAL_LOGVAR = -10.0  # posterior log-variance the VAE starts from (see ``train_vae``)
VAL_SEED = 1  # the control task's validation stream (``SyntheticDataset("val", seed=0)``)


@dataclass(frozen=True)
class PretrainConfig:
    """Pretraining settings; the defaults made the committed ``oft/demo/tiny_base`` weights."""

    seed: int = 0
    size: int = 64
    vae_steps: int = 2500
    vae_batch: int = 8
    vae_lr: float = 2e-3
    kl_weight: float = 1e-6
    unet_steps: int = 4000
    unet_batch: int = 16
    unet_lr: float = 1.5e-3
    train_text_encoder: bool = True
    caption_dropout: float = 0.1


def batches(seed: int, size: int, batch: int, start: int = 0) -> Iterator[tuple[torch.Tensor, list[str]]]:
    """Endless (images (B, 3, size, size) in [-1, 1], captions) of synthetic items start, start+1, ..."""
    index = start
    while True:
        items = [synthetic.make_item(index + k, seed, size) for k in range(batch)]
        index += batch
        images = np.stack([it[0] for it in items])  # (B, H, W, 3) uint8
        yield torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0, [it[1] for it in items]


def _loop(
    steps: int, step_fn: Callable[[int], float], desc: str, log: Callable[[int, float], None] | None
) -> list[float]:
    losses = []
    bar = tqdm(range(steps), desc=desc, mininterval=10)
    for step in bar:
        loss = step_fn(step)
        losses.append(loss)
        if log is not None:
            log(step, loss)
        if step % 20 == 0:
            bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    return losses


def train_vae(
    vae: AutoencoderKL, cfg: PretrainConfig, log: Callable[[int, float], None] | None = None
) -> list[float]:
    """Train ``vae`` as an autoencoder on synthetic images: MSE of the reconstruction + ``kl_weight`` × KL."""
    vae.train().requires_grad_(True)
    with torch.no_grad():
        # start nearly deterministic (posterior std e^-5): with the usual std 1 the decoder first sees mostly noise,
        # and a tiny KL weight takes hundreds of steps to shrink it; SD's latents have a small posterior std too
        vae.quant_conv.bias[vae.config.latent_channels :] = INITIAL_LOGVAR
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.vae_lr, weight_decay=0.0)
    data = batches(PRETRAIN_SEED + cfg.seed, cfg.size, cfg.vae_batch)
    gen = torch.Generator().manual_seed(cfg.seed)

    def step(i: int) -> float:
        images, _ = next(data)
        for group in opt.param_groups:  # cosine decay to 10% of the learning rate
            group["lr"] = cfg.vae_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / cfg.vae_steps)))
        posterior = vae.encode(images).latent_dist
        recon = vae.decode(posterior.sample(generator=gen)).sample
        loss = F.mse_loss(recon, images) + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    losses = _loop(cfg.vae_steps, step, "pretrain VAE", log)
    vae.eval().requires_grad_(False)
    return losses


@torch.no_grad()
def calibrate_latent_scale(vae: AutoencoderKL, images: torch.Tensor, scale: float) -> float:
    """Rescale ``vae`` so that ``scale`` × its posterior means of ``images`` have unit standard deviation.

    ``quant_conv`` outputs (mean, logvar) per latent channel: mean × c and logvar + 2 log c scale every posterior
    sample by exactly c; ``post_quant_conv``'s weight ÷ c undoes it before decoding, so the autoencoder itself is
    unchanged. Returns c.
    """
    mean = vae.encode(images).latent_dist.mean
    c = 1.0 / (scale * float(mean.std()))
    channels = vae.config.latent_channels
    vae.quant_conv.weight[:channels] *= c
    vae.quant_conv.bias[:channels] *= c
    vae.quant_conv.bias[channels:] += 2 * math.log(c)
    vae.post_quant_conv.weight /= c
    return c


def train_unet(
    sd: SDModels, cfg: PretrainConfig, log: Callable[[int, float], None] | None = None
) -> list[float]:
    """Text-to-image ε-prediction on synthetic images through the frozen VAE (SD's recipe); the text encoder
    learns along with the UNet when ``cfg.train_text_encoder``, else it stays frozen."""
    unet = sd.unet.train().requires_grad_(True)
    text_encoder = sd.text_encoder.train(cfg.train_text_encoder).requires_grad_(cfg.train_text_encoder)
    params = [p for net in (unet, text_encoder) for p in net.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.unet_lr, weight_decay=0.01)
    data = batches(PRETRAIN_SEED + cfg.seed, cfg.size, cfg.unet_batch, start=10_000_000)
    gen = torch.Generator().manual_seed(cfg.seed + 1)
    steps_total = sd.noise_scheduler.config.num_train_timesteps

    def step(i: int) -> float:
        images, captions = next(data)
        for group in opt.param_groups:
            group["lr"] = (
                cfg.unet_lr
                * min(1.0, (i + 1) / 100)
                * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * i / cfg.unet_steps)))
            )
        drop = torch.rand(len(captions), generator=gen) < cfg.caption_dropout
        captions = ["" if d else c for c, d in zip(captions, drop.tolist())]
        latents = sd.encode_images(images, generator=gen)
        context = text_encoder(sd.tokenize(captions)).last_hidden_state
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, steps_total, (latents.shape[0],), generator=gen)
        pred = unet(sd.noise_scheduler.add_noise(latents, noise, t), t, encoder_hidden_states=context).sample
        loss = F.mse_loss(pred, noise)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return loss.item()

    losses = _loop(cfg.unet_steps, step, "pretrain UNet", log)
    for net in (unet, text_encoder):
        net.eval().requires_grad_(False)
    return losses


def validation_images(cfg: PretrainConfig, count: int) -> torch.Tensor:
    """(count, 3, size, size) synthetic images in [-1, 1] from a part of the pretraining stream never trained on."""
    images, _ = next(batches(PRETRAIN_SEED + cfg.seed, cfg.size, count, start=20_000_000))
    return images


@torch.no_grad()
def reconstruction_mse(vae: AutoencoderKL, images: torch.Tensor) -> float:
    """Mean squared error (images in [-1, 1]) of decoding the posterior means of ``images``."""
    return float(F.mse_loss(vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1), images))


@torch.no_grad()
def generate_for_items(
    sd: SDModels,
    indices: list[int],
    seed: int,
    size: int,
    steps: int = DEMO.steps,
    guidance: float = DEMO.guidance,
) -> tuple[list[np.ndarray], list[dict[str, str]]]:
    """Sample one image (H, W, 3) uint8 per synthetic item's caption (uncontrolled), with the items' truths."""
    truths, images = [], []
    for i in tqdm(indices, desc="sampling the base", disable=None, leave=False):
        _, caption, _, truth = synthetic.make_item(i, seed, size)
        image = sample(
            sd, [caption], seeds=[i], height=size, width=size, steps=steps, guidance=guidance, progress=False
        )
        images.append((image[0].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8))
        truths.append(truth)
    return images, truths


def _save_state(module: torch.nn.Module, path: Path) -> None:
    state = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(state, str(tmp)))


def _write_losses(path: Path, losses: list[float]) -> None:
    atomic_write_bytes(path, "".join(f"{x:.6f}\n" for x in losses).encode())


def evaluate_base(sd: SDModels, cfg: PretrainConfig, items: int, steps: int, guidance: float) -> dict:
    """How well the base follows its prompts: colour accuracy (``unmasked_adherence``) of one sample per caption
    of ``items`` control-task validation items, plus the VAE's reconstruction error on unseen images."""
    images, truths = generate_for_items(sd, list(range(items)), VAL_SEED, cfg.size, steps, guidance)
    return {
        "colour_accuracy": unmasked_adherence(images, truths),
        "vae_reconstruction_mse": reconstruction_mse(sd.vae, validation_images(cfg, 64)),
        "sampling": {"sampler": "ddim", "steps": steps, "guidance": guidance, "items": items},
    }


def pretrain(cfg: PretrainConfig, out: Path, work: Path, eval_items: int = 64) -> dict:
    """Pretrain the tiny base and write it to ``out`` as an LDM single-file checkpoint (what ``load_sd`` reads).

    Stages reuse their outputs under ``work``: the VAE (``vae.safetensors``), then the UNet (written only as part
    of ``out``). Writes ``<out stem>.json`` beside ``out``: the config, losses' last values and the base's prompt
    adherence measured on the reloaded file. Returns that report.
    """
    sd = build_sd("tiny", seed=cfg.seed)
    vae_file = work / "vae.safetensors"
    if vae_file.is_file():
        sd.vae.load_state_dict(load_file(str(vae_file)))
    else:
        vae_losses = train_vae(sd.vae, cfg)
        calibrate_latent_scale(sd.vae, validation_images(cfg, 256), sd.latent_scale)
        _write_losses(work / "vae_losses.txt", vae_losses)
        _save_state(sd.vae, vae_file)
    sd.freeze()
    if not out.is_file():
        unet_losses = train_unet(sd, cfg)
        _write_losses(work / "unet_losses.txt", unet_losses)
        save_single_file(sd, out)
    base = load_sd(out).freeze()
    report = {"config": asdict(cfg), "file": str(out), **evaluate_base(base, cfg, eval_items, 20, 5.0)}
    with torch.no_grad():
        latents = base.encode_images(validation_images(cfg, 256), generator=torch.Generator().manual_seed(0))
    report["scaled_latent_std"] = float(latents.std())
    for name in ("vae_losses", "unet_losses"):
        f = work / f"{name}.txt"
        if f.is_file():
            values = [float(x) for x in f.read_text().split()]
            report[f"{name}_last100_mean"] = float(np.mean(values[-100:]))
    atomic_write_json(out.with_suffix(".json"), report)
    return report
