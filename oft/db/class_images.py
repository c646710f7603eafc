"""Prior-preservation class images: generated once per class by the base model, cached and shared by subjects.

Two recipes (``class_recipe``, flag ``--class_images``): ``reference``, the default, makes them as the reference's
``train_dreambooth_oft.py`` did with diffusers' stock pipeline (df2b263, lines 617-650): SD1.5's PNDM scheduler,
50 steps, CFG 7.5 (on SD2.1 and SDXL their own stock pipelines' sampler, ``oft.specs.sampling.STOCK_CLASS``), float16 on a GPU (float32 on a CPU, as its line 618 chose: CPUs lack float16 kernels), saved
as JPEG by PIL with its defaults; ``ddim`` makes them with DDIM 50, CFG 7.5, in the run's dtype, saved as PNG.
Unlike the reference (one global random stream), image ``k`` has its own seed ``seed + k``.

The folder ``<class_root>/<class noun>`` holds ``0000.jpg, 0001.jpg, ...`` (``.png`` with ``ddim``) and
``class_images.json`` (prompt, recipe, base model). Image ``k`` is always generated in the same batch (the
fixed chunks of ``batch_size``), so a generation interrupted at any point and run again makes exactly the images
an uninterrupted one made. A file lock serialises processes that need the same class (the local queue runs
several subjects of one class at once); files appear atomically (hidden temporary name, then rename), and
hidden names are never read as images. A folder made for another prompt or recipe is refused.
"""

from __future__ import annotations

import copy
import fcntl
import json
import os
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm.auto import tqdm

from oft.common.files import atomic_write_bytes, temporaries
from oft.common.images import list_images, write_jpg, write_png
from oft.db.config import CLASS_IMAGES
from oft.sd.models import SDModels
from oft.sd.sampling import sample
from oft.specs.sampling import DREAMBOOTH_CLASS_DDIM, STOCK_CLASS, SamplerPreset


@dataclass(frozen=True)
class ClassImageRecipe:
    """How class images are made: the sampler, the file type, and whether a GPU makes them in float16."""

    sampling: SamplerPreset
    suffix: str  # ".jpg" or ".png"
    half_on_gpu: bool  # float16 on CUDA whatever the run's dtype (the stock pipeline's torch_dtype)

    def dtype(self, device: torch.device, run_dtype: torch.dtype) -> torch.dtype:
        """The dtype the images are generated in on ``device`` for a run whose frozen weights are ``run_dtype``."""
        if not self.half_on_gpu:
            return run_dtype
        return torch.float16 if device.type == "cuda" else torch.float32

    def record(self) -> dict:
        """The settings ``class_images.json`` stores and a reused folder must match."""
        return {**self.sampling.kwargs(), "suffix": self.suffix}


def class_recipe(name: str, family: str = "sd1") -> ClassImageRecipe:
    """The recipe ``name`` (``--class_images``) for a base of ``family``: "reference" is that base's stock
    pipeline (SD1.5: the reference's PNDM; ``STOCK_CLASS``), "ddim" the same everywhere."""
    if name == "reference":
        return ClassImageRecipe(STOCK_CLASS[family], ".jpg", half_on_gpu=True)
    if name == "ddim":
        return ClassImageRecipe(DREAMBOOTH_CLASS_DDIM, ".png", half_on_gpu=False)
    raise ValueError(f"unknown class-image recipe {name!r}: choose one of {CLASS_IMAGES}")


WRITERS: dict[str, Callable] = {".jpg": write_jpg, ".png": write_png}
METADATA = "class_images.json"
RECIPE_KEYS = ("sampler", "steps", "guidance", "eta", "suffix")


@contextmanager
def folder_lock(folder: Path):
    """An exclusive advisory lock on ``folder/.lock`` (released by the kernel if the process dies)."""
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_class_images(
    models: SDModels,
    folder: str | os.PathLike,
    prompt: str,
    num_images: int,
    *,
    size: int,
    seed: int = 0,
    batch_size: int = 4,
    recipe: ClassImageRecipe | None = None,
    progress: bool = True,
) -> int:
    """Make sure ``folder`` holds at least ``num_images`` images of ``prompt``; generate the missing ones with
    the base model (``models`` must not carry a trained adapter yet) and ``recipe`` (default: "reference" for
    that base, ``class_recipe``).
    Returns how many were generated (0 when the cache was complete). A folder made for another prompt or recipe
    is refused."""
    folder = Path(folder)
    recipe = recipe or class_recipe("reference", models.base.family)
    dtype = recipe.dtype(models.device, models.dtype)
    meta = {"prompt": prompt, "size": size, "seed": seed, **recipe.record(), "dtype": str(dtype)}
    with folder_lock(folder):
        claim_folder(folder, {**meta, "base_model": models.identity})
        missing = missing_images(folder, num_images, recipe.suffix)
        if missing and dtype != models.dtype:
            # a float16 copy (the frozen weights themselves stay in the run's dtype; freed on return)
            models = copy.deepcopy(models).to(dtype=dtype)
        bar = tqdm(total=len(missing), desc=f"class images '{prompt}'", disable=not progress or not missing)
        # Batches are always the fixed chunks [0, b), [b, 2b), ... of the full set, whole, even when some of a
        # chunk's images exist: another batch composition could round differently (other GEMM shapes), and a
        # run that resumes after a kill must make exactly the images an uninterrupted one made.
        for start in range(0, num_images, batch_size):
            chunk = list(range(start, min(start + batch_size, num_images)))
            todo = [k for k in chunk if k in missing]
            if not todo:
                continue
            images = sample(
                models,
                [prompt] * len(chunk),
                seeds=[seed + k for k in chunk],
                height=size,
                width=size,
                progress=False,
                **recipe.sampling.kwargs(),
            )
            for k, image in zip(chunk, images, strict=True):
                if k in todo:
                    WRITERS[recipe.suffix](folder / f"{k:04d}{recipe.suffix}", image)
            bar.update(len(todo))
        bar.close()
    return len(missing)


def claim_folder(folder: Path, meta: dict) -> None:
    """Write ``class_images.json`` (``meta``) in a new cache folder; refuse one made for another prompt or with
    another recipe (sampler, steps, CFG, file type)."""
    meta_path = folder / METADATA
    if meta_path.is_file():
        old = {"suffix": ".png", **json.loads(meta_path.read_text())}  # caches made before JPEG were PNG
        if old.get("prompt") != meta["prompt"]:
            raise ValueError(
                f"{folder} holds class images of {old.get('prompt')!r}, not {meta['prompt']!r}: "
                "use another --class_data_dir"
            )
        differ = [k for k in RECIPE_KEYS if old.get(k) != meta[k]]
        if differ:
            made = ", ".join(f"{k} {old.get(k)!r} (not {meta[k]!r})" for k in differ)
            raise ValueError(
                f"{folder} holds class images made with {made}: use another --class_data_dir, or the "
                "--class_images / --class_inference_steps that made them"
            )
    else:
        atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode())


def missing_images(folder: Path, num_images: int, suffix: str) -> list[int]:
    """The indices k of ``{k:04d}{suffix}`` to generate so that ``folder`` holds ``num_images`` images (the
    lowest absent ones; none when enough images are there). Call with the folder lock held: it deletes the
    temporaries a killed writer left (hidden names, never data)."""
    for k in range(num_images):
        for stale in temporaries(folder / f"{k:04d}{suffix}"):
            stale.unlink(missing_ok=True)
    have = {p.stem for p in list_images(folder)}
    missing = [k for k in range(num_images) if f"{k:04d}" not in have]
    return missing[: max(0, num_images - len(have))]
