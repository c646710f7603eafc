"""Datasets of oft-control: the paper's tasks read from the reference's on-disk layout, and the synthetic task.

Every item is ``{"jpg": target (3, H, W) in [-1, 1], "hint": control (3, H, W) in [0, 1], "txt": caption,
"index": int}`` (the reference's keys, channels first). Problems surface at construction with one line naming
the path and the setup script.

Item ``i`` of a validation split is always line ``i`` of its caption file: the sampler writes it as
``image_{i}.png`` and the evaluators look up its label by that position, so a missing or undecodable file there
raises ``UnreadableItemError`` (index and path) instead of letting another item take its place. Only the
training split, whose order is shuffled anyway, drops items with missing files and replaces an undecodable
one by the next readable item (counted, warned), so a single bad file never stops training hours in.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset

from oft.common.images import read_rgb
from oft.common.paths import data_root
from oft.specs import synthetic
from oft.specs.tasks import Task, get_task, read_captions

SYNTHETIC = "synthetic"
SYNTHETIC_SIZES = {"train": 64, "val": 16}  # default numbers of synthetic items per split
_SPLIT_SEED = {"train": 0, "val": 1}  # synthetic val items come from another seed stream than train


class DataError(FileNotFoundError):
    """A dataset folder, caption file or image is missing or unreadable; the message says how to fix it."""


class UnreadableItemError(DataError):
    """Item ``index`` of an index-keeping dataset has a file ``path`` that is missing or cannot be decoded."""

    def __init__(self, message: str, index: int, path: Path) -> None:
        super().__init__(message)
        self.index, self.path = index, path

    def __reduce__(self):  # picklable with its fields (DataLoader and spawned workers pass errors on)
        return type(self), (str(self), self.index, self.path)


def _fix_hint(task: Task) -> str:
    if task.setup_script:
        return (
            f"run `bash {task.setup_script}` (or point --data_root at the folder holding {task.dataset_dir}/)"
        )
    return (
        f"this task has no download script: build {task.dataset_dir}/ as the README's data section describes "
        "(or point --data_root at it)"
    )


def to_item(target: np.ndarray, hint: np.ndarray, caption: str, index: int) -> dict:
    """uint8 arrays -> the item dict: target (H, W, 3) RGB -> [-1, 1]; hint (H, W) or (H, W, 3) -> [0, 1], 3 ch."""
    if hint.ndim == 2:
        hint = np.repeat(hint[:, :, None], 3, axis=2)
    jpg = torch.from_numpy(np.ascontiguousarray(target)).permute(2, 0, 1).float() / 127.5 - 1.0
    hint_t = torch.from_numpy(np.ascontiguousarray(hint)).permute(2, 0, 1).float() / 255.0
    return {"jpg": jpg, "hint": hint_t, "txt": caption, "index": index}


def read_resized(path: Path, size: int, interpolation: int) -> np.ndarray:
    """An image file as (size, size, 3) uint8 RGB; raises ``DataError`` when it cannot be decoded."""
    try:
        image = read_rgb(path)
    except ValueError as err:
        raise DataError(str(err)) from None
    if image.shape[:2] != (size, size):
        image = cv2.resize(image, (size, size), interpolation=interpolation)
    return image


class ControlDataset(Dataset):
    """One paper task (``TASKS[name]``) and split, as the reference laid it out on disk.

    ``full=True`` reads the full validation list (``prompt_val_blip_full.json``), as the evaluation did.
    Images are resized to ``resolution`` when they differ (landmark targets are 1024 px, SPEC §3).
    ``keep_indices`` (default: every split but "train") makes item ``i`` caption entry ``i`` always: an entry
    whose files are missing or undecodable stays in place and raises ``UnreadableItemError`` when read.
    ``first``: read only the first ``first`` entries of the caption file (ablation_segm's ``--n_samples``).
    """

    def __init__(
        self,
        task: str | Task,
        split: str = "train",
        root: str | Path | None = None,
        resolution: int = 512,
        full: bool = False,
        keep_indices: bool | None = None,
        first: int | None = None,
    ) -> None:
        self.task = get_task(task) if isinstance(task, str) else task
        self.split, self.resolution = split, resolution
        self.keep_indices = split != "train" if keep_indices is None else keep_indices
        self.root = data_root(root) / self.task.dataset_dir
        if not self.root.is_dir():
            raise DataError(
                f"missing data folder {self.root} for --control {self.task.name}: {_fix_hint(self.task)}"
            )
        self.captions = captions = data_root(root) / self.task.caption_file(split, full)
        if not captions.is_file():
            raise DataError(
                f"missing caption file {captions} for --control {self.task.name}: {_fix_hint(self.task)}"
            )
        try:
            entries = read_captions(captions, self.task.caption_format)
            if first is not None and first > len(entries):
                raise ValueError(f"--n_samples {first} is more than the {len(entries):,} items of {captions}")
            entries = entries[:first]
            files = [self.task.item_files(e, split) for e in entries]
            prompts = [e["prompt"] for e in entries]
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise DataError(
                f"{captions} is not a {self.task.caption_format} caption file of this task ({err}): {_fix_hint(self.task)}"
            ) from None
        self.items: list[tuple[Path, Path, str]] = []
        missing: list[Path] = []
        complete = 0
        for (hint, target), prompt in zip(files, prompts, strict=True):
            paths = (self.root / hint, self.root / target)
            absent = [p for p in paths if not p.is_file()]
            missing += absent
            complete += not absent
            if not absent or self.keep_indices:  # kept in place: reading it names the missing file
                self.items.append((*paths, prompt))
        if not complete:
            raise DataError(
                f"none of the {len(entries)} items of {captions} has its files (first missing: "
                f"{missing[0] if missing else 'no entries'}): {_fix_hint(self.task)}"
            )
        if missing and not self.keep_indices:
            warnings.warn(
                f"{captions}: skipping {len(entries) - complete} of {len(entries)} items whose files are "
                f"missing (first: {missing[0]}); re-run the setup script to complete the data",
                stacklevel=2,
            )
        self.skipped = 0  # items that failed to decode (per process: each DataLoader worker counts its own)

    def __len__(self) -> int:
        return len(self.items)

    def load(self, index: int) -> dict:
        """Item ``index`` as read from disk; ``UnreadableItemError`` (index, path) if a file is absent or bad."""
        hint_path, target_path, prompt = self.items[index]
        images = []
        for path, interpolation in ((target_path, cv2.INTER_AREA), (hint_path, cv2.INTER_NEAREST)):
            if not path.is_file():
                raise UnreadableItemError(
                    f"item {index} of {self.captions}: missing file {path}", index, path
                )
            try:  # nearest-neighbour for the hint keeps the label colours of segm maps
                images.append(read_resized(path, self.resolution, interpolation))
            except DataError as err:
                raise UnreadableItemError(f"item {index} of {self.captions}: {err}", index, path) from None
        return to_item(*images, prompt, index)

    def __getitem__(self, index: int) -> dict:
        if self.keep_indices:
            return self.load(index)
        # Training: an undecodable file is replaced by the next readable item (counted, warned), not a crash.
        for offset in range(len(self.items)):
            try:
                return self.load((index + offset) % len(self.items))
            except DataError as err:
                self.skipped += 1
                warnings.warn(f"{err}; skipped ({self.skipped} so far in this process)", stacklevel=2)
        raise DataError(f"no image of {self.root} could be decoded: {_fix_hint(self.task)}")


class SyntheticDataset(Dataset):
    """The synthetic task (``oft.specs.synthetic``): ``length`` items of ``size`` px, control ``hint_kind``."""

    def __init__(
        self,
        split: str = "train",
        length: int | None = None,
        size: int = 64,
        hint_kind: str = "canny",
        seed: int = 0,
    ) -> None:
        if hint_kind not in synthetic.HINT_KINDS:
            raise ValueError(f"--synthetic_hint must be one of {synthetic.HINT_KINDS}, got {hint_kind!r}")
        self.split, self.size, self.hint_kind = split, size, hint_kind
        self.seed = seed * len(_SPLIT_SEED) + _SPLIT_SEED[split]
        self.length = SYNTHETIC_SIZES[split] if length is None else length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict:
        target, caption, controls, _ = synthetic.make_item(index, self.seed, self.size)
        return to_item(target, controls[self.hint_kind], caption, index)


def check_n_samples(control: str, n_samples: int | None) -> None:
    """``--n_samples`` belongs to the tasks that train on the first N items (ablation_segm), which need it."""
    repeats = None if control == SYNTHETIC else get_task(control).repeats
    if repeats is None and n_samples is not None:
        raise ValueError(
            f"--n_samples sets the training-set size of --control ablation_segm only (Fig. 1), not --control {control}"
        )
    if repeats is not None and (n_samples is None or n_samples < 1):
        raise ValueError(
            f"--control {control} needs --n_samples N >= 1 (got {n_samples}): it trains on the first N items of "
            f"its training list, {repeats.value} times over"
        )


def build_dataset(
    control: str,
    split: str,
    *,
    root: str | Path | None = None,
    resolution: int = 512,
    full: bool = False,
    synthetic_hint: str = "canny",
    synthetic_length: int | None = None,
    seed: int = 0,
    keep_indices: bool | None = None,
    n_samples: int | None = None,
) -> Dataset:
    """The dataset of ``--control`` ``control`` (a ``TASKS`` name or ``"synthetic"``) for ``split``
    (``keep_indices``: see ``ControlDataset``; synthetic items are generated, so always in place).

    ablation_segm's training split is the first ``n_samples`` items of the training list, each repeated
    ``Task.repeats`` times (as the reference's AblationADE20kSegmDataset); its other splits are segm's.
    """
    check_n_samples(control, n_samples)
    if control == SYNTHETIC:
        return SyntheticDataset(split, synthetic_length, resolution, synthetic_hint, seed)
    repeats = get_task(control).repeats
    if split != "train" or repeats is None:
        return ControlDataset(control, split, root, resolution, full, keep_indices)
    first = ControlDataset(control, split, root, resolution, full, keep_indices, first=n_samples)
    return ConcatDataset([first] * repeats.value)


def collate(items: list[dict]) -> dict:
    """Stack tensors, keep captions as a list of str."""
    return {
        "jpg": torch.stack([i["jpg"] for i in items]),
        "hint": torch.stack([i["hint"] for i in items]),
        "txt": [i["txt"] for i in items],
        "index": torch.tensor([i["index"] for i in items]),
    }
