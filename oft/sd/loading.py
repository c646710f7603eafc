"""Loading and saving the SD weights: ``load_sd`` reads a single-file checkpoint (LDM keys) or a diffusers folder
of any base (SD1.5, SD2.1, SDXL and their tiny presets) into ``SDModels``, strictly and offline;
``save_single_file`` writes ``SDModels`` as one file in its family's original layout.

A single file's keys are compared with the exact key set of the architecture (the key map of a weight-free
build, plus the keys of the original files that no network we build holds: ``unused_ldm_keys``) before
diffusers' converters see them, so any missing, unexpected or mis-shaped key is refused by name.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import Tensor, nn

from oft.sd.checks import (
    ARCHITECTURE_KEY,
    architecture_record,
    check_architecture,
    check_ldm_keys,
    recognise_family,
    resolve_preset,
    take_ema,
)
from oft.sd.configs import base_of, preset_config
from oft.sd.identity import identity_of, legacy_identity_of
from oft.sd.keymaps import (
    TEXT_LAYOUTS,
    UNET_PREFIX,
    text_from_ldm,
    text_names_for,
    text_to_ldm,
    unet_to_ldm,
    unet_vae_from_ldm,
    unused_ldm_keys,
    vae_to_ldm,
)
from oft.sd.models import SDModels, assemble, build_networks, build_sd
from oft.sd.weightfiles import (
    WEIGHT_NAMES,
    part_weights,
    read_metadata,
    read_shapes,
    read_single_file,
    write_single_file,
)

_PART_NAMES = {
    "unet": "UNet",
    "vae": "VAE",
    "text_encoder": "text encoder",
    "text_encoder_2": "text encoder 2",
}


def to_ldm_state_dict(models: SDModels) -> dict[str, Tensor]:
    """The original single-file (LDM) state dict of ``models`` in its family's layout (``v1-5-pruned.ckpt``,
    ``v2-1_768-ema-pruned``, ``sd_xl_base_1.0``), without EMA and without ``unused_ldm_keys``."""
    out = {
        **unet_to_ldm(models.unet.state_dict(), models.unet.config),
        **vae_to_ldm(models.vae.state_dict(), models.vae.config),
    }
    for part, layout in TEXT_LAYOUTS[models.base.family].items():
        out.update(text_to_ldm(getattr(models, part).state_dict(), layout))
    return out


def expected_ldm_keys(preset: str) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
    """The LDM keys of ``preset`` with tensors of their shapes (weight-free): those a file must hold, and those
    an original file may hold besides (``unused_ldm_keys``)."""
    expected = to_ldm_state_dict(build_sd(preset, device="meta"))
    return expected, unused_ldm_keys(expected, base_of(preset).family)


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


def _adopt(net: nn.Module, state_dict: dict[str, Tensor], what: str) -> nn.Module:
    """Load ``state_dict`` into ``net`` strictly, as one line naming missing, unexpected or mis-shaped keys; a
    weight-free (meta) ``net`` takes the tensors themselves."""
    try:
        result = net.load_state_dict(state_dict, strict=False, assign=next(net.parameters()).is_meta)
    except RuntimeError as err:  # size mismatches: torch lists them on several lines
        details = "; ".join(line.strip() for line in str(err).splitlines()[1:4])
        raise ValueError(f"{what} does not fit the SD architecture: {details}") from None
    if result.missing_keys or result.unexpected_keys:
        raise ValueError(
            f"{what} does not fit the SD architecture: {len(result.missing_keys)} missing key(s) "
            f"{result.missing_keys[:8]}, {len(result.unexpected_keys)} unexpected key(s) {result.unexpected_keys[:8]}"
        )
    return net


def _empty_networks(preset: str) -> dict[str, nn.Module]:
    """The networks of ``preset`` to fill, weight-free (no random initialisation: SDXL's bigG alone would take
    seconds and 2.8 GB)."""
    with torch.device("meta"):
        return build_networks(preset)


def _with_position_ids(net: nn.Module) -> nn.Module:
    """``net`` with CLIP's non-persistent ``position_ids`` buffer (0 .. n-1), which no file holds, made real."""
    for module in net.modules():
        ids = module._buffers.get("position_ids")
        if ids is not None and ids.is_meta:
            module.register_buffer(
                "position_ids", torch.arange(ids.shape[-1]).expand((1, -1)), persistent=False
            )
    return net


def _filled(nets: dict[str, nn.Module], state_dicts: dict[str, dict[str, Tensor]], source: str):
    """``nets`` holding ``state_dicts`` (by part), each adopted strictly (``_adopt``); nothing stays on the meta
    device."""
    filled = {
        part: _with_position_ids(_adopt(net, state_dicts[part], f"{source} ({_PART_NAMES[part]})"))
        for part, net in nets.items()
    }
    left = [
        f"{part}.{name}"
        for part, net in filled.items()
        for name, t in [*net.named_parameters(), *net.named_buffers()]
        if t.is_meta
    ]
    if left:
        raise RuntimeError(f"{source}: no weights for {left[:4]} after loading (a bug: please report it)")
    return filled


