"""Adapter files: the OFT parameters of a model as safetensors, with the metadata needed to rebuild them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .cayley import CONVENTION
from .config import OFTConfig
from .inject import _set_submodule, oft_modules, wrap

FORMAT = "oft-adapter"
# Version 1 stores every R as the parameter itself, (r, b, b) or shared (b, b). Version 2 stores only what the
# rotation uses: the strict upper triangle of R's skew part, in ``torch.triu_indices(b, b, 1)`` order, (r, n) or
# shared (n,) with n = b(b-1)/2, about half the bytes. Both are read; writers pick 2 whenever it is exact.
FULL_VERSION = "1"
PACKED_VERSION = "2"
FORMAT_VERSIONS = (FULL_VERSION, PACKED_VERSION)


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``{"<layer>.R": R, "<layer>.s": s}`` for every OFT layer (s only with magnitude fitting)."""
    sd = {}
    for name, layer in oft_modules(model):
        sd[f"{name}.R"] = layer.R.detach()
        if layer.s is not None:
            sd[f"{name}.s"] = layer.s.detach()
    return sd


def adapter_metadata(model: nn.Module) -> dict[str, str]:
    """String metadata of ``adapter_state_dict`` (full R, format version 1): format, Cayley convention,
    per-layer options, and the common r/eps/coft/block_share/magnitude/conv_layout when all layers agree."""
    layers = {name: layer.config.to_dict() for name, layer in oft_modules(model)}
    if not layers:
        raise ValueError("the model has no OFT layers; inject(model, targets, ...) first")
    meta = {
        "format": FORMAT,
        "format_version": FULL_VERSION,
        "cayley_convention": CONVENTION,
        "layers": json.dumps(layers),
        "targets": json.dumps(list(layers)),
    }
    for key in ("r", "eps", "coft", "block_share", "magnitude", "conv_layout"):
        values = {json.dumps(cfg[key]) for cfg in layers.values()}
        if len(values) == 1:
            meta[key] = values.pop()
    return meta


def _pack(R: torch.Tensor) -> torch.Tensor:
    """The strict upper triangles of the (..., b, b) blocks of ``R``, in ``triu_indices`` order: (..., n)."""
    b = R.shape[-1]
    rows, cols = torch.triu_indices(b, b, 1, device=R.device)
    return R[..., rows, cols]


def _unpack(packed: torch.Tensor) -> torch.Tensor:
    """The skew blocks (..., b, b) of packed upper triangles (..., n): zero diagonal, ``R_ji = 0 - R_ij``."""
    n = packed.shape[-1]
    b = round((1 + (1 + 8 * n) ** 0.5) / 2)
    if b * (b - 1) // 2 != n:
        raise ValueError(f"a packed R has {n} entries per block, not b(b-1)/2 for any block size b")
    rows, cols = torch.triu_indices(b, b, 1, device=packed.device)
    R = packed.new_zeros(*packed.shape[:-1], b, b)
    R[..., rows, cols] = packed
    R[..., cols, rows] = 0.0 - packed  # 0 - x, not -x: a +0.0 entry mirrors to +0.0, as in training
    return R


def _packs_exactly(R: torch.Tensor) -> bool:
    """Whether ``_unpack(_pack(R))`` is ``R`` bit for bit (R exactly skew: what zero init and training keep)."""
    bits = {2: torch.int16, 4: torch.int32, 8: torch.int64}[R.element_size()]
    return torch.equal(_unpack(_pack(R)).view(bits), R.view(bits))


