"""Original LDM single-file key names <-> diffusers/transformers key names: pure mappings of state dicts.

No file I/O and no model building: every function renames (and, for the VAE's attention, reshapes) the
tensors it is given. LDM -> diffusers uses diffusers' own single-file helpers (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``) with the configs from ``oft.sd.configs``, so no config file is fetched. Those
helpers skip keys they do not know and fill absent ones with ``None``: check the keys first
(``oft.sd.checks.check_ldm_keys``).

diffusers -> LDM is written here: exporting a merged model as one file that any SD tool opens, and writing
the tiny LDM-layout checkpoint that tests the loader without real weights.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import torch
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from torch import Tensor

from oft.sd.configs import MAX_LENGTH

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
EMA_PREFIX = "model_ema."
# Present in the original files, not weights of any network we build: the LDM schedule buffers (no dot: "betas",
# "alphas_cumprod", ...), the EMA copy (used only with ``ema=True``) and CLIP's constant position ids.
_IGNORED = re.compile(
    r"[^.]+|model_ema\..*|cond_stage_model\.transformer\.text_model\.embeddings\.position_ids"
)

_UNET_RESNET = [  # (diffusers, LDM) names inside a ResBlock
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
]
_VAE_ATTN = [("group_norm", "norm"), ("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("to_out.0", "proj_out")]


def is_ignored(key: str) -> bool:
    """Whether an LDM key holds no weight of the networks we build (schedule buffers, EMA copy, position ids)."""
    return _IGNORED.fullmatch(key) is not None


def ema_key(key: str) -> str:
    """The LDM key of the EMA copy of UNet weight ``key``: ``model_ema.diffusion_model<key without dots>``."""
    return EMA_PREFIX + key[len("model.") :].replace(".", "")


def _unet_prefix_map(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) of every UNet sub-module, for any depth and ``layers_per_block`` L.

    LDM numbers its blocks flatly: ``input_blocks.{(L+1)i + j + 1}`` holds down level i's j-th ResBlock (``.0``)
    and transformer (``.1``), ``input_blocks.{(L+1)(i+1)}.0.op`` its downsampler; ``output_blocks.{(L+1)i + j}``
    holds up level i's j-th ResBlock/transformer and, after the last one, the upsampler (``.1`` or ``.2``).
    """
    n, L = len(config["block_out_channels"]), config["layers_per_block"]
    pairs = [("time_embedding.linear_1.", "time_embed.0."), ("time_embedding.linear_2.", "time_embed.2.")]
    pairs += [("conv_in.", "input_blocks.0.0."), ("conv_norm_out.", "out.0."), ("conv_out.", "out.2.")]
    for i in range(n):
        down_attn = config["down_block_types"][i].startswith("CrossAttn")
        up_attn = config["up_block_types"][i].startswith("CrossAttn")
        for j in range(L):
            k = (L + 1) * i + j + 1
            pairs.append((f"down_blocks.{i}.resnets.{j}.", f"input_blocks.{k}.0."))
            if down_attn:
                pairs.append((f"down_blocks.{i}.attentions.{j}.", f"input_blocks.{k}.1."))
        for j in range(L + 1):
            k = (L + 1) * i + j
            pairs.append((f"up_blocks.{i}.resnets.{j}.", f"output_blocks.{k}.0."))
            if up_attn:
                pairs.append((f"up_blocks.{i}.attentions.{j}.", f"output_blocks.{k}.1."))
        if i < n - 1:
            pairs.append((f"down_blocks.{i}.downsamplers.0.conv.", f"input_blocks.{(L + 1) * (i + 1)}.0.op."))
            k = (L + 1) * i + L
            pairs.append((f"up_blocks.{i}.upsamplers.0.", f"output_blocks.{k}.{2 if up_attn else 1}."))
    pairs.append(("mid_block.attentions.0.", "middle_block.1."))
    pairs += [(f"mid_block.resnets.{j}.", f"middle_block.{2 * j}.") for j in range(2)]
    return pairs


def _vae_prefix_map(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) of every VAE sub-module; LDM's decoder counts levels bottom-up."""
    n, L = len(config["block_out_channels"]), config["layers_per_block"]
    # conv_in/out, norm_out, quant convs: diffusers' own table, weight/bias names cut to module prefixes
    pairs = sorted(
        {
            (k.rsplit(".", 1)[0] + ".", v.rsplit(".", 1)[0] + ".")
            for k, v in DIFFUSERS_TO_LDM_MAPPING["vae"].items()
        }
    )
    for i in range(n):
        pairs += [(f"encoder.down_blocks.{i}.resnets.{j}.", f"encoder.down.{i}.block.{j}.") for j in range(L)]
        pairs += [
            (f"decoder.up_blocks.{i}.resnets.{j}.", f"decoder.up.{n - 1 - i}.block.{j}.")
            for j in range(L + 1)
        ]
        if i < n - 1:
            pairs.append((f"encoder.down_blocks.{i}.downsamplers.0.", f"encoder.down.{i}.downsample."))
            pairs.append((f"decoder.up_blocks.{i}.upsamplers.0.", f"decoder.up.{n - 1 - i}.upsample."))
    for part in ("encoder", "decoder"):
        pairs += [(f"{part}.mid_block.resnets.{j}.", f"{part}.mid.block_{j + 1}.") for j in range(2)]
        pairs.append((f"{part}.mid_block.attentions.0.", f"{part}.mid.attn_1."))
    return pairs


