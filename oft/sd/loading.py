"""Loading and saving the SD weights: ``load_sd`` reads a single-file checkpoint (LDM keys) or a diffusers folder
into ``SDModels``, strictly and offline; ``save_single_file`` writes ``SDModels`` as one LDM-layout file.

A single file's keys are compared with the exact key set of the architecture (the key map of a weight-free
build) before diffusers' converters see them, so any missing, unexpected or mis-shaped key is refused by name.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from torch import Tensor
from transformers import CLIPTextConfig, CLIPTextModel

from oft.sd.checks import ARCHITECTURE_KEY, architecture_record, check_architecture, check_ldm_keys, take_ema
from oft.sd.configs import PRESETS, preset_config
from oft.sd.identity import identity_of, legacy_identity_of
from oft.sd.keymaps import (
    UNET_PREFIX,
    from_ldm_state_dict,
    strip_text_model_prefix,
    text_to_ldm,
    unet_to_ldm,
    vae_to_ldm,
)
from oft.sd.models import SDModels, assemble, build_sd
from oft.sd.weightfiles import WEIGHT_NAMES, part_weights, read_metadata, read_single_file, write_single_file


def to_ldm_state_dict(models: SDModels) -> dict[str, Tensor]:
    """The original single-file (LDM) state dict of ``models``: what ``v1-5-pruned.ckpt`` holds, without EMA."""
    return {
        **unet_to_ldm(models.unet.state_dict(), models.unet.config),
        **vae_to_ldm(models.vae.state_dict(), models.vae.config),
        **text_to_ldm(models.text_encoder.state_dict()),
    }


def save_single_file(models: SDModels, path: str | os.PathLike) -> Path:
    """Write ``models`` as one LDM-layout file (``.safetensors``, else a ``.ckpt`` with ``{"state_dict": ...}``).

    Written atomically (temporary name, then rename). A ``.safetensors`` file also records the preset and its
    config (``ARCHITECTURE_KEY``), because some of it (GroupNorm groups, heads) leaves no trace in the weights'
    shapes; ``load_sd`` checks it (``oft.sd.checks.check_architecture``).
    """
    metadata = {"oft_sd_identity": models.identity, ARCHITECTURE_KEY: architecture_record(models.preset)}
    return write_single_file(to_ldm_state_dict(models), path, metadata)


def missing_checkpoint_message(path: str | os.PathLike) -> str:
    """The one line shown when the SD weights are not where the user pointed."""
    return (
        f"Stable Diffusion weights not found at {path}: run `bash scripts/download_model.sh` "
        "(writes models/v1-5-pruned.ckpt) or pass a diffusers folder (with unet/, vae/, text_encoder/)"
    )


def _adopt(
    net: torch.nn.Module, state_dict: dict[str, torch.Tensor], what: str, assign: bool
) -> torch.nn.Module:
    """Load ``state_dict`` into ``net`` strictly, as one line naming missing, unexpected or mis-shaped keys."""
    try:
        result = net.load_state_dict(state_dict, strict=False, assign=assign)
    except RuntimeError as err:  # size mismatches: torch lists them on several lines
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
        raise ValueError(f"{what} does not fit the SD architecture: {details}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{what} does not fit the SD architecture: {len(result.missing_keys)} missing key(s) "
            f"{result.missing_keys[:8]}, {len(result.unexpected_keys)} unexpected key(s) {result.unexpected_keys[:8]}"
        )
    return net


def _networks_from_state_dicts(
    preset: str, unet_sd: dict, vae_sd: dict, text_sd: dict, source: str
) -> tuple[UNet2DConditionModel, AutoencoderKL, CLIPTextModel]:
    """Networks of ``preset`` holding the given weights; the big ones are built weight-free and adopt the tensors."""
    cfg = preset_config(preset)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**cfg["unet"])
        vae = AutoencoderKL(**cfg["vae"])
    unet = _adopt(unet, unet_sd, f"{source} (UNet)", assign=True)
    vae = _adopt(vae, vae_sd, f"{source} (VAE)", assign=True)
    # CLIP keeps a non-persistent position-id buffer that a weight-free build would leave empty: build it for real.
    text_encoder = CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"]))
    text_encoder = _adopt(text_encoder, text_sd, f"{source} (text encoder)", assign=False)
    return unet, vae, text_encoder


def _recognise_preset(conv_in_weight: torch.Tensor | None) -> str:
    """The preset whose UNet ``conv_in`` has this weight's width; "sd15" when unknown (errors then name keys)."""
    width = None if conv_in_weight is None else conv_in_weight.shape[0]
    return next((p for p in PRESETS if PRESETS[p]["unet"]["block_out_channels"][0] == width), "sd15")


def _single_file_networks(path: Path, preset: str | None, ema: bool):
    checkpoint = read_single_file(path)
    if ema:
        checkpoint = take_ema(checkpoint, str(path))
    preset = preset or _recognise_preset(checkpoint.get(UNET_PREFIX + "input_blocks.0.0.weight"))
    # the exact key set and shapes of the architecture: the key map of a weight-free build
    expected = to_ldm_state_dict(build_sd(preset, device="meta"))
    check_ldm_keys(checkpoint, expected, str(path))
    check_architecture(read_metadata(path).get(ARCHITECTURE_KEY), preset, str(path))
    cfg = preset_config(preset)
    unet_sd, vae_sd, text_sd = from_ldm_state_dict(checkpoint, cfg["unet"], cfg["vae"])
    return preset, _networks_from_state_dicts(preset, unet_sd, vae_sd, text_sd, str(path))


def _folder_networks(path: Path, preset: str | None):
    parts = {}
    for part, names in WEIGHT_NAMES.items():
        found = part_weights(path, part)
        if found is None:
            raise FileNotFoundError(
                f"diffusers folder {path} has no {part}/ weights (looked for {', '.join(names)})"
            )
        parts[part] = read_single_file(found)
    parts["text_encoder"] = strip_text_model_prefix(parts["text_encoder"])
    parts["text_encoder"].pop("embeddings.position_ids", None)
    preset = preset or _recognise_preset(parts["unet"].get("conv_in.weight"))
    return preset, _networks_from_state_dicts(
        preset, parts["unet"], parts["vae"], parts["text_encoder"], str(path)
    )


def load_sd(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    ema: bool = False,
    preset: str | None = None,
) -> SDModels:
    """Load SD from a single-file checkpoint (``.ckpt``/``.safetensors``, LDM keys) or a diffusers folder, offline.

    The architecture comes from the in-code configs (``preset`` "sd15" or "tiny", recognised from the weights when
    None); every weight must be present and nothing else (a missing or unexpected key is an error that names it).
    ``ema=True`` takes the UNet's EMA weights from a file that has both (the reference trained from the non-EMA
    ones, the default). Returns trainable (not yet frozen) networks in ``dtype`` on the CPU: call ``.freeze()``,
    ``.to(device)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(missing_checkpoint_message(path))
    if path.is_dir():
        if ema:
            raise ValueError(
                f"ema=True needs a single-file checkpoint with EMA weights; {path} is a diffusers folder"
            )
        preset, (unet, vae, text_encoder) = _folder_networks(path, preset)
    else:
        preset, (unet, vae, text_encoder) = _single_file_networks(path, preset, ema)
    models = assemble(
        preset, {"unet": unet, "vae": vae, "text_encoder": text_encoder}, identity=identity_of(path)
    )
    models.legacy_identity = legacy_identity_of(path)
    return models.to(dtype=dtype)
