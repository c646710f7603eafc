"""Reading a sampling output folder and writing metric reports: the one place every evaluator shares.

``oft-control/test_oft_parallel.py`` writes, for every validation item ``i`` (SPEC §3):

- ``source/image_{i}.png``: the ground-truth target image,
- ``hints/hint_{i}.png``: the control image,
- ``results/result_{i}_{n}.png``: generated sample ``n`` (0..5 in the paper's setup),
- ``excluded/item_{i}.json`` (only with its ``--skip-unreadable``): item ``i`` could not be read, no outputs.

Evaluators pair items by ``i``, which is always line ``i`` of the caption file. By default they score sample 0,
as the paper did; a given sample index or every sample present can be chosen instead. A missing result is an
error that says how many are missing, never a silently smaller average; excluded items are listed in every
report (``excluded``) and printed (``excluded_note``).
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from oft.common.files import atomic_write_json
from oft.specs.layout import (
    EXCLUDED,
    EXCLUDED_NAME,
    LAYOUT_HELP,
    RESULT_NAME,
    RESULTS,
    SOURCE,
    SOURCE_NAME,
    result_path,
    source_path,
)
from oft.specs.tasks import get_task


class MissingResultsError(FileNotFoundError):
    """Some items of an output folder lack the generated sample an evaluator needs."""


@dataclass(frozen=True)
class Pair:
    """One scored image: item ``index``, generated ``sample``, its ground truth and generated file."""

    index: int
    sample: int
    source: Path
    result: Path


@dataclass(frozen=True)
class SampleFolder:
    """An output folder of the sampler; ``indices`` are the items with a ground-truth image, sorted;
    ``excluded`` the items the sampler recorded as unreadable (index -> reason), which have no outputs."""

    root: Path
    indices: tuple[int, ...]
    excluded: dict[int, str] = field(default_factory=dict)

    def source(self, i: int) -> Path:
        return source_path(self.root, i)

    def result(self, i: int, n: int) -> Path:
        return result_path(self.root, i, n)

    def pairs(self, sample: int | None = 0) -> list[Pair]:
        """(item, sample) pairs to score: sample ``sample`` of every item, or with None every sample index
        found in ``results/`` for every item (all items must have the same ones).

        Raises ``MissingResultsError`` saying how many items lack a requested result (and the first few).
        """
        if sample is not None:
            samples = [sample]
        else:
            items, found = set(self.indices), self.root.joinpath(RESULTS).glob("result_*_*.png")
            matches = [m for p in found if (m := RESULT_NAME.fullmatch(p.name)) and int(m.group(1)) in items]
            samples = sorted({int(m.group(2)) for m in matches})
            if not samples:
                raise MissingResultsError(f"{self.root / RESULTS} holds no result_{{i}}_{{n}}.png files")
        missing = [
            self.result(i, n).name for i in self.indices for n in samples if not self.result(i, n).is_file()
        ]
        if missing:
            items = len({int(RESULT_NAME.fullmatch(name).group(1)) for name in missing})
            what = f"sample {sample}" if sample is not None else f"some of samples {samples}"
            raise MissingResultsError(
                f"{items} of {len(self.indices)} items in {self.root} lack generated {what}: {len(missing)} "
                f"files missing (e.g. results/{', results/'.join(missing[:3])}); finish sampling first"
            )
        return [Pair(i, n, self.source(i), self.result(i, n)) for i in self.indices for n in samples]


def open_sample_folder(root: str | os.PathLike) -> SampleFolder:
    """Index the items of a sampler output folder (those with ``source/image_{i}.png``)."""
    root = Path(root)
    source = root / SOURCE
    if not source.is_dir():
        raise FileNotFoundError(
            f"{root} is not a sampling output folder: {source} is missing (expected {LAYOUT_HELP})"
        )
    indices = sorted(int(m.group(1)) for p in source.iterdir() if (m := SOURCE_NAME.fullmatch(p.name)))
    excluded = read_excluded(root)
    if not indices:
        more = f" ({len(excluded)} items excluded as unreadable, see {root / EXCLUDED})" if excluded else ""
        raise FileNotFoundError(f"{source} holds no image_{{i}}.png files{more}")
    both = sorted(set(indices) & set(excluded))
    if both:
        raise ValueError(
            f"{root}: items {both[:5]} have outputs and an exclusion record ({EXCLUDED}/item_{both[0]}.json): "
            "re-run the sampler on this folder to settle them"
        )
    return SampleFolder(root, tuple(indices), excluded)


def read_excluded(root: Path) -> dict[int, str]:
    """The items the sampler recorded in ``root/excluded/`` as unreadable: index -> reason."""
    folder = Path(root) / EXCLUDED
    if not folder.is_dir():
        return {}
    out = {}
    for path in sorted(folder.iterdir()):
        if m := EXCLUDED_NAME.fullmatch(path.name):
            try:
                out[int(m.group(1))] = str(json.loads(path.read_text()).get("reason", ""))
            except (ValueError, AttributeError):
                raise ValueError(f"{path} is not an exclusion record of the sampler: delete it") from None
    return out


def excluded_note(folder: SampleFolder) -> str | None:
    """One line for the evaluators' output when the sampler left items out (None when it left none)."""
    if not folder.excluded:
        return None
    shown = ", ".join(str(i) for i in sorted(folder.excluded)[:10]) + (
        ", ..." if len(folder.excluded) > 10 else ""
    )
    return (
        f"note: {len(folder.excluded)} items were excluded by the sampler as unreadable (items {shown}; reasons in "
        f"{folder.root / EXCLUDED}/): the scores cover the other {len(folder.indices)}"
    )