def _rename(key: str, pairs: list[tuple[str, str]]) -> tuple[str, str]:
    """Split ``key`` into (LDM prefix, rest) by the longest matching diffusers prefix."""
    best = max((p for p in pairs if key.startswith(p[0])), key=lambda p: len(p[0]), default=None)
    if best is None:
        raise KeyError(f"no LDM name for diffusers key {key!r}")
    return best[1], key[len(best[0]) :]


def _swap_first(rest: str, names: list[tuple[str, str]]) -> str:
    """Rename the leading module name of ``rest`` by ``names`` ((diffusers, LDM) pairs)."""
    for new, old in names:
        if rest.startswith(new + "."):
            return old + rest[len(new) :]
    return rest


def _to_ldm(
    state_dict: dict[str, Tensor],
    pairs: list[tuple[str, str]],
    prefix: str,
    fix: Callable[[str, str, Tensor], tuple[str, Tensor]],
) -> dict[str, Tensor]:
    """Rename every key by its longest diffusers prefix in ``pairs``, then ``fix(key, rest, value)``."""
    out = {}
    for key, value in state_dict.items():
        ldm, rest = _rename(key, pairs)
        rest, value = fix(key, rest, value)
        out[prefix + ldm + rest] = value
    return out


def _unet_fix(key: str, rest: str, value: Tensor) -> tuple[str, Tensor]:
    return (_swap_first(rest, _UNET_RESNET) if ".resnets." in key else rest), value


def _vae_fix(key: str, rest: str, value: Tensor) -> tuple[str, Tensor]:
    if ".resnets." in key and rest.startswith("conv_shortcut."):
        rest = "nin_shortcut." + rest[len("conv_shortcut.") :]
    if ".attentions." in key:
        rest = _swap_first(rest, _VAE_ATTN)
        if value.ndim == 2:  # LDM's AttnBlock uses Conv2d(c, c, 1): (c, c) -> (c, c, 1, 1)
            value = value[:, :, None, None]
    return rest, value


def unet_to_ldm(state_dict: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """Diffusers UNet weights -> LDM ``model.diffusion_model.*`` weights (same tensors, renamed)."""
    return _to_ldm(state_dict, _unet_prefix_map(config), UNET_PREFIX, _unet_fix)


def vae_to_ldm(state_dict: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """Diffusers VAE weights -> LDM ``first_stage_model.*`` weights; attention linears become 1x1 convs as in LDM."""
    return _to_ldm(state_dict, _vae_prefix_map(config), VAE_PREFIX, _vae_fix)


def text_to_ldm(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """CLIPTextModel weights -> ``cond_stage_model.transformer.text_model.*`` (+ the constant position ids)."""
    out = {TEXT_PREFIX + _strip_text_model(k): v for k, v in state_dict.items()}
    device = next(iter(state_dict.values())).device
    out[TEXT_PREFIX + "embeddings.position_ids"] = torch.arange(MAX_LENGTH, device=device)[None]
    return out


def _strip_text_model(key: str) -> str:
    # transformers 5's CLIPTextModel has no ``text_model.`` level; files written by older versions have it
    return key[len("text_model.") :] if key.startswith("text_model.") else key


def strip_text_model_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Text-encoder weights as this transformers version names them (see ``_strip_text_model``)."""
    return {_strip_text_model(k): v for k, v in state_dict.items()}


def from_ldm_state_dict(
    checkpoint: dict[str, Tensor], unet_config: dict[str, Any], vae_config: dict[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """LDM single-file weights -> (UNet, VAE, CLIPTextModel) state dicts, via diffusers' converters.

    Call ``oft.sd.checks.check_ldm_keys`` first: the converters silently skip unknown keys.
    """
    # Only the UNet's own keys go to its converter: otherwise it warns about (and may pick) the EMA copy.
    unet_part = {k: v for k, v in checkpoint.items() if k.startswith(UNET_PREFIX)}
    unet = convert_ldm_unet_checkpoint(unet_part, dict(unet_config))
    vae_part = {k: v for k, v in checkpoint.items() if k.startswith(VAE_PREFIX)}
    vae = convert_ldm_vae_checkpoint(vae_part, dict(vae_config))
    text = {
        k[len(TEXT_PREFIX) :]: v
        for k, v in checkpoint.items()
        if k.startswith(TEXT_PREFIX) and not is_ignored(k)
    }
    return unet, vae, text