def adapter_file(model: nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata an adapter is stored as: every R packed (format version 2) when all are exactly
    skew, else the full ``adapter_state_dict`` (version 1) for the whole file, so a file always reloads to the
    same R bit for bit. Training keeps R skew; a user-built R with a symmetric part (which the rotation ignores,
    but COFT's radius ``||R||_F`` does not) is kept whole rather than refused."""
    sd, meta = adapter_state_dict(model), adapter_metadata(model)
    if not all(_packs_exactly(v) for k, v in sd.items() if k.endswith(".R")):
        return sd, meta
    packed = {k: _pack(v) if k.endswith(".R") else v for k, v in sd.items()}
    return packed, {**meta, "format_version": PACKED_VERSION}


def unpack_adapter(sd: dict[str, torch.Tensor], meta: dict[str, str]) -> dict[str, torch.Tensor]:
    """Stored adapter tensors with every packed R (version 2) unpacked to its full skew R; an R already full,
    and every tensor of a version 1 file, is returned as it is."""
    if meta.get("format_version") != PACKED_VERSION:
        return dict(sd)
    layers = json.loads(meta["layers"])
    out = {}
    for key, value in sd.items():
        name = key.removesuffix(".R")
        packed_dim = 1 if layers.get(name, {}).get("block_share") else 2
        out[key] = _unpack(value) if key.endswith(".R") and value.dim() == packed_dim else value
    return out


def load_adapter_state_dict(model: nn.Module, sd: dict[str, torch.Tensor]) -> None:
    """Copy adapter tensors into the model's OFT layers; names and shapes must match exactly."""
    own = adapter_state_dict(model)
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    if missing or unexpected:
        first = f"missing {missing[0]!r}" if missing else f"unexpected {unexpected[0]!r}"
        raise ValueError(
            f"adapter does not fit this model: {first} ({len(missing)} missing, "
            f"{len(unexpected)} unexpected); was it trained with other targets?"
        )
    for key, value in sd.items():
        if value.shape != own[key].shape:
            raise ValueError(
                f"adapter does not fit this model: {key} has shape {tuple(value.shape)}, "
                f"the model expects {tuple(own[key].shape)} (different r, block_share or width?)"
            )
        if not torch.isfinite(value).all():
            raise ValueError(f"adapter tensor {key} contains NaN/inf; the file comes from a diverged run")
    with torch.no_grad():
        for key, value in sd.items():
            own[key].copy_(value)


def save_adapter(
    model: nn.Module, path: str | os.PathLike, extra_metadata: dict[str, str] | None = None
) -> Path:
    """Write the adapter atomically as safetensors with its metadata: a hidden temporary beside ``path``, flushed
    to the device, then renamed over it (on any error it is removed and ``path`` is untouched). ``oft_layers``
    is torch-only, so this is its own small copy of ``oft.common.files.atomic_write``."""
    path = Path(path)
    tensors, meta = adapter_file(model)
    meta.update({k: str(v) for k, v in (extra_metadata or {}).items()})
    tensors = {k: v.contiguous().cpu() for k, v in tensors.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        save_file(tensors, str(tmp), metadata=meta)
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())  # the rename is durable only once the data is
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_adapter(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors (every R full, as in ``adapter_state_dict``, whatever the file's version) and metadata of an
    adapter file, with a clear error for anything that is not one."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"adapter file not found: {path}")
    try:
        handle = safe_open(str(path), framework="pt")
    except Exception as err:  # safetensors raises its own error types for truncated or foreign files
        raise ValueError(
            f"{path} is not a readable safetensors file ({err}); re-save or re-download it"
        ) from None
    with handle as f:
        meta = f.metadata() or {}
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path} is not an OFT adapter file (no '{FORMAT}' metadata)")
        if meta.get("format_version") not in FORMAT_VERSIONS:
            raise ValueError(
                f"{path} has adapter format version {meta.get('format_version')}, "
                f"this code reads versions {', '.join(FORMAT_VERSIONS)}"
            )
        return unpack_adapter({k: f.get_tensor(k) for k in f.keys()}, meta), meta


def load_adapter(model: nn.Module, path: str | os.PathLike) -> dict[str, str]:
    """Load an adapter file into ``model``. Layers without OFT are wrapped first, with the options recorded in
    the file (so a plain pipeline UNet takes a trained adapter directly). Returns the file's metadata."""
    sd, meta = read_adapter(path)
    apply_adapter(model, sd, meta)
    return meta


def apply_adapter(model: nn.Module, sd: dict[str, torch.Tensor], meta: dict[str, str]) -> None:
    """``load_adapter`` for tensors and metadata already in memory (``adapter_file``'s, or ``adapter_state_dict``
    + ``adapter_metadata``, stored inside a larger file, e.g. with a control encoder): wrap missing layers as
    recorded, then load (packed R unpacked)."""
    layers = json.loads(meta["layers"])
    present = dict(oft_modules(model))
    modules = dict(model.named_modules())
    for name, options in layers.items():
        if name in present:
            if present[name].config != OFTConfig(**options):
                raise ValueError(
                    f"adapter layer {name} was trained with {options}, the model's OFT layer has "
                    f"{present[name].config.to_dict()}"
                )
            continue
        if name not in modules:
            raise ValueError(f"adapter does not fit this model: it has no module {name!r}")
        _set_submodule(model, name, wrap(modules[name], OFTConfig(**options), name))
    load_adapter_state_dict(model, unpack_adapter(sd, meta))
