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
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image
from tqdm.auto import tqdm

from oft.data.files import atomic_write_bytes, temporaries
from oft.db.data import list_images

if TYPE_CHECKING:
    from oft.sd.models import SDModels

METADATA = "class_images.json"
# The reference generated class images with diffusers' default pipeline (50 steps, CFG 7.5); DDIM 50 is our
# closest sampler (PNDM is not one of the project's samplers).
CLASS_SAMPLING = {"sampler": "ddim", "steps": 50, "guidance": 7.5}


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


def save_png(image, path: Path) -> None:
    """Write a (3, H, W) tensor in [0, 1] as PNG atomically."""
    array = (image.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    atomic_write_bytes(path, buffer.getvalue())


def ensure_class_images(
    models: SDModels,
    folder: str | os.PathLike,
    prompt: str,
    num_images: int,
    *,
    size: int,
    seed: int = 0,
    batch_size: int = 4,
    sampling: dict | None = None,
    progress: bool = True,
) -> int:
    """Make sure ``folder`` holds at least ``num_images`` images of ``prompt``; generate the missing ones with
    the base model (``models`` must not carry a trained adapter yet). Returns how many were generated (0 when
    the cache was complete). A folder made for another prompt is refused."""
    from oft.sd.sampling import sample

    folder = Path(folder)
    sampling = {**CLASS_SAMPLING, **(sampling or {})}
    meta = {"prompt": prompt, "size": size, "seed": seed, **sampling}
    with folder_lock(folder):
        meta_path = folder / METADATA
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            if old.get("prompt") != prompt:
                raise ValueError(
                    f"{folder} holds class images of {old.get('prompt')!r}, not {prompt!r}: "
                    "use another --class_data_dir"
                )
        else:
            atomic_write_bytes(
                meta_path, json.dumps({**meta, "base_model": models.identity}, indent=1).encode()
            )
        for k in range(num_images):  # we hold the lock: these are a killed writer's, never data (list_images)
            for stale in temporaries(folder / f"{k:04d}.png"):
                stale.unlink(missing_ok=True)
        have = {p.stem for p in list_images(folder)}
        missing = [k for k in range(num_images) if f"{k:04d}" not in have]
        needed = max(0, num_images - len(have))
        missing = missing[:needed]
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
                **sampling,
            )
            for k, image in zip(chunk, images, strict=True):
                if k in todo:
                    save_png(image, folder / f"{k:04d}.png")
            bar.update(len(todo))
        bar.close()
    return len(missing)
