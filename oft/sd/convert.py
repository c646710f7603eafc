"""Original LDM single-file checkpoints <-> diffusers/transformers state dicts, offline and strict.

LDM -> diffusers uses diffusers' own single-file helpers (``convert_ldm_unet_checkpoint``,
``convert_ldm_vae_checkpoint``) with the configs from ``oft.sd.configs``, so no config file is fetched. Those
helpers skip keys they do not know and fill absent ones with ``None``; we therefore first compare the file's keys
with the exact key set of the architecture (obtained by the reverse conversion below on a weight-free model) and
refuse any missing or unexpected key by name.

diffusers -> LDM (``to_ldm_state_dict``) is written here: exporting a merged model as one file that any SD tool
opens, and writing the tiny LDM-layout checkpoint that tests the loader without real weights.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from diffusers.loaders.single_file_utils import (
    DIFFUSERS_TO_LDM_MAPPING,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from torch import Tensor

from oft.safe_load import load_error_line, refused_pickle
from oft.sd.configs import MAX_LENGTH, preset_config

if TYPE_CHECKING:
    from oft.sd.models import SDModels

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
TEXT_PREFIX = "cond_stage_model.transformer.text_model."
EMA_PREFIX = "model_ema."
ARCHITECTURE_KEY = (
    "oft_sd_architecture"  # safetensors metadata: the preset name and config a file was written with
)
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


def unet_to_ldm(state_dict: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """Diffusers UNet weights -> LDM ``model.diffusion_model.*`` weights (same tensors, renamed)."""
    pairs = _unet_prefix_map(config)
    out = {}
    for key, value in state_dict.items():
        prefix, rest = _rename(key, pairs)
        if ".resnets." in key:
            rest = _swap_first(rest, _UNET_RESNET)
        out[UNET_PREFIX + prefix + rest] = value
    return out


def vae_to_ldm(state_dict: dict[str, Tensor], config: dict[str, Any]) -> dict[str, Tensor]:
    """Diffusers VAE weights -> LDM ``first_stage_model.*`` weights; attention linears become 1x1 convs as in LDM."""
    pairs = _vae_prefix_map(config)
    out = {}
    for key, value in state_dict.items():
        prefix, rest = _rename(key, pairs)
        if ".resnets." in key and rest.startswith("conv_shortcut."):
            rest = "nin_shortcut." + rest[len("conv_shortcut.") :]
        if ".attentions." in key:
            rest = _swap_first(rest, _VAE_ATTN)
            if value.ndim == 2:  # LDM's AttnBlock uses Conv2d(c, c, 1): (c, c) -> (c, c, 1, 1)
                value = value[:, :, None, None]
        out[VAE_PREFIX + prefix + rest] = value
    return out


def text_to_ldm(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """CLIPTextModel weights -> ``cond_stage_model.transformer.text_model.*`` (+ the constant position ids)."""
    out = {TEXT_PREFIX + _strip_text_model(k): v for k, v in state_dict.items()}
    device = next(iter(state_dict.values())).device
    out[TEXT_PREFIX + "embeddings.position_ids"] = torch.arange(MAX_LENGTH, device=device)[None]
    return out


def _strip_text_model(key: str) -> str:
    # transformers 5's CLIPTextModel has no ``text_model.`` level; files written by older versions have it
    return key[len("text_model.") :] if key.startswith("text_model.") else key


def to_ldm_state_dict(models: SDModels) -> dict[str, Tensor]:
    """The original single-file (LDM) state dict of ``models``: what ``v1-5-pruned.ckpt`` holds, without EMA."""
    return {
        **unet_to_ldm(models.unet.state_dict(), models.unet.config),
        **vae_to_ldm(models.vae.state_dict(), models.vae.config),
        **text_to_ldm(models.text_encoder.state_dict()),
    }


def save_single_file(models: SDModels, path: str | os.PathLike) -> Path:
    """Write ``models`` as one LDM-layout file (``.safetensors``, else a ``.ckpt`` with ``{"state_dict": ...}``).

    Written atomically (temporary name, then rename). Tensors are made contiguous and unshared, as safetensors
    requires. A ``.safetensors`` file also records the preset and its config (``ARCHITECTURE_KEY``), because some
    of it (GroupNorm groups, heads) leaves no trace in the weights' shapes; ``check_architecture`` reads it back.
    """
    path = Path(path)
    state = {k: v.detach().contiguous().clone() for k, v in to_ldm_state_dict(models).items()}
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        architecture = json.dumps({"preset": models.preset, **preset_config(models.preset)}, sort_keys=True)
        metadata = {"format": "pt", "oft_sd_identity": models.identity, ARCHITECTURE_KEY: architecture}
        save_file(state, str(tmp), metadata=metadata)
    else:
        torch.save({"state_dict": state}, tmp)
    os.replace(tmp, path)
    return path


UNREADABLE_FIX = (
    "it is truncated or corrupt (an interrupted download or copy?): download it again (SD1.5: "
    "`bash scripts/download_model.sh`, which verifies the file) or pass another checkpoint"
)


def unreadable_message(path: str | os.PathLike, kind: str, err: BaseException) -> str:
    """One line for a weight file that its reader rejects: the file, the reader's complaint, the fix."""
    if refused_pickle(err):  # not damaged: it carries code; re-downloading the same file would not help
        return f"cannot read {path} as a {kind}: {load_error_line(err)}; use weights from a source you trust"
    return f"cannot read {path} as a {kind} ({load_error_line(err)}): {UNREADABLE_FIX}"


