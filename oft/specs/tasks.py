"""The controllable-generation tasks of the paper: one table, the single source of their facts (SPEC §3).

Every tool that needs a task's folders, caption files or training settings (dataset classes, setup scripts,
train.py, test_oft_parallel.py) reads them from ``TASKS``. Each setting carries its source, a line of the
reference implementation or the paper's text, and, where those disagree, the other value
(``settings_markdown`` renders the table for the README).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

# cv2.Canny thresholds of the reference: its COCO canny hints, the C2I metric, the synthetic task's hints
CANNY_THRESHOLDS = (100, 200)


# Where a setting comes from: "path:line" is a file of the reference implementation (Zeju1997/oft at df2b263).
REFERENCE = "Zeju1997/oft@df2b263"
PAPER = "paper text (SPEC §3)"
PAPER_DEPTH = "paper text"  # SPEC §3 lists only the reference code's 20 epochs for depth


@dataclass(frozen=True)
class Setting:
    """One training setting of a task: its default and where that comes from; ``other`` is the value of the other
    source (paper text or reference code) where the two disagree, reachable by the setting's flag."""

    value: int | float | None
    source: str
    other: int | float | None = None
    other_source: str = ""

    def __post_init__(self) -> None:
        if (self.other is None) != (not self.other_source):
            raise ValueError(f"a setting's other value and its source come together, got {self}")


# The same for every task. The reference logged no loss curve (its ImageLogger's loss plot, plot_frequency = 100 at
# oft-control/train.py:48, is commented out in oldm/logger.py:155-164): ours logs every 50 steps, Lightning's default.
SHARED: dict[str, Setting] = {
    "lr": Setting(1e-5, "oft-control/train.py:49"),
    "log_every": Setting(50, "ours; the reference logged no loss, oft-control/oldm/logger.py:155-164"),
}
# The per-task settings, in table order, with their flags (oft.control.config.Training's fields); the data subset
# is chosen by the task itself (canny1k ... canny50k), not by a flag.
SETTINGS: dict[str, tuple[str, str | None]] = {
    "epochs": ("epochs", "--epochs"),
    "batch_size": ("batch / GPU", "--batch_size"),
    "lr": ("lr", "--lr"),
    "sample_every": ("sample grid every (steps)", "--sample_every"),
    "log_every": ("loss logged every (steps)", "--log_every"),
    "subset": ("training items", None),
}


@dataclass(frozen=True)
class Task:
    """One ``--control`` task: where its data lives and its training settings, each with its source."""

    name: str
    dataset_dir: str  # under the data root
    control_dir: str  # folder of hint images, inside each split folder (or dataset_dir for flat layouts)
    target_dir: str  # folder of target images
    caption_format: (
        str  # "jsonl" ({"source", "target", "prompt"} per line) or "json_list" ([{"image", "prompt"}])
    )
    epochs: Setting
    sample_every: Setting  # the reference's logger_freq: a sample grid every N training batches
    subset: Setting  # canny1k/5k/20k/50k: number of training items kept; None: the whole training list
    batch_size: Setting = Setting(16, "oft-control/train.py:46")  # per GPU
    split_dirs: bool = True  # data/<dataset>/<split>/... ; False: flat folder with prompt_<split>_blip.json
    setup_script: str = ""
    hint_suffix: str | None = None  # hint file = caption name with this suffix (landmark: "N.jpg" -> "N.png")
    # ablation_segm: the training set is the first --n_samples entries of the training list, this many times over
    repeats: Setting | None = None

    def settings(self) -> dict[str, Setting]:
        """Every training setting of the task, in ``SETTINGS`` order (lr and loss logging are shared)."""
        return {name: SHARED[name] if name in SHARED else getattr(self, name) for name in SETTINGS}

    def split_subdir(self, split: str) -> str:
        """The split's folder inside the dataset folder: ``"train"``, or ``""`` for flat layouts."""
        return split if self.split_dirs else ""

    def caption_name(self, split: str, full: bool = False) -> str:
        """Caption file name: ``prompt_{split}_blip[_full].json``; a subset's training list is
        ``prompt_train_blip_{N}k.json`` (a seeded choice of N items of ``prompt_train_blip.json``
        that shares its image folders, as the reference named them)."""
        if split == "train" and self.subset.value is not None:
            return f"prompt_train_blip_{self.subset.value // 1000}k.json"
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


def _coco(name: str, control: str, epochs: Setting, sample_every: int, line: int, subset: Setting) -> Task:
    """A COCO task; ``line``: where datasets/utils.py sets its logger_freq."""
    return Task(
        name,
        "COCO",
        control,
        "color",
        "jsonl",
        epochs,
        Setting(sample_every, f"datasets/utils.py:{line}"),
        subset,
        setup_script="scripts/dataset_setup_control_coco.sh",
    )


def _subset(n: int, line: int) -> Setting:
    """A canny subset of ``n`` items: its caption file prompt_train_blip_{n/1000}k.json, read at coco_dataset.py:line."""
    return Setting(n, f"datasets/coco_dataset.py:{line}")


def _whole(line: int) -> Setting:
    """The whole training list: the dataset built at datasets/utils.py:line."""
    return Setting(None, f"datasets/utils.py:{line}")


def _epochs(n: int, line: int, paper: int | None = None, paper_source: str = PAPER) -> Setting:
    """``n`` epochs, the reference's max_epochs at datasets/utils.py:line; ``paper``: the paper text's when it differs."""
    return Setting(n, f"datasets/utils.py:{line}", paper, paper_source if paper is not None else "")


ABLATION = "ablation_segm"
# The training-set sizes N of the Fig. 1 sweep (oft.control.ablation), ours: neither the paper's text nor the
# reference's scripts list them (its train.py never even passed n_samples on: oft-control/train.py:41).
ABLATION_SIZES = (1, 10, 100, 1000)


