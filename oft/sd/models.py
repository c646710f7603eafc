"""An SD base as one object: UNet, VAE, text encoder(s), tokenizer(s) and training noise schedule.

``build_sd`` makes it with random weights from the in-code configs (the tiny presets for tests, ``"sd15"``,
``"sd21"``, ``"sdxl"`` for the real architectures, weight-free with ``device="meta"``); ``oft.sd.loading.load_sd``
fills it from a checkpoint, offline. ``condition`` turns prompts into what the base's UNet is conditioned on and
``training_target`` is what it learns to predict, so trainers and samplers need not know which base it is.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers import AutoencoderKL, DDPMScheduler, UNet2DConditionModel
from torch import nn
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

from oft.sd.conditioning import Conditioning, size_ids
from oft.sd.configs import LATENT_SCALE, MAX_LENGTH, Base, base_of, preset_config, scheduler_config
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
    text_encoder_2: CLIPTextModelWithProjection | None = None  # SDXL's OpenCLIP bigG encoder
    tokenizer_2: CLIPTokenizer | None = None

    @property
    def base(self) -> Base:
        """How this base is trained, prompted and sized (``oft.sd.configs.BASES``)."""
        return base_of(self.preset)

    @property
    def networks(self) -> list[nn.Module]:
        """UNet, VAE and the text encoder(s)."""
        nets = [self.unet, self.vae, self.text_encoder]
        return nets if self.text_encoder_2 is None else [*nets, self.text_encoder_2]

    def same_base(self, recorded: str | None) -> bool:
        """Whether ``recorded`` (a checkpoint's base identity) names these weights: the content fingerprint,
        or, for files written before it, the legacy path+size+mtime form of the same file, untouched."""
        return recorded is not None and recorded in (self.identity, self.legacy_identity)

    def freeze(self) -> SDModels:
        """Freeze the networks (``requires_grad_(False)`` and ``eval()``): OFT trains only what it injects."""
        for net in self.networks:
            net.requires_grad_(False)
            net.eval()
        return self

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> SDModels:
        """Move the networks to ``device`` and/or cast them to ``dtype`` (in place); returns self."""
        for net in self.networks:
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

    def tokenize(self, prompts: list[str], tokenizer: CLIPTokenizer | None = None) -> torch.Tensor:
        """Token ids (B, 77) as SD makes them: truncated, padded (``tokenizer``: the first by default)."""
        return (tokenizer or self.tokenizer)(
            list(prompts), padding="max_length", max_length=MAX_LENGTH, truncation=True, return_tensors="pt"
        ).input_ids

    @torch.no_grad()
    def encode_prompts(self, prompts: list[str]) -> torch.Tensor:
        """The UNet's cross-attention context for ``prompts``: (B, 77, d), the text encoder's last hidden state
        (SDXL: both encoders' penultimate hidden states, concatenated)."""
        return self.condition(prompts).context

    @torch.no_grad()
    def condition(
        self, prompts: list[str], height: int | None = None, width: int | None = None
    ) -> Conditioning:
        """What the UNet is conditioned on for ``prompts``; for SDXL with the size conditioning of an uncropped
        ``height`` x ``width`` image (default: the base's resolution), as its pipeline generates."""
        if self.text_encoder_2 is None:
            ids = self.tokenize(prompts).to(self.text_encoder.device)
            return Conditioning(self.text_encoder(ids).last_hidden_state)
        states = []
        for encoder, tokenizer in (
            (self.text_encoder, self.tokenizer),
            (self.text_encoder_2, self.tokenizer_2),
        ):
            out = encoder(self.tokenize(prompts, tokenizer).to(encoder.device), output_hidden_states=True)
            states.append(out.hidden_states[-2])
        size = (height or self.base.resolution, width or self.base.resolution)
        return Conditioning(
            torch.cat(states, dim=-1),
            out.text_embeds,
            size_ids(len(prompts), size, (0, 0), size).to(out.text_embeds),
        )

    def training_target(self, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """What the UNet learns to output at ``t`` for ``latents`` noised with ``noise``: the noise (epsilon
        bases) or the velocity ``alpha_t noise - sigma_t latents`` (SD2.1, v-prediction)."""
        if self.noise_scheduler.config.prediction_type == "v_prediction":
            return self.noise_scheduler.get_velocity(latents, noise, t)
        return noise

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


def build_networks(preset: str) -> dict[str, nn.Module]:
    """The networks of ``preset`` with freshly initialised weights (on the current default device): ``unet``,
    ``vae``, ``text_encoder`` and, for SDXL, ``text_encoder_2``."""
    cfg = preset_config(preset)
    nets = {
        "unet": UNet2DConditionModel(**cfg["unet"]),
        "vae": AutoencoderKL(**cfg["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
    }
    if "text_encoder_2" in cfg:
        nets["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"]))
    return nets


def assemble(preset: str, nets: dict[str, nn.Module], identity: str) -> SDModels:
    """Wrap networks with the offline tokenizer(s) and the base's training schedule."""
    pads = base_of(preset).pad_tokens
    second = "text_encoder_2" in nets
    return SDModels(
        unet=nets["unet"],
        vae=nets["vae"],
        text_encoder=nets["text_encoder"],
        tokenizer=build_tokenizer(pads[0]),
        noise_scheduler=DDPMScheduler(**scheduler_config(preset)),
        preset=preset,
        identity=identity,
        latent_scale=nets["vae"].config.scaling_factor,
        text_encoder_2=nets.get("text_encoder_2"),
        tokenizer_2=build_tokenizer(pads[1]) if second else None,
    )


def build_sd(preset: str = "tiny", seed: int = 0, device: torch.device | str = "cpu") -> SDModels:
    """SD with random weights from the in-code configs: a tiny preset (tests) or a real architecture.

    ``device="meta"`` allocates no weights (shapes only): enough to inject OFT and count parameters of the real
    bases. The weights are a function of ``seed`` alone, so two builds with the same seed are identical.
    """
    preset_config(preset)  # validate the name before any work
    if str(device) == "meta":
        with torch.device("meta"):
            nets = build_networks(preset)
    else:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            nets = build_networks(preset)
        for net in nets.values():
            net.to(device)
    return assemble(preset, nets, identity=f"{preset}-seed{seed}")
