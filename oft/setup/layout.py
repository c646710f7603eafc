"""What a finished dataset or checkpoint must look like, derived from what the readers open.

The control datasets are checked against ``oft.specs.tasks.TASKS`` (caption files and the hint/target
file of every caption entry), DreamBooth against ``oft.specs.subjects.SUBJECTS``. Each check takes the folder
that is (or is about to become) ``<data root>/<dataset>`` and returns a one-line summary, or raises
``LayoutError`` naming the first thing missing.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Iterable
from pathlib import Path

from oft.specs.subjects import PROMPTS_FILE, SUBJECTS
from oft.specs.tasks import TASKS, Task, read_captions

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png"})
SPLITS = ("train", "val")


class LayoutError(ValueError):
    """A dataset folder lacks something its readers need; the message names the first missing piece."""


def _count_images(folder: Path) -> int:
    return sum(1 for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) if folder.is_dir() else 0


def _check_caption_file(folder: Path, task: Task, split: str, full: bool) -> int:
    """Check one caption file and every hint/target file it names; return its number of entries."""
    rel = Path(task.split_subdir(split), task.caption_name(split, full))
    shown = f"{task.dataset_dir}/{rel.as_posix()}"
    try:
        entries = read_captions(folder / rel, task.caption_format)
    except FileNotFoundError:
        # The reference kept some caption files in its git repository's data/ folder, not in the archives.
        raise LayoutError(
            f"missing {shown} (the {task.name} dataset reads it; the reference repository's data/ folder "
            "has caption files)"
        ) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LayoutError(f"{shown} is not a valid {task.caption_format} caption file ({exc})") from None
    if not entries:
        raise LayoutError(f"{shown} lists no items")
    for entry in entries:
        try:
            files = task.item_files(entry, split)
        except (KeyError, TypeError):
            raise LayoutError(f"{shown} has an entry without the expected keys: {entry!r}") from None
        for rel_file in files:
            if not (folder / rel_file).is_file():
                raise LayoutError(f"missing {task.dataset_dir}/{rel_file}, named in {shown}")
    return len(entries)


def check_control_dataset(folder: str | Path, dataset_dir: str, tasks: Iterable[Task] | None = None) -> str:
    """Check a control dataset folder for every task of ``TASKS`` stored in ``dataset_dir`` (or ``tasks``).

    Required: ``prompt_train_blip.json`` and ``prompt_val_blip.json`` (a subset task: its training list)
    with all the files they name; ``prompt_val_blip_full.json`` (the evaluation set) is checked when present.
    """
    folder = Path(folder)
    chosen = [t for t in (tasks if tasks is not None else TASKS.values()) if t.dataset_dir == dataset_dir]
    if not chosen:
        raise ValueError(f"no control task stores its data in {dataset_dir!r}")
    if not folder.is_dir():
        raise LayoutError(f"{folder} is not a folder")
    counts: dict[str, int] = {}
    for task in chosen:
        for split in SPLITS:
            counts[task.caption_name(split)] = _check_caption_file(folder, task, split, full=False)
        if (folder / task.split_subdir("val") / task.caption_name("val", full=True)).is_file():
            counts[task.caption_name("val", True)] = _check_caption_file(folder, task, "val", full=True)
    listed = ", ".join(f"{name} {n:,}" for name, n in counts.items())
    return f"{dataset_dir} for {', '.join(t.name for t in chosen)}: {listed} items"


def check_dreambooth(folder: str | Path) -> str:
    """Check ``data/dreambooth``: one folder of images per subject of ``SUBJECTS`` plus the prompt list."""
    folder = Path(folder)
    if not (folder / PROMPTS_FILE).is_file():
        raise LayoutError(f"missing dreambooth/{PROMPTS_FILE} (the prompt lists of the benchmark)")
    total = 0
    for subject, _ in SUBJECTS:
        n = _count_images(folder / subject)
        if n == 0:
            raise LayoutError(f"missing images in dreambooth/{subject}/ (one of the 30 benchmark subjects)")
        total += n
    return f"dreambooth: {len(SUBJECTS)} subjects, {total} images"


def check_checkpoint(path: str | Path) -> str:
    """Check that ``path`` is a PyTorch checkpoint: a zip container with its central directory intact.

    Catches truncated files and HTML error pages saved under the checkpoint's name without reading GBs.
    """
    path = Path(path)
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as fh:
            head = fh.read(16)
        raise LayoutError(
            f"{path.name} is not a PyTorch checkpoint (truncated, or an error page: starts {head!r})"
        )
    return f"{path.name}: {path.stat().st_size / 1e9:.2f} GB"


def check_image_folder(folder: str | Path) -> str:
    """Check a folder of images (COCO's ``train2017/``, ``val2017/``)."""
    n = _count_images(Path(folder))
    if n == 0:
        raise LayoutError(f"no images in {Path(folder).name}/")
    return f"{Path(folder).name}: {n:,} images"


COCO_CAPTION_FILES = ("captions_train2017.json", "captions_val2017.json")


def check_coco_annotations(folder: str | Path) -> str:
    """Check COCO's ``annotations/`` folder holds the two caption files."""
    for name in COCO_CAPTION_FILES:
        if not (Path(folder) / name).is_file():
            raise LayoutError(f"missing annotations/{name} (COCO 2017 captions)")
    return f"annotations: {', '.join(COCO_CAPTION_FILES)}"