# The reference's values are the defaults (datasets/utils.py's return_dataset, oft-control/train.py), except
# landmark's batch of 4 (the paper's text; SPEC §3), whose reference value (16) stays reachable by --batch_size.
TASKS: dict[str, Task] = {
    t.name: t
    for t in [
        Task(
            "segm",
            "ADE20K",
            "segm",
            "color",
            "jsonl",
            _epochs(20, 14),
            Setting(1000, "datasets/utils.py:9"),
            _whole(12),
            setup_script="scripts/dataset_setup_control_ade20k.sh",
        ),
        _coco("canny", "canny", _epochs(11, 22, paper=10), 3000, 18, _whole(20)),
        _coco("canny1k", "canny", _epochs(30, 62), 300, 58, _subset(1_000, 379)),
        _coco("canny5k", "canny", _epochs(10, 54), 300, 50, _subset(5_000, 328)),
        _coco("canny20k", "canny", _epochs(10, 46), 300, 42, _subset(20_000, 277)),
        _coco("canny50k", "canny", _epochs(10, 38), 300, 34, _subset(50_000, 226)),
        _coco("depth", "depth", _epochs(20, 30, paper=10, paper_source=PAPER_DEPTH), 500, 26, _whole(28)),
        Task(
            "densepose",
            "DeepFashion",
            "densepose",
            "color",
            "jsonl",
            _epochs(20, 78),
            Setting(300, "datasets/utils.py:74"),
            _whole(76),
            setup_script="scripts/dataset_setup_control_deepfashion.sh",
        ),
        Task(
            "landmark",
            "celebhq-text",
            "celeba-hq-landmark2d_cond_512",
            "celeba-hq-img",
            "json_list",
            _epochs(20, 86),
            Setting(1000, "datasets/utils.py:81"),
            _whole(84),
            batch_size=Setting(4, PAPER, 16, "oft-control/train.py:46"),
            split_dirs=False,
            setup_script="scripts/dataset_setup_control_celebhq.sh",
            hint_suffix=".png",
        ),
        Task(
            "sketch",
            "LAION",
            "sketch",
            "color",
            "jsonl",
            _epochs(10, 70, paper=8),
            Setting(1000, "datasets/utils.py:66"),
            _whole(68),
        ),
        # Fig. 1's data-efficiency ablation: segm's folders, the first --n_samples training items 100 times over,
        # one epoch, no sample grids (its logger_freq of 1e11 is never reached); evaluated on segm's full val set
        Task(
            ABLATION,
            "ADE20K",
            "segm",
            "color",
            "jsonl",
            _epochs(1, 94),
            Setting(0, "datasets/utils.py:89: logger_freq 1e11, never reached"),
            Setting(None, "datasets/ade20k_dataset.py:61-67"),
            setup_script="scripts/dataset_setup_control_ade20k.sh",
            repeats=Setting(100, "datasets/ade20k_dataset.py:68"),
        ),
    ]
}


def _show(value: int | float | None) -> str:
    """A setting's value as the table prints it: ``1,000``, ``1e-5``; None (the whole training list): ``all``."""
    if value is None:
        return "all"
    return f"{value:,}" if isinstance(value, int) else f"{value:g}".replace("e-0", "e-")


def _cell(setting: Setting) -> str:
    other = f"; {setting.other_source}: {_show(setting.other)}" if setting.other is not None else ""
    return f"{_show(setting.value)} ({setting.source}{other})"


def _items_cell(task: Task) -> str:
    """The "training items" cell: the whole list or a subset, or (ablation_segm) the first N items repeated."""
    if task.repeats is None:
        return _cell(task.subset)
    return f"first `--n_samples` × {task.repeats.value} ({task.subset.source}; {task.repeats.source})"


def settings_markdown(tasks: Iterable[Task] | None = None) -> str:
    """The training settings of ``tasks`` [default: every task] as markdown: a table (each default with its
    source), then one line per setting where the paper text and the reference code disagree."""
    tasks = list(TASKS.values() if tasks is None else tasks)
    columns = [name for name in SETTINGS if name not in SHARED]
    lines = [
        f"| task (`--control`) | {' | '.join(SETTINGS[c][0] for c in columns)} | "
        f"{' | '.join(SETTINGS[c][0] for c in SHARED)} |",
        "|---" * (1 + len(SETTINGS)) + "|",
    ]
    for task in tasks:
        cells = [_items_cell(task) if c == "subset" else _cell(task.settings()[c]) for c in columns]
        cells += [_show(s.value) for s in SHARED.values()]
        lines.append(f"| `{task.name}` | {' | '.join(cells)} |")
    lines.append(
        f"\nSources: `path:line` is a line of the reference implementation ({REFERENCE}); paper text is the "
        "paper's own statement (SPEC §3 records those of canny, sketch and landmark). Every task: "
        + "; ".join(f"{SETTINGS[c][0]} {_show(s.value)} ({s.source})" for c, s in SHARED.items())
        + ". Defaults first; where the paper text and the reference code disagree:\n"
    )
    for task in tasks:
        for name, s in task.settings().items():
            if s.other is not None:
                lines.append(
                    f"- `{task.name}` {SETTINGS[name][0]}: default {_show(s.value)} ({s.source}); "
                    f"{s.other_source}: {_show(s.other)}, with `{SETTINGS[name][1]} {s.other}`"
                )
    return "\n".join(lines)


def get_task(name: str) -> Task:
    """The task called ``name``, or a clear error listing the known ones."""
    try:
        return TASKS[name]
    except KeyError:
        raise ValueError(
            f"unknown control task {name!r}; choose one of: {', '.join(TASKS)} (or 'synthetic')"
        ) from None
