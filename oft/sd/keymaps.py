"""Original LDM single-file key names <-> diffusers/transformers key names: pure mappings of state dicts.

No file I/O and no model building: every function renames (and, for the VAE's attention and OpenCLIP's stacked
q/k/v, reshapes) the tensors it is given. LDM -> diffusers uses diffusers' own single-file helpers
(``convert_ldm_unet_checkpoint``, ``convert_ldm_vae_checkpoint``, ``convert_open_clip_checkpoint``; diffusers
0.42) with the configs from ``oft.sd.configs``, so no config file is fetched. Those helpers skip keys they do
not know and fill absent ones with ``None``: check the keys first (``oft.sd.checks.check_ldm_keys``).

diffusers -> LDM is written here: exporting a merged model as one file that any SD tool opens, and writing
the tiny LDM-layout checkpoints that test the loader without real weights.

The text encoders' layouts per family (``TEXT_LAYOUTS``): SD1 ``cond_stage_model.transformer.text_model.*``
(transformers' CLIP names); SD2 ``cond_stage_model.model.*`` (OpenCLIP ViT-H: ``transformer.resblocks.N``
with q/k/v stacked in ``attn.in_proj_*``, ``ln_final``, ``text_projection``, ``logit_scale``); SDXL
``conditioner.embedders.0.transformer.text_model.*`` (CLIP ViT-L, transformers' names) and
``conditioner.embedders.1.model.*`` (OpenCLIP bigG, with the ``text_projection`` SDXL pools with).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    convert_open_clip_checkpoint,
)
from torch import Tensor, nn

from oft.sd.configs import MAX_LENGTH

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
EMA_PREFIX = "model_ema."
# Present in the original files, not weights of any network we build: the LDM schedule buffers (no dot: "betas",
# "alphas_cumprod", ...), sgm's (SDXL's) ``denoiser.sigmas``, the EMA copy (used only with ``ema=True``) and
# CLIP ViT-L's constant position ids (SD1, SDXL).
_IGNORED = re.compile(
    r"[^.]+|denoiser\.sigmas|model_ema\..*"
    r"|(cond_stage_model|conditioner\.embedders\.0)\.transformer\.text_model\.embeddings\.position_ids"
)


@dataclass(frozen=True)
class TextLayout:
    """Where and how an original single file keeps one text encoder's weights."""

    prefix: str
    open_clip: bool  # OpenCLIP's names (q/k/v stacked), else transformers' CLIP names
    drops_last_block: bool = False  # the file has one resblock more than diffusers' conversion keeps (SD2)


# The text-encoder parts (``SDModels`` attribute names) of each family's original single file.
TEXT_LAYOUTS: dict[str, dict[str, TextLayout]] = {
    "sd1": {"text_encoder": TextLayout(TEXT_PREFIX, open_clip=False)},
    "sd2": {"text_encoder": TextLayout("cond_stage_model.model.", open_clip=True, drops_last_block=True)},
    "sdxl": {
        "text_encoder": TextLayout("conditioner.embedders.0.transformer.text_model.", open_clip=False),
        "text_encoder_2": TextLayout("conditioner.embedders.1.model.", open_clip=True),
    },
}
_OPEN_CLIP = DIFFUSERS_TO_LDM_MAPPING["openclip"]  # diffusers' OpenCLIP names, used in both directions
_QKV = re.compile(r"(transformer\.resblocks\.\d+\.attn)\.([qkv])_proj\.(weight|bias)")

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


def _module_prefixes(table: dict[str, str]) -> list[tuple[str, str]]:
    """A diffusers (diffusers key -> LDM key) table of weights and biases as (diffusers, LDM) module prefixes."""
    return sorted({(k.rsplit(".", 1)[0] + ".", v.rsplit(".", 1)[0] + ".") for k, v in table.items()})


def _unet_prefix_map(config: dict[str, Any]) -> list[tuple[str, str]]:
    """(diffusers prefix, LDM prefix) of every UNet sub-module, for any depth and ``layers_per_block`` L.

    LDM numbers its blocks flatly: ``input_blocks.{(L+1)i + j + 1}`` holds down level i's j-th ResBlock (``.0``)
    and transformer (``.1``), ``input_blocks.{(L+1)(i+1)}.0.op`` its downsampler; ``output_blocks.{(L+1)i + j}``
    holds up level i's j-th ResBlock/transformer and, after the last one, the upsampler (``.1`` or ``.2``).
    """
    n, L = len(config["block_out_channels"]), config["layers_per_block"]
    # time embedding, conv_in/out, norm_out and SDXL's added embedding (``label_emb``): diffusers' own tables
    tables = ["layers"] + (
        ["addition_embed_type"] if config.get("addition_embed_type") == "text_time" else []
    )
    pairs = _module_prefixes({k: v for t in tables for k, v in DIFFUSERS_TO_LDM_MAPPING["unet"][t].items()})
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
    pairs = _module_prefixes(DIFFUSERS_TO_LDM_MAPPING["vae"])  # conv_in/out, norm_out, quant convs
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


def _strip_text_model(key: str) -> str:
    # transformers 5's CLIPTextModel has no ``text_model.`` level; files written by older versions have it
    return key[len("text_model.") :] if key.startswith("text_model.") else key


