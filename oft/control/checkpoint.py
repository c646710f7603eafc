"""The control-model file: OFT rotations + hint encoder + the facts needed to rebuild them on their base SD.

One format for every stage (SPEC §3 flow): ``tool_add_control_oft.py`` writes the initial one (R = 0, zero conv),
``train.py`` exports the trained one, ``train_with_norm.py`` the magnitude-fitted one, and
``test_oft_parallel.py`` samples from any of them.

- ``.safetensors``: tensors ``oft.<unet layer>.R`` (packed in adapter format 2, ``oft_layers.adapter_file``) and
  ``.s``, ``hint.<param>``; string metadata = the adapter
  metadata of ``oft_layers`` plus ``control_format``, ``hint_channels``, ``hint_widths`` (JSON; absent in files written before it:
  ControlNet's), ``base_identity``, ``base_path``, and
  for trained files ``task``/``global_step``. The base SD is referenced, not copied.
- any other suffix (e.g. the reference's ``control_sd15_ini_oft.ckpt``): a torch file
  ``{"state_dict": <base SD in LDM layout, full mode only>, "oft_control": {"tensors": ..., "metadata": ...}}``,
  so a full file opens as a plain SD checkpoint too (``oft.sd.load_sd``) while also carrying the control model.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

import oft_layers
from oft.common.files import atomic_torch_save, atomic_write
from oft.common.safe_load import load_error_line
from oft.control.hint import HINT_WIDTHS, HintEncoder
from oft.sd import SDModels, load_sd
from oft.sd.identity import identity_mismatch_hint
from oft.sd.loading import to_ldm_state_dict
from oft.sd.targets import CONTROL_TARGET_SET, target_set

CONTROL_FORMAT = "1"
BUILD_HINT = "build one with `python oft-control/tool_add_control_oft.py --input_path <SD checkpoint> --output_path <file>`"


class ControlCheckpointError(ValueError):
    """A control-model file is missing, foreign, or does not fit the base it is loaded on."""


@dataclass
class ControlModel:
    """A base SD with OFT injected into its UNet, the hint encoder, and the file's metadata."""

    sd: SDModels
    hint: HintEncoder
    meta: dict[str, str]


def new_control_model(
    sd: SDModels,
    *,
    r: int,
    eps: float | None,
    coft: bool,
    block_share: bool,
    hint_widths: tuple[int, ...] = HINT_WIDTHS,
    targets: str = CONTROL_TARGET_SET,
    conv_layout: str = "flat",
) -> ControlModel:
    """Freeze ``sd``, inject OFT (R = 0) on the target set ``targets`` (``oft.sd.targets.TARGET_SETS``) and add
    a fresh hint encoder (conv channels ``hint_widths``): the step-0 model."""
    sd.freeze()
    oft_layers.inject(
        sd.unet,
        target_set(targets),
        r=r,
        eps=eps,
        coft=coft,
        block_share=block_share,
        conv_layout=conv_layout,
    )
    hint = HintEncoder(sd.unet.config.block_out_channels[0], hint_widths).to(sd.device)
    return ControlModel(sd, hint, {"target_set": targets})


def control_tensors(model: ControlModel, adapter: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """What is new relative to the base: ``oft.*`` adapter tensors as stored (``oft_layers.adapter_file``) and
    ``hint.*`` encoder weights (CPU, float32)."""
    out = {f"oft.{k}": v for k, v in adapter.items()}
    out.update({f"hint.{k}": v.detach() for k, v in model.hint.state_dict().items()})
    return {k: v.detach().float().cpu().contiguous().clone() for k, v in out.items()}


def save_control(
    model: ControlModel,
    path: str | os.PathLike,
    *,
    base_path: str | os.PathLike | None = None,
    base_state: dict[str, torch.Tensor] | None = None,
    extra: dict[str, object] | None = None,
) -> Path:
    """Write ``model`` atomically; ``base_state`` (the base SD in LDM layout) is copied in (torch format only)."""
    path = Path(path)
    adapter, adapter_meta = oft_layers.adapter_file(model.sd.unet)
    meta = {**model.meta, **adapter_meta}
    meta.update(
        control_format=CONTROL_FORMAT,
        hint_channels=str(model.hint.out_channels),
        hint_widths=json.dumps(list(model.hint.widths)),
        base_identity=model.sd.identity,
        base_path=str(Path(base_path).resolve()) if base_path else model.meta.get("base_path", ""),
        **{k: str(v) for k, v in (extra or {}).items()},
    )
    tensors = control_tensors(model, adapter)
    if path.suffix == ".safetensors":
        if base_state:
            raise ControlCheckpointError(
                f"{path}: a .safetensors control file holds only the new weights; use a .ckpt name to copy the "
                "base SD into it, or --adapter-only to reference the base"
            )
        return atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))
    payload = {"state_dict": base_state or {}, "oft_control": {"tensors": tensors, "metadata": meta}}
    return atomic_torch_save(path, payload)


