"""A trained control model as a diffusers pipeline: Stable Diffusion's own ``StableDiffusionPipeline`` with the
hint encoder's features added after ``conv_in`` (``oft.sd.add_to_conv_in``, both CFG branches), as
``oft.control.inference.generate`` samples::

    from oft.control.pipeline import OFTControlPipeline
    pipe = OFTControlPipeline.from_control_file("control_final.safetensors")
    images = pipe("a red circle on a blue background", edges, seed=0, num_images_per_prompt=4).images

The scheduler is the control evaluation's DDIM (``oft.specs.sampling.CONTROL_EVAL``: 50 steps, CFG 9, eta 0 by
default). Image n of prompt p is drawn with the seed ``test_oft_parallel.py`` gives sample n of item p
(``oft.control.inference.sample_seed``), from its own ``torch.Generator`` as ``oft.sd.sample`` does, so a
pipeline image equals the sampler's for the same seed up to float rounding.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, ModelMixin, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.image_processor import VaeImageProcessor
from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput
from diffusers.schedulers.scheduling_utils import SchedulerMixin
from transformers import CLIPTextModel, CLIPTokenizer

import oft_layers
from oft.control.checkpoint import ControlModel, load_control
from oft.control.hint import DOWNSAMPLE, HintEncoder
from oft.control.inference import sample_seed
from oft.sd import SDModels, add_to_conv_in
from oft.sd.sampling import make_scheduler
from oft.specs.sampling import CONTROL_EVAL, SamplerPreset

ControlImage = PIL.Image.Image | np.ndarray | torch.Tensor


class HintEncoderModel(ModelMixin, ConfigMixin):
    """``HintEncoder`` as a diffusers model: the pipeline moves, casts and offloads it with the other parts."""

    @register_to_config
    def __init__(self, out_channels: int, widths: tuple[int, ...]) -> None:
        super().__init__()
        self.encoder = HintEncoder(out_channels, tuple(widths))

    @classmethod
    def wrapping(cls, hint: HintEncoder) -> HintEncoderModel:
        """A model around ``hint`` itself (its weights shared, not copied)."""
        model = cls(hint.out_channels, hint.widths)
        model.encoder = hint
        return model.to(hint.zero_conv.weight.device)

    def forward(self, hint: torch.Tensor) -> torch.Tensor:
        return self.encoder(hint)


class OFTControlPipeline(StableDiffusionPipeline):
    """Text + control image -> images: SD1.5 with OFT in its UNet and the hint encoder after ``conv_in``.

    ``__call__(prompt, image, ...)`` takes ``StableDiffusionPipeline``'s arguments plus the control ``image``
    (a PIL image, an (H, W) / (H, W, 3) uint8 or [0, 1] float array, or a (3, H, W) / (B, 3, H, W) tensor in
    [0, 1]; one for every prompt, or one per prompt) and ``seed``. Safety checker off, as in research use.
    """

    sampler: SamplerPreset = CONTROL_EVAL  # steps, guidance and eta when a call does not give them
    meta: dict[str, str]  # the control file's metadata (task, OFT settings, base identity, ...)

    def __init__(
        self,
        vae: AutoencoderKL,
        text_encoder: CLIPTextModel,
        tokenizer: CLIPTokenizer,
        unet: UNet2DConditionModel,
        scheduler: SchedulerMixin,
        hint_encoder: HintEncoderModel,
        safety_checker: None = None,
        feature_extractor: None = None,
        image_encoder: None = None,
        requires_safety_checker: bool = False,
    ) -> None:
        super().__init__(
            vae,
            text_encoder,
            tokenizer,
            unet,
            scheduler,
            safety_checker,
            feature_extractor,
            image_encoder,
            requires_safety_checker,
        )
        self.register_modules(hint_encoder=hint_encoder)
        # ControlNet's control-image processor: RGB, [0, 1] (no [-1, 1] normalisation), sizes a multiple of 8
        self.control_image_processor = VaeImageProcessor(
            vae_scale_factor=DOWNSAMPLE, do_convert_rgb=True, do_normalize=False
        )

    @classmethod
    def from_control_model(
        cls, cm: ControlModel, sampler: SamplerPreset = CONTROL_EVAL
    ) -> OFTControlPipeline:
        """A pipeline around the networks of ``cm`` (shared, not copied) with ``sampler``'s scheduler."""
        sd: SDModels = cm.sd
        if sd.text_encoder_2 is not None:
            raise ValueError(
                "OFTControlPipeline is StableDiffusionPipeline (SD1.5, SD2.1); sample an SDXL control model with "
                "test_oft_parallel.py or oft.control.inference.generate"
            )
        pipe = cls(
            vae=sd.vae,
            text_encoder=sd.text_encoder,
            tokenizer=sd.tokenizer,
            unet=sd.unet,
            scheduler=make_scheduler(sampler.sampler, sd.noise_scheduler.config),
            hint_encoder=HintEncoderModel.wrapping(cm.hint.eval()),
        )
        pipe.sampler, pipe.meta = sampler, dict(cm.meta)
        return pipe

    @classmethod
    def from_control_file(
        cls,
        path: str | os.PathLike,
        base: str | os.PathLike | SDModels | None = None,
        *,
        device: str | torch.device = "cpu",
        sampler: SamplerPreset = CONTROL_EVAL,
    ) -> OFTControlPipeline:
        """Load the control file ``path`` on its base (``load_control``: ``base``, else the recorded one) and
        fold every rotation into its weight, so that sampling costs exactly SD's."""
        cm = load_control(path, base, device=device)
        oft_layers.merge(cm.sd.unet)
        return cls.from_control_model(cm, sampler)

    def control_tensor(
        self,
        image: ControlImage | Sequence[ControlImage],
        height: int | None = None,
        width: int | None = None,
    ) -> torch.Tensor:
        """The control image(s) as (B, 3, H, W) float32 in [0, 1], resized to ``height`` x ``width`` if given."""
        images = list(image) if isinstance(image, list | tuple) else [image]
        images = [
            PIL.Image.fromarray(x) if isinstance(x, np.ndarray) and x.dtype == np.uint8 else x for x in images
        ]
        if all(isinstance(x, np.ndarray) and x.ndim == 2 for x in images):  # float (H, W): grey levels
            images = [np.repeat(x[:, :, None], 3, axis=2) for x in images]
        control = self.control_image_processor.preprocess(images, height, width).float()
        if control.shape[1] != 3:
            raise ValueError(
                f"a control image has 3 channels (RGB), got a tensor of shape {tuple(control.shape)}"
            )
        return control

    def seed_generators(
        self, seed: int | Sequence[int], prompts: int, per_prompt: int
    ) -> list[torch.Generator]:
        """One generator per image: an int ``seed`` gives image n of prompt p ``sample_seed(seed, p, n)``; a
        sequence gives one seed per image, in output order."""
        if isinstance(seed, int):
            seeds = [sample_seed(seed, p, n) for p in range(prompts) for n in range(per_prompt)]
        else:
            seeds = [int(s) for s in seed]
        if len(seeds) != prompts * per_prompt:
            raise ValueError(f"got {len(seeds)} seeds for {prompts * per_prompt} images: give one per image")
        return [torch.Generator().manual_seed(s) for s in seeds]

    def __call__(
        self,
        prompt: str | list[str],
        image: ControlImage | Sequence[ControlImage],
        *,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        eta: float | None = None,
        num_images_per_prompt: int = 1,
        seed: int | Sequence[int] | None = None,
        generator: torch.Generator | list[torch.Generator] | None = None,
        height: int | None = None,
        width: int | None = None,
        **kwargs,
    ) -> StableDiffusionPipelineOutput | tuple:
        """Generate; returns ``StableDiffusionPipelineOutput`` (``.images``: PIL by default, ``output_type="pt"``
        for (B, 3, H, W) in [0, 1]). Steps, guidance and eta default to the pipeline's sampler preset; the size
        to the control image's."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        control = self.control_tensor(image, height, width)
        if control.shape[0] not in (1, len(prompts)):
            raise ValueError(
                f"got {control.shape[0]} control images for {len(prompts)} prompts: give 1 or one each"
            )
        if seed is not None and generator is not None:
            raise ValueError("give either seed or generator, not both")
        if seed is not None:
            generator = self.seed_generators(seed, len(prompts), num_images_per_prompt)
        # one feature map per output image, prompt-major as the pipeline repeats the prompts: (B·n, C0, h, w)
        control = control.expand(len(prompts), -1, -1, -1).repeat_interleave(num_images_per_prompt, dim=0)
        with torch.no_grad():
            features = self.hint_encoder(control.to(self.device, self.hint_encoder.dtype))
        with add_to_conv_in(self.unet, features):
            return super().__call__(
                prompts,
                height=control.shape[-2],
                width=control.shape[-1],
                num_inference_steps=num_inference_steps or self.sampler.steps,
                guidance_scale=self.sampler.guidance if guidance_scale is None else guidance_scale,
                eta=self.sampler.eta if eta is None else eta,
                num_images_per_prompt=num_images_per_prompt,
                generator=generator,
                **kwargs,
            )