_SINGLE_FILE_CONV_IN, _FOLDER_CONV_IN = UNET_PREFIX + "input_blocks.0.0.weight", "conv_in.weight"


def _preset_of(
    family: str | None,
    shapes: Mapping[str, Sequence[int]],
    conv_in: str,
    preset: str | None,
    source: str,
    kind: str,
) -> str:
    """``resolve_preset`` for weights of these ``shapes`` (the UNet's first width from its ``conv_in`` key)."""
    shape = shapes.get(conv_in)
    return resolve_preset(family, None if shape is None else shape[0], preset, source, kind)


def _single_file_networks(path: Path, preset: str | None, ema: bool) -> tuple[str, dict[str, nn.Module]]:
    checkpoint = read_single_file(path)
    if ema:
        checkpoint = take_ema(checkpoint, str(path))
    shapes = {k: v.shape for k, v in checkpoint.items()}
    preset = _preset_of(
        recognise_family(shapes), shapes, _SINGLE_FILE_CONV_IN, preset, str(path), "checkpoint"
    )
    family = base_of(preset).family
    expected, unused = expected_ldm_keys(preset)
    check_ldm_keys(checkpoint, expected, str(path), optional=unused, family=family)
    check_architecture(read_metadata(path).get(ARCHITECTURE_KEY), preset, str(path))
    checkpoint = {k: v for k, v in checkpoint.items() if k not in unused}
    cfg = preset_config(preset)
    nets = _empty_networks(preset)
    state_dicts = dict(zip(("unet", "vae"), unet_vae_from_ldm(checkpoint, cfg["unet"], cfg["vae"])))
    for part, layout in TEXT_LAYOUTS[family].items():
        state_dicts[part] = text_from_ldm(checkpoint, layout, nets[part])
    return preset, _filled(nets, state_dicts, str(path))


def _folder_family(unet: Mapping[str, Sequence[int]]) -> str:
    """The family of a diffusers UNet from its weights' shapes: SDXL has the added embedding, SD2 linear
    ``proj_in``s."""
    if "add_embedding.linear_1.weight" in unet:
        return "sdxl"
    proj_in = unet.get("mid_block.attentions.0.proj_in.weight")
    return "sd2" if proj_in is not None and len(proj_in) == 2 else "sd1"


def _folder_networks(path: Path, preset: str | None) -> tuple[str, dict[str, nn.Module]]:
    def read(part: str) -> dict[str, Tensor]:
        found = part_weights(path, part)
        if found is None:
            names = ", ".join(WEIGHT_NAMES[part])
            raise FileNotFoundError(f"diffusers folder {path} has no {part}/ weights (looked for {names})")
        return read_single_file(found)

    parts = {part: read(part) for part in ("unet", "vae", "text_encoder")}
    shapes = {k: v.shape for k, v in parts["unet"].items()}
    preset = _preset_of(
        _folder_family(shapes), shapes, _FOLDER_CONV_IN, preset, str(path), "diffusers folder"
    )
    nets = _empty_networks(preset)
    parts.update({part: read(part) for part in nets if part not in parts})
    for part in TEXT_LAYOUTS[base_of(preset).family]:
        parts[part] = text_names_for(nets[part], parts[part])
    return preset, _filled(nets, parts, str(path))


def peek_preset(path: str | os.PathLike) -> str | None:
    """The preset of an SD file or diffusers folder from its safetensors headers alone (seconds faster than
    loading); None where the names cannot be read without loading (a ``.ckpt``, ``.bin`` weights)."""
    path = Path(path)
    if path.is_dir():
        unet = part_weights(path, "unet")
        shapes = None if unet is None else read_shapes(unet)
        if shapes is None:
            return None
        return _preset_of(_folder_family(shapes), shapes, _FOLDER_CONV_IN, None, str(path), "folder")
    shapes = read_shapes(path)
    if shapes is None:
        return None
    return _preset_of(recognise_family(shapes), shapes, _SINGLE_FILE_CONV_IN, None, str(path), "checkpoint")


def load_sd(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    ema: bool = False,
    preset: str | None = None,
) -> SDModels:
    """Load SD from a single-file checkpoint (``.ckpt``/``.safetensors``, LDM keys) or a diffusers folder, offline.

    The architecture comes from the in-code configs (``preset``: a name of ``oft.sd.configs.PRESETS``,
    recognised from the weights when None; weights of another base than a given ``preset`` are refused in one
    line naming what they are); every weight must be present and nothing else (a missing or unexpected key is
    an error that names it). ``ema=True`` takes the UNet's EMA weights from a file that has both (the reference
    trained from the non-EMA ones, the default). Returns trainable (not yet frozen) networks in ``dtype`` on the
    CPU: call ``.freeze()``, ``.to(device)``.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(missing_checkpoint_message(path))
    if path.is_dir():
        if ema:
            raise ValueError(
                f"ema=True needs a single-file checkpoint with EMA weights; {path} is a diffusers folder"
            )
        preset, nets = _folder_networks(path, preset)
    else:
        preset, nets = _single_file_networks(path, preset, ema)
    models = assemble(preset, nets, identity=identity_of(path))
    models.legacy_identity = legacy_identity_of(path)
    return models.to(dtype=dtype)
