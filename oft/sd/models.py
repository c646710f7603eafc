"""The SD1.5 backbone as one object: UNet, VAE, CLIP text encoder, tokenizer and training noise schedule.

``build_sd`` makes it with random weights from the in-code configs (``"tiny"`` for tests, ``"sd15"`` for the real
architecture, weight-free with ``device="meta"``); ``oft.sd.loading.load_sd`` fills it from a checkpoint, offline.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from oft.sd.configs import LATENT_SCALE, MAX_LENGTH, SCHEDULER, preset_config
from oft.sd.tokenizer import build_tokenizer


@dataclass
class SDModels:
    """The parts of Stable Diffusion that OFT training and sampling need.

    ``identity`` names the base weights (checkpoints store it and refuse resuming against another base): a
    content fingerprint for loaded files (``oft.sd.identity.identity_of``), ``<preset>-seed<n>`` for random
    builds. Compare a recorded one with ``same_base``, which also accepts ``legacy_identity``, the older
    path+size+mtime form.
    """

    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    noise_scheduler: DDPMScheduler
    preset: str
    identity: str
    latent_scale: float = LATENT_SCALE
    legacy_identity: str | None = None  # what files written before fingerprints recorded for these weights

    def same_base(self, recorded: str | None) -> bool:
        """Whether ``recorded`` (a checkpoint's base identity) names these weights: the content fingerprint,
        or, for files written before it, the legacy path+size+mtime form of the same file, untouched."""
        return recorded is not None and recorded in (self.identity, self.legacy_identity)

    def freeze(self) -> SDModels:
        """Freeze the three networks (``requires_grad_(False)`` and ``eval()``): OFT trains only what it injects."""
        for net in (self.unet, self.vae, self.text_encoder):
            net.requires_grad_(False)
            net.eval()
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SDModels:
        """Move the three networks to ``device`` and/or cast them to ``dtype`` (in place); returns self."""
        for net in (self.unet, self.vae, self.text_encoder):
            # pass only what changes: diffusers warns on every ``to(dtype=...)``, even a no-op one
            kwargs = {"device": device} if device is not None else {}
            if dtype is not None and dtype != net.dtype:
                kwargs["dtype"] = dtype
            if kwargs:
                net.to(**kwargs)
        return self

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        """Token ids (B, 77) as SD1.5 makes them: truncated, padded with ``<|endoftext|>``."""
        return self.tokenizer(
            list(prompts), padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """CLIP's last hidden state for ``prompts``: (B, 77, hidden), the UNet's cross-attention context."""
        ids = self.tokenize(prompts).to(self.text_encoder.device)
        return self.text_encoder(ids).last_hidden_state

    @torch.no_grad()
    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images (B, 3, H, W) in [-1, 1] -> latents (B, 4, H/8, W/8), sampled from the posterior, times the scale."""
        posterior = self.vae.encode(images.to(self.vae.device, self.vae.dtype)).latent_dist
        return posterior.sample(generator=generator) * self.latent_scale

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents (B, 4, h, w) (scaled as ``encode_images`` returns them) -> images (B, 3, 8h, 8w) in [-1, 1]."""
        images = self.vae.decode(latents.to(self.vae.device, self.vae.dtype) / self.latent_scale).sample
        return images.clamp(-1, 1)


def build_networks(preset: str) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """UNet, VAE and text encoder of ``preset`` with freshly initialised weights (on the current default device)."""
    cfg = preset_config(preset)
    unet = UNet2DConditionModel(**cfg["unet"])
    vae = AutoencoderKL(**cfg["vae"])
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    return unet, vae, text_encoder


def assemble(
    preset: str, unet: UNet2DConditionModel, vae: AutoencoderKL, text_encoder: CLIPTextModel, identity: str
) -> SDModels:
    """Wrap networks with the offline tokenizer and SD1.5's training schedule."""
    return SDModels(
        unet=unet,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=build_tokenizer(),
        noise_scheduler=DDPMScheduler(**SCHEDULER),
        preset=preset,
        identity=identity,
    )


def build_sd(preset: str = "tiny", seed: int = 0, device: torch.device | str = "cpu") -> SDModels:
    """SD with random weights from the in-code configs: ``"tiny"`` (tests) or ``"sd15"`` (the real architecture).

    ``device="meta"`` allocates no weights (shapes only): enough to inject OFT and count parameters of SD1.5.
    The weights are a function of ``seed`` alone, so two builds with the same seed are identical.
    """
    preset_config(preset)  # validate the name before any work
    if str(device) == "meta":
        with torch.device("meta"):
            unet, vae, text_encoder = build_networks(preset)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            unet, vae, text_encoder = build_networks(preset)
        for net in (unet, vae, text_encoder):
            net.to(device)
    return assemble(preset, unet, vae, text_encoder, identity=f"{preset}-seed{seed}")
