"""Resumable checkpoints of a DreamBooth run: saving (atomically) and rotating them, finding the one to resume,
reading its state safely and restoring it, and bringing the run folder back to that step.

A checkpoint ``checkpoint-NNNNNN/`` holds the adapter of step NNNNNN and ``state.pt`` (optimizer and schedule
state, meta, OFT path cache): tensors and plain values only, read with ``weights_only=True``. Data order, crops
and noise are functions of the step alone (``oft.db.data``), so nothing else needs saving.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

import oft_layers
from oft.common.files import atomic_folder, atomic_torch_save, atomic_write_bytes
from oft.common.safe_load import load_error_line
from oft.db.layout import ADAPTER_NAME, CHECKPOINT_PREFIX, STATE_NAME, VALIDATION_DIR

STATE_KEYS = ("step", "optimizer", "lr_scheduler", "meta")
TORN = f".tmp-{CHECKPOINT_PREFIX}*"  # checkpoint writes a kill interrupted (never resumed from)


def checkpoint_step(path: Path) -> int:
    """The step of ``checkpoint-NNNNNN``."""
    return int(path.name[len(CHECKPOINT_PREFIX) :])


def is_checkpoint(path: Path) -> bool:
    """A complete checkpoint folder: its state and its adapter are there."""
    return (path / STATE_NAME).is_file() and (path / ADAPTER_NAME).is_file()


def list_checkpoints(output_dir: Path, complete: bool = True) -> list[Path]:
    """Checkpoint folders, oldest first: complete ones (state and adapter), or all (``complete=False``, e.g.
    one that a kill left half deleted, for removal). Unfinished writes (``.tmp-checkpoint-*``) never count."""
    found = [
        p
        for p in output_dir.glob(CHECKPOINT_PREFIX + "*")
        if p.is_dir() and p.name[len(CHECKPOINT_PREFIX) :].isdigit() and (not complete or is_checkpoint(p))
    ]
    return sorted(found, key=checkpoint_step)


def remove_folders(paths: list[Path]) -> list[Path]:
    """Delete ``paths`` (folders; already gone is fine); returns them."""
    for path in paths:
        shutil.rmtree(path, ignore_errors=True)
    return paths


def remove_checkpoints(output_dir: Path) -> list[str]:
    """Delete every checkpoint of ``output_dir``, half-deleted and torn writes included; returns the names of
    the checkpoint folders deleted (torn writes are not named)."""
    checkpoints = list_checkpoints(output_dir, complete=False)
    remove_folders([*checkpoints, *output_dir.glob(TORN)])
    return [p.name for p in checkpoints]


def remove_later_checkpoints(output_dir: Path, step: int) -> list[Path]:
    """Delete the checkpoints after ``step`` (another history once an older checkpoint is resumed)."""
    return remove_folders(
        [p for p in list_checkpoints(output_dir, complete=False) if checkpoint_step(p) > step]
    )


def find_checkpoint(output_dir: Path, spec: str) -> Path | None:
    """``"latest"`` -> newest complete checkpoint (None if none yet); ``"none"``/``""`` -> None; a path -> that
    folder (error if it holds no checkpoint)."""
    if spec.strip().lower() in ("", "none"):
        return None
    if spec == "latest":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(spec)
    if not is_checkpoint(path):
        raise FileNotFoundError(
            f"--resume_from_checkpoint {spec}: no checkpoint there (expected {path}/{STATE_NAME} and "
            f"{path}/{ADAPTER_NAME}); use 'latest', 'none' or a checkpoint-NNNNNN folder"
        )
    return path


def read_state(checkpoint: Path) -> dict:
    """``checkpoint/state.pt`` (step, optimizer and scheduler state, meta, path cache) as tensors and plain
    values only: ``weights_only=True`` never runs code from the file; anything else is one clear error."""
    path = checkpoint / STATE_NAME
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickled objects, truncated or foreign files: one line for all
        raise ValueError(
            f"cannot resume from {path}: {load_error_line(err)}; delete {checkpoint} or pass "
            "--resume_from_checkpoint none to start over"
        ) from None
    if (
        not isinstance(state, dict)
        or any(k not in state for k in STATE_KEYS)
        or not isinstance(state["meta"], dict)
    ):
        raise ValueError(
            f"cannot resume from {path}: not a DreamBooth-OFT checkpoint (expected the keys {STATE_KEYS}); "
            f"delete {checkpoint} or pass --resume_from_checkpoint none to start over"
        )
    return state


def save_adapter(unet: torch.nn.Module, path: Path, meta: dict) -> None:
    """The trained R blocks of ``unet`` as ``path`` (safetensors), ``meta`` as its string metadata."""
    oft_layers.save_adapter(unet, path, {k: str(v) for k, v in meta.items()})


def save_checkpoint(
    output_dir: Path, step: int, unet, optimizer, lr_scheduler, meta: dict, limit: int
) -> Path:
    """Write ``checkpoint-{step}/`` (adapter, optimizer + scheduler state, config) atomically; rotate old ones."""
    final = output_dir / f"{CHECKPOINT_PREFIX}{step:06d}"

    def write(tmp: Path) -> None:
        save_adapter(unet, tmp / ADAPTER_NAME, meta)
        state = {
            "step": step,
            "optimizer": optimizer.state_dict(),
            "lr_scheduler": lr_scheduler.state_dict(),
            "meta": meta,
            "oft_path_cache": oft_layers.path_cache(),  # a resumed run computes (and rounds) the same way
        }
        atomic_torch_save(tmp / STATE_NAME, state)

    atomic_folder(final, write)
    if limit > 0:
        remove_folders(list_checkpoints(output_dir, complete=False)[:-limit])
    return final


def restore_checkpoint(checkpoint: Path, state: dict, unet, optimizer, lr_scheduler) -> int:
    """Load a checkpoint (its folder and its ``read_state``) into the injected ``unet``, the optimizer and the
    schedule, and its OFT path cache; returns its step."""
    oft_layers.load_adapter(unet, checkpoint / ADAPTER_NAME)
    optimizer.load_state_dict(state["optimizer"])
    lr_scheduler.load_state_dict(state["lr_scheduler"])
    oft_layers.load_path_cache(state.get("oft_path_cache", {}))
    return int(state["step"])


def rewrite_log(path: Path, through_step: int) -> int:
    """Keep the records of steps ``1..through_step`` of ``log.jsonl`` (the last one of each step, in step order),
    atomically: a resumed run re-trains the later steps and logs them again, so each step appears once. A line
    cut short by a kill is dropped. Returns how many records were kept."""
    records: dict[int, str] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                step = json.loads(line)["step"]
            except (ValueError, KeyError, TypeError):
                continue
            if isinstance(step, int) and 1 <= step <= through_step:
                records[step] = line
    atomic_write_bytes(path, "".join(records[k] + "\n" for k in sorted(records)).encode())
    return len(records)


def discard_previous_run(out: Path) -> list[str]:
    """Delete what an earlier run left in ``out`` (checkpoints, adapter, validation images; the log is rewritten
    by the caller) so that nothing of it can be resumed or mistaken for the new run's. Returns what it deleted."""
    gone = remove_checkpoints(out)
    for name in (ADAPTER_NAME, VALIDATION_DIR):
        if (out / name).exists():
            gone.append(name)
            if (out / name).is_dir():
                shutil.rmtree(out / name)
            else:
                (out / name).unlink()
    return gone
