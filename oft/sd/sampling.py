"""The paper's samplers with classifier-free guidance: DDIM (control evaluation), DPM-Solver (DreamBooth) and
PNDM (SD1.5's own scheduler, which made the reference's DreamBooth class images); Euler, SDXL's own.

Seeds are per item: item i's initial noise (and DDIM's η-noise) comes from ``Generator().manual_seed(seeds[i])``,
so an image depends on its own seed and prompt only, not on how the items were batched, up to floating-point
rounding: another batch size or thread count can change the kernels' summation order and so the last bits.
Bit-identical images need the same batch, device, software and thread count.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from diffusers import DDIMScheduler, DPMSolverMultistepScheduler, EulerDiscreteScheduler, PNDMScheduler
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from torch import Tensor
from tqdm.auto import tqdm

from oft.sd.conditioning import Conditioning
from oft.sd.configs import LATENT_CHANNELS, VAE_DOWNSAMPLE
from oft.sd.models import SDModels
from oft.specs.sampling import CONTROL_EVAL

SAMPLERS = ("ddim", "dpm", "pndm", "euler")


def make_scheduler(sampler: str, training_config: Any) -> SchedulerMixin:
    """A sampling scheduler on the base's training schedule (``models.noise_scheduler.config``, which carries
    its prediction type)."""
    if sampler == "ddim":  # SD's DDIM: leading spacing with offset 1, final alpha from step 0, no clipping
        return DDIMScheduler.from_config(
            training_config,
            set_alpha_to_one=False,
            steps_offset=1,
            clip_sample=False,
            timestep_spacing="leading",
        )
    if sampler == "dpm":  # diffusers' SD default: 2nd-order multistep DPM-Solver++
        return DPMSolverMultistepScheduler.from_config(
            training_config, algorithm_type="dpmsolver++", solver_order=2
        )
    if sampler == "pndm":  # SD1.5's scheduler_config.json: PLMS steps only, leading spacing with offset 1
        return PNDMScheduler.from_config(
            training_config,
            skip_prk_steps=True,
            set_alpha_to_one=False,
            steps_offset=1,
            timestep_spacing="leading",
        )
    if (
        sampler == "euler"
    ):  # SDXL's scheduler_config.json: Euler, leading spacing with offset 1, linear sigmas
        return EulerDiscreteScheduler.from_config(
            training_config,
            steps_offset=1,
            timestep_spacing="leading",
            interpolation_type="linear",
            use_karras_sigmas=False,
        )
    raise ValueError(f"unknown sampler {sampler!r}: choose one of {SAMPLERS}")


def initial_noise(seeds: list[int], shape: tuple[int, int, int], generators: list[torch.Generator]) -> Tensor:
    """(B, *shape) standard normal noise, item i drawn from ``generators[i]`` (seeded with ``seeds[i]``)."""
    for g, s in zip(generators, seeds, strict=True):
        g.manual_seed(int(s))
    return torch.cat([torch.randn((1, *shape), generator=g) for g in generators])


@torch.no_grad()
def sample(
    models: SDModels,
    prompts: list[str],
    *,
    sampler: str = CONTROL_EVAL.sampler,
    steps: int = CONTROL_EVAL.steps,
    guidance: float = CONTROL_EVAL.guidance,
    negative_prompt: str = "",
    seeds: list[int],
    height: int,
    width: int,
    eta: float = CONTROL_EVAL.eta,
    unet_kwargs_fn: Callable[[Tensor, Tensor], dict[str, Any]] | None = None,
    progress: bool = True,
) -> Tensor:
    """Generate images (B, 3, height, width) in [0, 1] for ``prompts`` with classifier-free guidance.

    The sampler settings default to the control evaluation's (``oft.specs.sampling.CONTROL_EVAL``); pass a
    preset's ``kwargs()`` for another job's.

    ``guidance`` w mixes ε = ε_u + w (ε_c − ε_u), with ε_u from ``negative_prompt``; the unconditional and the
    conditional branch run as one batch ``cat([uncond, cond])`` (w = 1 runs the conditional branch alone).
    ``unet_kwargs_fn(latent_input, t)`` may return extra UNet keyword arguments per step; a control signal added
    after ``conv_in`` reaches both branches through ``oft.sd.hooks.add_to_conv_in`` around this call.
    """
    if len(seeds) != len(prompts):
        raise ValueError(f"got {len(prompts)} prompts but {len(seeds)} seeds: give one seed per prompt")
    if height % VAE_DOWNSAMPLE or width % VAE_DOWNSAMPLE:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of {VAE_DOWNSAMPLE}: choose e.g. 512x512"
        )
    if eta and sampler != "ddim":
        raise ValueError(f"eta={eta} applies to DDIM only: use --sampler ddim or eta 0")
    scheduler = make_scheduler(sampler, models.noise_scheduler.config)
    scheduler.set_timesteps(steps)
    cfg = guidance != 1.0
    cond = models.condition(list(prompts), height, width)
    if cfg:
        cond = Conditioning.cat([unconditional(models, negative_prompt, len(prompts), height, width), cond])
    generators = [torch.Generator() for _ in seeds]
    shape = (LATENT_CHANNELS, height // VAE_DOWNSAMPLE, width // VAE_DOWNSAMPLE)
    latents = initial_noise(seeds, shape, generators).to(models.device, models.dtype)
    step_kwargs = {"eta": eta, "generator": generators} if sampler == "ddim" else {}
    latents = denoise(
        models.unet,
        scheduler,
        latents,
        cond.to(models.device, models.dtype),
        guidance,
        unet_kwargs_fn,
        step_kwargs,
        progress,
    )
    return ((models.decode_latents(latents) + 1) / 2).clamp(0, 1).float().cpu()


def unconditional(models: SDModels, negative_prompt: str, n: int, height: int, width: int) -> Conditioning:
    """The classifier-free-guidance branch of ``n`` items: ``negative_prompt`` encoded, except an empty one on
    SDXL, which is all zeros (text context and pooled embedding), as SDXL's pipeline does by default
    (``force_zeros_for_empty_prompt``)."""
    uncond = models.condition([negative_prompt] * n, height, width)
    if models.base.family == "sdxl" and not negative_prompt:
        uncond = Conditioning(
            torch.zeros_like(uncond.context), torch.zeros_like(uncond.pooled), uncond.time_ids
        )
    return uncond


@torch.no_grad()
def denoise(
    unet: torch.nn.Module,
    scheduler: SchedulerMixin,
    noise: Tensor,
    cond: Conditioning,
    guidance: float,
    unet_kwargs_fn: Callable[[Tensor, Tensor], dict[str, Any]] | None = None,
    step_kwargs: dict[str, Any] | None = None,
    progress: bool = False,
) -> Tensor:
    """The sampling loop over ``scheduler.timesteps`` (already set): noise (B, 4, h, w) -> latents (B, 4, h, w).

    ``cond`` holds 2B items ``cat([uncond, cond])`` when ``guidance != 1``, else B.
    """
    cfg = guidance != 1.0
    latents = noise * scheduler.init_noise_sigma
    for t in tqdm(scheduler.timesteps, desc="sampling", disable=not progress, leave=False):
        model_in = scheduler.scale_model_input(torch.cat([latents] * 2) if cfg else latents, t)
        extra = unet_kwargs_fn(model_in, t) if unet_kwargs_fn is not None else {}
        eps = unet(model_in, t, **cond.unet_kwargs(), **extra).sample
        if cfg:
            eps_uncond, eps_cond = eps.chunk(2)
            eps = eps_uncond + guidance * (eps_cond - eps_uncond)
        latents = scheduler.step(eps, t, latents, **(step_kwargs or {})).prev_sample
    return latents
