"""Using a trained DreamBooth-OFT adapter: in a diffusers ``StableDiffusionPipeline``, merged into a standalone
model (a diffusers folder or one single-file checkpoint) that any SD tool opens, or as an adapter other tools
load: a PEFT folder, the per-layer weight differences A1111 and ComfyUI read, or our own file from a PEFT folder.

The reference saved its OFT layers as attention processors that a pipeline could not load back (its issue #9);
here the adapter is a small safetensors file of R blocks plus metadata, and ``oft_layers.load_adapter`` wraps
exactly the layers it names in a plain UNet.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import torch

import oft_layers
from oft.common.files import atomic_folder
from oft.db.layout import EXPORT_FORMATS, MERGED_FORMATS
from oft.sd import load_sd
from oft.sd.loading import save_single_file
from oft.sd.sampling import make_scheduler
from oft.sd.webui import save_webui
from oft.specs.sampling import DREAMBOOTH_VALIDATION

logger = logging.getLogger(__name__)


def load_with_adapter(
    base: str | os.PathLike,
    adapter: str | os.PathLike,
    *,
    merge: bool = True,
    device: str | torch.device = "cpu",
    dtype: torch.dtype = torch.float32,
):
    """The base SD model with the adapter (our file, or a PEFT OFT/BOFT folder) loaded; ``merge=True`` folds every
    rotation into its weight and removes the OFT wrappers (a plain model: sampling costs exactly the base
    model's). Returns ``(SDModels, metadata)``.
    """
    models = load_sd(base).freeze()  # float32 on the CPU: the rotation is folded in full precision
    load = oft_layers.load_peft if oft_layers.is_peft_folder(adapter) else oft_layers.load_adapter
    meta = load(models.unet, adapter)
    trained_on = meta.get("base_model")
    if trained_on and not models.same_base(trained_on):
        logger.warning(
            "adapter was trained on base %s, loading it into %s: other weights than it was trained on",
            trained_on,
            models.identity,
        )
    if merge:
        oft_layers.strip(models.unet, merge=True)
    return models.to(device, dtype), meta


def to_pipeline(models):
    """A diffusers pipeline around ``models`` (no hub access): ``StableDiffusionPipeline``, or for SDXL
    ``StableDiffusionXLPipeline`` (an empty negative prompt as zeros, its default; no watermark), with the
    sampler the reference validated with (``DREAMBOOTH_VALIDATION``: DPM-Solver++); safety checker off, as in
    research use."""
    parts = {
        "vae": models.vae,
        "text_encoder": models.text_encoder,
        "tokenizer": models.tokenizer,
        "unet": models.unet,
        "scheduler": make_scheduler(DREAMBOOTH_VALIDATION.sampler, models.noise_scheduler.config),
    }
    if models.text_encoder_2 is not None:
        from diffusers import StableDiffusionXLPipeline  # diffusers' pipelines load only for an export

        return StableDiffusionXLPipeline(
            **parts,
            text_encoder_2=models.text_encoder_2,
            tokenizer_2=models.tokenizer_2,
            force_zeros_for_empty_prompt=True,
            add_watermarker=False,
        )
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline(
        **parts, safety_checker=None, feature_extractor=None, requires_safety_checker=False
    )


def export(
    base: str | os.PathLike,
    adapter: str | os.PathLike,
    output: str | os.PathLike,
    fmt: str,
    dtype: torch.dtype = torch.float16,
) -> Path:
    """Write base + adapter as ``fmt`` (``EXPORT_FORMATS``): a merged model (``export_merged``), a PEFT folder,
    the web UIs' weight differences (in ``dtype``), or our adapter file. Atomic."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown format {fmt!r}: choose one of {list(EXPORT_FORMATS)}")
    if fmt in MERGED_FORMATS:
        return export_merged(base, adapter, output, fmt)
    models, meta = load_with_adapter(base, adapter, merge=False)
    provenance = {"base_model": meta.get("base_model") or models.identity}
    if fmt == "peft":
        return atomic_folder(output, lambda tmp: oft_layers.save_peft(models.unet, tmp, provenance))
    if fmt == "webui":
        if models.base.family != "sd1":
            raise ValueError(
                f"the web-UI file names SD1.x's layers; this adapter is on {models.preset}: export it with "
                "--format peft or as a merged single file"
            )
        return save_webui(models.unet, output, dtype, provenance)
    return oft_layers.save_adapter(
        models.unet, output, {**provenance, "source": meta.get("source", "adapter")}
    )


def export_merged(
    base: str | os.PathLike, adapter: str | os.PathLike, output: str | os.PathLike, fmt: str
) -> Path:
    """Write base + adapter as one standalone model: ``"diffusers"`` (a folder ``save_pretrained`` writes) or
    ``"single-file"`` (original LDM keys; ``.safetensors`` or ``.ckpt`` by the output's suffix). Atomic."""
    if fmt not in MERGED_FORMATS:
        raise ValueError(f"unknown merged format {fmt!r}: choose one of {MERGED_FORMATS}")
    output = Path(output)
    models, _ = load_with_adapter(base, adapter, merge=True)
    if fmt == "single-file":
        if output.suffix not in (".safetensors", ".ckpt"):
            raise ValueError(f"single-file output must end in .safetensors or .ckpt, got {output.name}")
        return save_single_file(models, output)
    pipeline = to_pipeline(models)
    return atomic_folder(output, lambda tmp: pipeline.save_pretrained(tmp, safe_serialization=True))