def item_names(task_name: str, data_root: Path, split: str = "val") -> list[str]:
    """File names of a control task's target images in item order (item ``i`` = caption entry ``i``).

    The sampler numbers items by their position in the task's full caption file (SPEC §3): JSON lines with a
    ``target`` path, or for CelebA-HQ one JSON list with an ``image`` name.
    """
    task = get_task(task_name)
    captions = data_root / task.caption_file(split, full=True)
    if not captions.is_file():
        raise FileNotFoundError(
            f"{captions} is missing: it maps item indices to {task.dataset_dir} images "
            f"(set it up with bash {task.setup_script})"
        )
    if task.caption_format == "json_list":
        return [entry["image"] for entry in json.loads(captions.read_text())]
    lines = [line for line in captions.read_text().splitlines() if line.strip()]
    return [Path(json.loads(line)["target"]).name for line in lines]


def report(metric: str, folder: SampleFolder, samples: object, metrics: dict, **extra: object) -> dict:
    """An evaluator's JSON report: what was scored (``samples``: an index, "all" or "real"), where, which items
    the sampler excluded, then the scores."""
    excluded = sorted(folder.excluded)
    return {
        "metric": metric,
        "folder": str(folder.root),
        **extra,
        "samples": samples,
        "excluded": excluded,
        **metrics,
    }


def nan_to_none(value: object) -> object:
    """JSON has no NaN: floats that are NaN become null, recursively through dicts and lists."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [nan_to_none(v) for v in value]
    return value


def write_json(path: str | os.PathLike, data: dict) -> Path:
    """Write ``data`` as JSON to ``path`` atomically (temporary file in the same folder, then rename)."""
    return atomic_write_json(path, nan_to_none(data))


def format_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A plain-text table; floats printed with 4 significant decimals, None as '-'."""

    def cell(v: object) -> str:
        if v is None:
            return "-"
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    table = [list(header)] + [[cell(v) for v in row] for row in rows]
    widths = [max(len(r[c]) for r in table) for c in range(len(header))]
    lines = ["  ".join(s.ljust(w) for s, w in zip(r, widths)).rstrip() for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def markdown_table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    """A markdown table; floats printed with 2 decimals (as the paper's percentages), None as '-'."""

    def cell(v: object) -> str:
        if v is None:
            return "-"
        return f"{v:.2f}" if isinstance(v, float) else str(v)

    lines = [f"| {' | '.join(header)} |", "|---" * len(header) + "|"]
    return "\n".join([*lines, *(f"| {' | '.join(cell(v) for v in row)} |" for row in rows)])