def read_single_file(path: str | os.PathLike) -> dict[str, Tensor]:
    """The state dict of a ``.safetensors`` or ``.ckpt`` file (memory-mapped, tensors only: no code runs).

    A file its reader rejects (truncated, corrupt, not a checkpoint) is a ``ValueError`` of one line naming it
    and the fix.
    """
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(path))
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError, ...: the same one-line explanation
            raise ValueError(unreadable_message(path, "safetensors file", err)) from None
    try:
        try:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as err:  # files from before PyTorch 1.6's zip format cannot be memory-mapped
            if "mmap" not in str(err):
                raise
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure gets the same one-line explanation
        raise ValueError(unreadable_message(path, "PyTorch checkpoint of tensors", err)) from None
    return obj.get("state_dict", obj) if isinstance(obj, dict) else obj


def check_architecture(path: str | os.PathLike, preset: str) -> None:
    """Raise ``ValueError`` if ``path`` records (see ``save_single_file``) a config other than ``preset``'s.

    Files without the record (every original SD checkpoint, ``.ckpt`` files) pass: their shapes were checked.
    """
    path = Path(path)
    if path.suffix != ".safetensors":
        return
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        recorded = (f.metadata() or {}).get(ARCHITECTURE_KEY)
    if recorded is None:
        return
    recorded = json.loads(recorded)
    current = json.loads(
        json.dumps({"preset": preset, **preset_config(preset)})
    )  # tuples -> lists, as recorded
    if recorded.get("preset") != preset:
        raise ValueError(f"{path} was written for the {recorded.get('preset')!r} preset, not {preset!r}")
    changed = [
        f"{part}.{key} {recorded[part].get(key)!r} (now {value!r})"
        for part in ("unet", "vae", "text_encoder")
        for key, value in current[part].items()
        if recorded.get(part, {}).get(key) != value
    ]
    if changed:
        raise ValueError(
            f"{path} was written with an older {preset!r} architecture ({'; '.join(changed)}): its weights do not "
            "fit the current code; rebuild the file (the demo base: python scripts/pretrain_tiny_base.py)"
        )


def _summary(keys: list[str], limit: int = 8) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def check_ldm_keys(checkpoint: dict[str, Tensor], expected: dict[str, Tensor], source: str) -> None:
    """Raise ``ValueError`` naming missing, unexpected and mis-shaped keys of ``checkpoint`` against ``expected``.

    ``expected`` maps LDM key -> tensor of the right shape (a weight-free model's converted state dict suffices).
    """
    present = {k for k in checkpoint if not _IGNORED.fullmatch(k)}
    expected = {k: v for k, v in expected.items() if not _IGNORED.fullmatch(k)}
    missing = sorted(set(expected) - present)
    unexpected = sorted(present - set(expected))
    shapes = sorted(
        f"{k} {tuple(checkpoint[k].shape)} (expected {tuple(expected[k].shape)})"
        for k in present & set(expected)
        if checkpoint[k].shape != expected[k].shape
    )
    problems = [
        f"{len(missing)} missing key(s): {_summary(missing)}" if missing else "",
        f"{len(unexpected)} unexpected key(s): {_summary(unexpected)}" if unexpected else "",
        f"{len(shapes)} mis-shaped key(s): {_summary(shapes, 4)}" if shapes else "",
    ]
    if any(problems):
        raise ValueError(
            f"{source} is not a Stable Diffusion checkpoint of this architecture: "
            + "; ".join(p for p in problems if p)
            + ". Use the SD1.5 file from scripts/download_model.sh or a diffusers folder."
        )


def take_ema(checkpoint: dict[str, Tensor], source: str) -> dict[str, Tensor]:
    """Replace the UNet weights by their EMA copy (``model_ema.diffusion_model<key without dots>``), as LDM does."""
    out = dict(checkpoint)
    missing = []
    for key in checkpoint:
        if key.startswith(UNET_PREFIX):
            ema_key = EMA_PREFIX + key[len("model.") :].replace(".", "")
            if ema_key in checkpoint:
                out[key] = checkpoint[ema_key]
            else:
                missing.append(ema_key)
    if missing:
        raise ValueError(
            f"{source} has no EMA weights for {len(missing)} UNet key(s) ({_summary(missing, 3)}): load it without ema=True"
        )
    return out


def from_ldm_state_dict(
    checkpoint: dict[str, Tensor], unet_config: dict[str, Any], vae_config: dict[str, Any]
) -> tuple[dict[str, Tensor], dict[str, Tensor], dict[str, Tensor]]:
    """LDM single-file weights -> (UNet, VAE, CLIPTextModel) state dicts, via diffusers' converters.

    Call ``check_ldm_keys`` first: the converters silently skip unknown keys.
    """
    # Only the UNet's own keys go to its converter: otherwise it warns about (and may pick) the EMA copy.
    unet_part = {k: v for k, v in checkpoint.items() if k.startswith(UNET_PREFIX)}
    unet = convert_ldm_unet_checkpoint(unet_part, dict(unet_config))
    vae_part = {k: v for k, v in checkpoint.items() if k.startswith(VAE_PREFIX)}
    vae = convert_ldm_vae_checkpoint(vae_part, dict(vae_config))
    text = {
        k[len(TEXT_PREFIX) :]: v
        for k, v in checkpoint.items()
        if k.startswith(TEXT_PREFIX) and not _IGNORED.fullmatch(k)
    }
    return unet, vae, text


def strip_text_model_prefix(state_dict: dict[str, Tensor]) -> dict[str, Tensor]:
    """Text-encoder weights as this transformers version names them (see ``_strip_text_model``)."""
    return {_strip_text_model(k): v for k, v in state_dict.items()}