def text_names_for(net: nn.Module, state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Text-encoder weights named as ``net`` (a CLIPTextModel or CLIPTextModelWithProjection of this transformers
    version) names them: with or without the ``text_model.`` level, without the constant position ids."""
    if not hasattr(net, "text_model"):  # CLIPTextModel since transformers 5; WithProjection keeps the level
        state_dict = {_strip_text_model(k): v for k, v in state_dict.items()}
    return {k: v for k, v in state_dict.items() if not k.endswith("embeddings.position_ids")}


def _open_clip_to_ldm(state_dict: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    """CLIPTextModel(WithProjection) weights -> OpenCLIP's names: the inverse of ``convert_open_clip_checkpoint``.

    diffusers' tables are read backwards; q, k, v (each (w, w)) are stacked into ``in_proj_weight`` (3w, w) in
    that order, as the converter splits them; ``text_projection.weight`` (d, w) becomes ``text_projection`` (w, d).
    """
    out, qkv = {}, {}
    for key, value in state_dict.items():
        name = key if key == "text_projection.weight" else "text_model." + _strip_text_model(key)
        if name in _OPEN_CLIP["layers"]:
            ldm = _OPEN_CLIP["layers"][name]
            out[prefix + ldm] = value.T if ldm == "text_projection" else value
            continue
        for new, old in _OPEN_CLIP["transformer"].items():
            name = name.replace(new, old)
        if not name.startswith("resblocks."):
            raise KeyError(f"no OpenCLIP name for text-encoder key {key!r}")
        name = "transformer." + name
        match = _QKV.fullmatch(name)
        if match is None:
            out[prefix + name] = value
        else:
            attn, which, kind = match.groups()
            qkv.setdefault(f"{prefix}{attn}.in_proj_{kind}", {})[which] = value
    out.update({key: torch.cat([parts[c] for c in "qkv"]) for key, parts in qkv.items()})
    return out


def text_to_ldm(state_dict: dict[str, Tensor], layout: TextLayout) -> dict[str, Tensor]:
    """Text-encoder weights -> the original file's names under ``layout.prefix``: OpenCLIP's, or transformers'
    CLIP names with the constant position ids that the original CLIP files hold."""
    if layout.open_clip:
        return _open_clip_to_ldm(state_dict, layout.prefix)
    out = {layout.prefix + _strip_text_model(k): v for k, v in state_dict.items()}
    device = next(iter(state_dict.values())).device
    out[layout.prefix + "embeddings.position_ids"] = torch.arange(MAX_LENGTH, device=device)[None]
    return out


def unused_ldm_keys(expected: dict[str, Tensor], family: str) -> dict[str, Tensor]:
    """The keys an original single file of ``family`` may hold that no network we build has, with their shapes
    (meta tensors); ``expected`` is the family's own export (``to_ldm_state_dict`` of a weight-free build).

    OpenCLIP's ``logit_scale`` (a scalar of its contrastive loss); for SD2 also ``text_projection`` (w, w: ViT-H's
    embedding width equals its text width, 1024) and the last of the 24 resblocks: SD2 conditions on the
    penultimate layer, so diffusers' conversion keeps 23 and a CLIPTextModel without a projection. Their shapes
    are checked, then they are dropped; exports do not write them.
    """
    out = {}
    for layout in TEXT_LAYOUTS[family].values():
        if not layout.open_clip:
            continue
        p = layout.prefix
        out[p + "logit_scale"] = torch.empty((), device="meta")
        if p + "text_projection" not in expected:
            width = expected[p + "positional_embedding"].shape[1]
            out[p + "text_projection"] = torch.empty(width, width, device="meta")
        if layout.drops_last_block:
            block = re.compile(re.escape(p) + r"transformer\.resblocks\.(\d+)\.(.*)")
            found = [m for m in map(block.fullmatch, expected) if m is not None]
            last = max(int(m[1]) for m in found)
            out.update(
                {
                    f"{p}transformer.resblocks.{last + 1}.{m[2]}": torch.empty_like(
                        expected[m[0]], device="meta"
                    )
                    for m in found
                    if int(m[1]) == last
                }
            )
    return out


def unet_vae_from_ldm(
    checkpoint: dict[str, Tensor], unet_config: dict[str, Any], vae_config: dict[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """LDM single-file weights -> (UNet, VAE) state dicts, via diffusers' converters.

    Call ``oft.sd.checks.check_ldm_keys`` first: the converters silently skip unknown keys.
    """
    # Only the UNet's own keys go to its converter: otherwise it warns about (and may pick) the EMA copy.
    unet_part = {k: v for k, v in checkpoint.items() if k.startswith(UNET_PREFIX)}
    unet = convert_ldm_unet_checkpoint(unet_part, dict(unet_config))
    vae_part = {k: v for k, v in checkpoint.items() if k.startswith(VAE_PREFIX)}
    return unet, convert_ldm_vae_checkpoint(vae_part, dict(vae_config))


def text_from_ldm(checkpoint: dict[str, Tensor], layout: TextLayout, net: nn.Module) -> dict[str, Tensor]:
    """LDM single-file weights -> the state dict of text encoder ``net`` kept under ``layout``.

    OpenCLIP weights go through diffusers' ``convert_open_clip_checkpoint`` (which reads only ``net.config``);
    drop ``unused_ldm_keys`` first, and check the keys (``oft.sd.checks.check_ldm_keys``).
    """
    own = {k: v for k, v in checkpoint.items() if k.startswith(layout.prefix) and not is_ignored(k)}
    if layout.open_clip:
        return text_names_for(net, convert_open_clip_checkpoint(net, own, prefix=layout.prefix))
    return text_names_for(net, {k[len(layout.prefix) :]: v for k, v in own.items()})
