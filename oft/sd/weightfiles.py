"""Weight files on disk: reading and writing single-file state dicts (``.safetensors``, ``.ckpt``), their
metadata, and where a diffusers folder keeps each part's weights. Tensors only: no code runs, no model is built.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from oft.common.files import atomic_torch_save, atomic_write
from oft.common.safe_load import load_error_line, refused_pickle

UNREADABLE_FIX = (
    "it is truncated or corrupt (an interrupted download or copy?): download it again (SD1.5: "
    "`bash scripts/download_model.sh`, which verifies the file) or pass another checkpoint"
)

_DIFFUSERS_WEIGHTS = [
    "diffusion_pytorch_model.safetensors",
    "diffusion_pytorch_model.fp16.safetensors",
    "diffusion_pytorch_model.bin",
    "diffusion_pytorch_model.fp16.bin",
]
_TRANSFORMERS_WEIGHTS = [
    "model.safetensors",
    "model.fp16.safetensors",
    "pytorch_model.bin",
    "pytorch_model.fp16.bin",
]
# Weight file names of a diffusers folder's parts, in order of preference (``text_encoder_2``: SDXL only).
WEIGHT_NAMES = {
    "unet": _DIFFUSERS_WEIGHTS,
    "vae": _DIFFUSERS_WEIGHTS,
    "text_encoder": _TRANSFORMERS_WEIGHTS,
    "text_encoder_2": _TRANSFORMERS_WEIGHTS,
}


def part_weights(folder: Path, part: str) -> Path | None:
    """The weight file a diffusers ``folder`` holds for ``part`` (the first of ``WEIGHT_NAMES[part]``), if any."""
    return next((folder / part / n for n in WEIGHT_NAMES[part] if (folder / part / n).is_file()), None)


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


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata of a ``.safetensors`` file; ``{}`` for other files (a ``.ckpt`` records none)."""
    path = Path(path)
    if path.suffix != ".safetensors":
        return {}
    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def read_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]] | None:
    """The tensor names and shapes of a ``.safetensors`` file from its header alone (no tensor is read); None
    for other files (a ``.ckpt`` must be unpickled to list them) or one that does not open."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return None
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception:  # unreadable: the loader reports it with its one line
        return None


def write_single_file(state: dict[str, Tensor], path: str | os.PathLike, metadata: dict[str, str]) -> Path:
    """Write ``state`` as ``.safetensors`` (with ``metadata``), else as a ``.ckpt`` with ``{"state_dict": ...}``.

    Written atomically (temporary name, then rename). Tensors are made contiguous and unshared, as safetensors
    requires. A ``.ckpt`` keeps no metadata.
    """
    path = Path(path)
    state = {k: v.detach().contiguous().clone() for k, v in state.items()}
    if path.suffix == ".safetensors":
        return atomic_write(
            path, lambda tmp: save_file(state, str(tmp), metadata={"format": "pt", **metadata})
        )
    return atomic_torch_save(path, {"state_dict": state})
