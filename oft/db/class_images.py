"""Prior-preservation class images: generated once per class by the base model, cached and shared by subjects.

The folder ``<class_root>/<class noun>`` holds ``0000.png, 0001.png, ...`` and ``class_images.json`` (prompt,
sampler settings, base model). Image ``k`` is generated from seed ``seed + k``, always in the same batch (the
fixed chunks of ``batch_size``), so a generation interrupted at any point and run again makes exactly the images
an uninterrupted one made. A file lock serialises processes that need the same class (the local queue runs
several subjects of one class at once); files appear atomically (hidden temporary name, then rename), and
hidden names are never read as images.
"""

from __future__ import annotations

import fcntl
import json
import os
from contextlib import contextmanager
from pathlib import Path

from tqdm.auto import tqdm

from oft.common.files import atomic_write_bytes, temporaries
from oft.common.images import list_images, write_png
from oft.sd.models import SDModels
from oft.sd.sampling import sample
from oft.specs.sampling import DREAMBOOTH_CLASS, SamplerPreset

METADATA = "class_images.json"


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
    sampling: SamplerPreset = DREAMBOOTH_CLASS,
    progress: bool = True,
) -> int:
    """Make sure ``folder`` holds at least ``num_images`` images of ``prompt``; generate the missing ones with
    the base model (``models`` must not carry a trained adapter yet) and ``sampling`` (default: the reference's
    class-image sampler, ``DREAMBOOTH_CLASS``). Returns how many were generated (0 when the cache was complete).
    A folder made for another prompt is refused."""
    folder = Path(folder)
    meta = {"prompt": prompt, "size": size, "seed": seed, **sampling.kwargs()}
    with folder_lock(folder):
        claim_folder(folder, {**meta, "base_model": models.identity})
        missing = missing_images(folder, num_images)
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
                **sampling.kwargs(),
            )
            for k, image in zip(chunk, images, strict=True):
                if k in todo:
                    write_png(folder / f"{k:04d}.png", image)
            bar.update(len(todo))
        bar.close()
    return len(missing)


def claim_folder(folder: Path, meta: dict) -> None:
    """Write ``class_images.json`` (``meta``) in a new cache folder; refuse one made for another prompt."""
    meta_path = folder / METADATA
    if meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if old.get("prompt") != meta["prompt"]:
            raise ValueError(
                f"{folder} holds class images of {old.get('prompt')!r}, not {meta['prompt']!r}: "
                "use another --class_data_dir"
            )
    else:
        atomic_write_bytes(meta_path, json.dumps(meta, indent=1).encode())


def missing_images(folder: Path, num_images: int) -> list[int]:
    """The indices k of ``{k:04d}.png`` to generate so that ``folder`` holds ``num_images`` images (the lowest
    absent ones; none when enough images are there). Call with the folder lock held: it deletes the
    temporaries a killed writer left (hidden names, never data)."""
    for k in range(num_images):
        for stale in temporaries(folder / f"{k:04d}.png"):
            stale.unlink(missing_ok=True)
    have = {p.stem for p in list_images(folder)}
    missing = [k for k in range(num_images) if f"{k:04d}" not in have]
    return missing[: max(0, num_images - len(have))]