def read_control(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str], bool]:
    """(tensors, metadata, has_base) of a control-model file, or one clear error for anything else."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"control model not found: {path}; {BUILD_HINT} (or train one with train.py)")
    try:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            has_base = False
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            inner = obj.get("oft_control") if isinstance(obj, dict) else None
            tensors, meta = (inner["tensors"], inner["metadata"]) if isinstance(inner, dict) else ({}, {})
            has_base = bool(obj.get("state_dict")) if isinstance(obj, dict) else False
    except ControlCheckpointError:
        raise
    except Exception as err:  # noqa: BLE001 - any unreadable file gets the same one-line explanation
        raise ControlCheckpointError(f"cannot read {path} ({load_error_line(err)}); {BUILD_HINT}") from None
    if meta.get("control_format") != CONTROL_FORMAT:
        raise ControlCheckpointError(
            f"{path} is not an oft-control model file (no control metadata); {BUILD_HINT}"
        )
    return tensors, meta, has_base


def check_flags_match(model_path: str | os.PathLike, **flags: object) -> dict[str, str]:
    """Compare the flags the user gave (None: not given) with the hyperparameters recorded in the control file;
    one clear error on a mismatch. Returns the file's metadata."""
    _, meta, _ = read_control(model_path)
    recorded = {
        k: json.loads(meta[k]) for k in ("r", "eps", "coft", "block_share", "conv_layout") if k in meta
    }
    # files written before target sets existed all hold the default set
    recorded["targets"] = meta.get("target_set", CONTROL_TARGET_SET)
    for key, value in flags.items():
        if value is None or key not in recorded:
            continue
        if key == "eps" and not recorded.get("coft"):
            continue  # eps means nothing for plain OFT
        if recorded[key] != value:
            raise ValueError(
                f"{model_path} was built with --{key}={recorded[key]}, not {value}: pass the flags it was built "
                "with, or rebuild it with tool_add_control_oft.py"
            )
    return meta


def load_control(
    path: str | os.PathLike,
    base: str | os.PathLike | SDModels | None = None,
    *,
    device: str | torch.device = "cpu",
) -> ControlModel:
    """Rebuild the control model of ``path`` on its base SD (frozen, on ``device``).

    The base is ``base`` if given (a path or loaded ``SDModels``), else the copy inside a full file, else the
    file's ``base_path``; its identity must equal the one recorded at build time.
    """
    tensors, meta, has_base = read_control(path)
    recorded = meta.get("base_path") or "copied in the file"
    if isinstance(base, SDModels):
        sd = base
    else:
        source = base or (path if has_base else meta.get("base_path"))
        if not source:
            raise ControlCheckpointError(
                f"{path} records no base SD path; pass the SD checkpoint it was built on"
            )
        sd = load_base(source)
        meta = {**meta, "base_path": str(Path(source).resolve())}  # files written from here reference it
    if not sd.same_base(meta["base_identity"]):
        raise ControlCheckpointError(
            f"{path} was built on base SD {meta['base_identity']!r} ({recorded}), not on {sd.identity!r} "
            f"({identity_mismatch_hint(meta['base_identity'])}); pass the same SD checkpoint, or rebuild with "
            "tool_add_control_oft.py"
        )
    if sd.identity != meta["base_identity"]:
        # matched in the legacy path+size+mtime form: carry the recorded form, so that this run's training
        # checkpoints and exports (compared as plain strings) keep matching the files written before
        sd.identity = meta["base_identity"]
    sd.freeze()
    oft_layers.apply_adapter(sd.unet, {k[4:]: v for k, v in tensors.items() if k.startswith("oft.")}, meta)
    widths = tuple(json.loads(meta["hint_widths"])) if "hint_widths" in meta else HINT_WIDTHS
    hint = HintEncoder(int(meta["hint_channels"]), widths)
    hint.load_state_dict({k[5:]: v for k, v in tensors.items() if k.startswith("hint.")})
    sd.to(device)
    return ControlModel(sd, hint.to(device), meta)


def load_base(source: str | os.PathLike) -> SDModels:
    """The base SD from an SD checkpoint, a diffusers folder, or a full control file (which carries a copy of
    its base: the copy keeps the identity of the file it was copied from)."""
    sd = load_sd(source)
    if Path(source).is_file() and Path(source).suffix != ".safetensors":
        try:
            _, meta, has_base = read_control(source)
        except ControlCheckpointError:  # a plain SD checkpoint
            return sd
        if has_base:
            sd.identity = meta["base_identity"]
    return sd


def build_initial(
    input_path: str | os.PathLike,
    output_path: str | os.PathLike,
    *,
    r: int,
    eps: float | None,
    coft: bool,
    block_share: bool = False,
    adapter_only: bool = False,
    hint_widths: tuple[int, ...] = HINT_WIDTHS,
    targets: str = CONTROL_TARGET_SET,
    conv_layout: str = "flat",
) -> Path:
    """``tool_add_control_oft.py``: SD checkpoint (single file or diffusers folder) -> initial control file."""
    sd = load_sd(input_path)
    # the base in LDM layout before injection (same tensors, no copy): what a full file carries
    base_state = None if adapter_only else to_ldm_state_dict(sd)
    model = new_control_model(
        sd,
        r=r,
        eps=eps,
        coft=coft,
        block_share=block_share,
        hint_widths=hint_widths,
        targets=targets,
        conv_layout=conv_layout,
    )
    return save_control(model, output_path, base_path=input_path, base_state=base_state)
