"""The controllable-generation tasks of the paper: one table, the single source of their facts (SPEC §3).

Every tool that needs a task's folders, caption files or paper defaults (dataset classes, setup scripts,
train.py, test_oft_parallel.py) reads them from ``TASKS``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# cv2.Canny thresholds of the reference: its COCO canny hints, the C2I metric, the synthetic task's hints
CANNY_THRESHOLDS = (100, 200)


@dataclass(frozen=True)
class Task:
    """One ``--control`` task: where its data lives and the paper's training defaults for it."""

    name: str
    dataset_dir: str  # under the data root
    control_dir: str  # folder of hint images, inside each split folder (or dataset_dir for flat layouts)
    target_dir: str  # folder of target images
    caption_format: (
        str  # "jsonl" ({"source", "target", "prompt"} per line) or "json_list" ([{"image", "prompt"}])
    )
    epochs: int  # the reference's training epochs (paper value in ``paper_epochs`` when it differs)
    batch_size: int = 16  # per GPU
    split_dirs: bool = True  # data/<dataset>/<split>/... ; False: flat folder with prompt_<split>_blip.json
    subset: int | None = None  # canny1k/5k/20k/50k: number of training items kept
    paper_epochs: int | None = None
    setup_script: str = ""
    hint_suffix: str | None = None  # hint file = caption name with this suffix (landmark: "N.jpg" -> "N.png")

    def split_subdir(self, split: str) -> str:
        """The split's folder inside the dataset folder: ``"train"``, or ``""`` for flat layouts."""
        return split if self.split_dirs else ""

    def caption_name(self, split: str, full: bool = False) -> str:
        """Caption file name: ``prompt_{split}_blip[_full].json``; a subset's training list is
        ``prompt_train_blip_{N}k.json`` (a seeded choice of N items of ``prompt_train_blip.json``
        that shares its image folders, as the reference named them)."""
        if split == "train" and self.subset is not None:
            return f"prompt_train_blip_{self.subset // 1000}k.json"
        return f"prompt_{split}_blip{'_full' if full else ''}.json"

    def caption_file(self, split: str, full: bool = False) -> str:
        """Caption file path relative to the data root, e.g. ``ADE20K/val/prompt_val_blip_full.json``."""
        return str(PurePosixPath(self.dataset_dir, self.split_subdir(split), self.caption_name(split, full)))

    def item_files(self, entry: dict, split: str) -> tuple[str, str]:
        """(hint, target) paths of one caption entry, relative to the dataset folder.

        Only the file name of the entry is used, and (as the reference read them) the ``source`` name
        for both the hint in ``control_dir`` and the target in ``target_dir``.
        """
        name = PurePosixPath(entry["image"] if self.caption_format == "json_list" else entry["source"]).name
        hint = str(PurePosixPath(name).with_suffix(self.hint_suffix)) if self.hint_suffix else name
        base = PurePosixPath(self.split_subdir(split))
        return str(base / self.control_dir / hint), str(base / self.target_dir / name)


def read_captions(path: str | Path, caption_format: str) -> list[dict]:
    """The entries of a caption file: JSON lines (``"jsonl"``) or one JSON list (``"json_list"``)."""
    text = Path(path).read_text(encoding="utf-8")
    if caption_format == "json_list":
        return json.loads(text)
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _coco(name: str, control: str, epochs: int, subset: int | None = None, paper: int | None = None) -> Task:
    return Task(
        name,
        "COCO",
        control,
        "color",
        "jsonl",
        epochs,
        subset=subset,
        paper_epochs=paper,
        setup_script="scripts/dataset_setup_control_coco.sh",
    )


TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "segm",
            "ADE20K",
            "segm",
            "color",
            "jsonl",
            20,
            setup_script="scripts/dataset_setup_control_ade20k.sh",
        ),
        _coco("canny", "canny", 11, paper=10),
        _coco("canny1k", "canny", 11, subset=1_000, paper=10),
        _coco("canny5k", "canny", 11, subset=5_000, paper=10),
        _coco("canny20k", "canny", 11, subset=20_000, paper=10),
        _coco("canny50k", "canny", 11, subset=50_000, paper=10),
        _coco("depth", "depth", 20),
        Task(
            "densepose",
            "DeepFashion",
            "densepose",
            "color",
            "jsonl",
            20,
            setup_script="scripts/dataset_setup_control_deepfashion.sh",
        ),
        Task(
            "landmark",
            "celebhq-text",
            "celeba-hq-landmark2d_cond_512",
            "celeba-hq-img",
            "json_list",
            20,
            batch_size=4,
            split_dirs=False,
            setup_script="scripts/dataset_setup_control_celebhq.sh",
            hint_suffix=".png",
        ),
        Task("sketch", "LAION", "sketch", "color", "jsonl", 10, paper_epochs=8),
    ]
}


def get_task(name: str) -> Task:
    """The task called ``name``, or a clear error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown control task {name!r}; choose one of: {', '.join(TASKS)} (or 'synthetic')"
        ) from None
