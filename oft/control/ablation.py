"""Fig. 1's data-efficiency ablation (``--control ablation_segm``): for each training-set size N, train on the first
N items of ADE20K's training list (each repeated 100 times, one epoch, as the reference), sample segm's full
validation set and score it with the S2I metrics (mIoU / mAcc / aAcc); then one table of metric vs N.

The sweep folder holds one run folder per N, ``n<N>/`` (the layout of every run: checkpoints/,
control_final.safetensors, generated/ with its eval_segm.json), and the table, ``fig1.json`` and ``fig1.md``.
Every stage resumes: an N whose ``generated/eval_segm.json`` exists is read back, a trained model is not
retrained (a killed training resumes from its last.ckpt), the sampler skips the items it has written.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from oft.common.files import atomic_write_bytes
from oft.common.paths import data_root
from oft.control import jobs
from oft.control.checkpoint import check_flags_match
from oft.control.config import FINAL_MODEL, GENERATED_DIR, RUNS_ROOT, Experiment, Sampling, Training
from oft.metrics.folder import markdown_table, open_sample_folder, report, write_json
from oft.metrics.segmentation import PAPER, Segmenter, evaluate_segmentation, folder_inputs
from oft.specs.tasks import ABLATION, TASKS

TASK = ABLATION
EVAL_REPORT = "eval_segm.json"  # what eval_segm.py writes in a sampler folder
SUMMARY = "fig1"  # fig1.json, fig1.md in the sweep folder
METRICS = ("mIoU", "mAcc", "aAcc")


@dataclass(frozen=True)
class Point:
    """One N of the sweep: its experiment (run folder ``<sweep>/n<N>``) and what of it is already on disk."""

    n: int
    experiment: Experiment

    @property
    def trained(self) -> Path:
        """The run's trained model (train.py's output)."""
        return self.experiment.run_dir / FINAL_MODEL

    @property
    def generated(self) -> Path:
        """The run's sampler folder."""
        return self.experiment.run_dir / GENERATED_DIR

    @property
    def report(self) -> Path:
        """The run's S2I report: present once the point is finished."""
        return self.generated / EVAL_REPORT


def sweep_folder(experiment: Experiment) -> Path:
    """The sweep folder: ``output_dir``, else ``outputs/control/ablation_segm_sweep_r<r>_<coft_eps|oft>...``."""
    if experiment.output_dir:
        return Path(experiment.output_dir)
    adapter = experiment.name.removeprefix(f"{TASK}_n{experiment.n_samples}")  # "_r4_coft_eps0.001"
    return RUNS_ROOT / f"{TASK}_sweep{adapter}"


def plan(experiment: Experiment, sizes: Iterable[int]) -> list[Point]:
    """The points of a sweep over ``sizes`` (sorted, without repeats) with the adapter and data of
    ``experiment``, their run folders inside ``sweep_folder(experiment)``."""
    sizes = sorted(set(sizes))
    if not sizes or sizes[0] < 1:
        raise ValueError(f"--n_samples takes training-set sizes >= 1, got {sizes}")
    folder = sweep_folder(experiment)
    return [
        Point(n, replace(experiment, control=TASK, n_samples=n, output_dir=str(folder / f"n{n}")))
        for n in sizes
    ]


def check_one_process(training: Training) -> Training:
    """The sweep trains, samples and scores in this one process: one device (``--devices auto`` becomes 1; a
    Lightning DDP launcher would re-run the whole sweep in every rank)."""
    if training.strategy.startswith("ddp") or training.devices not in ("auto", "1") or training.num_nodes > 1:
        raise ValueError(
            "the sweep trains in this process on one device: for DDP run the per-N commands that --dry-run prints"
        )
    return replace(training, devices="1")


def evaluate_point(point: Point, segmenter: Segmenter, labels: str | None = None) -> dict:
    """Score the point's sampler folder as eval_segm.py does (sample 0) and write its report."""
    folder = open_sample_folder(point.generated)
    images, label_maps = folder_inputs(folder, data_root(point.experiment.data_root), 0, labels=labels)
    metrics = evaluate_segmentation(images, label_maps, segmenter)
    result = report("segmentation", folder, 0, metrics, n_samples=point.n)
    write_json(point.report, result)
    return result


def run_point(
    point: Point,
    training: Training,
    sampling: Sampling,
    model: jobs.Model,
    segmenter: Callable[[], Segmenter],
    labels: str | None = None,
) -> dict:
    """Train, sample and score one point, each stage only if its output is missing; its S2I report. A run
    folder trained with another adapter (r, eps, ...) is refused, finished or not."""
    if point.trained.is_file():
        check_flags_match(point.trained, **point.experiment.adapter_flags())
    if point.report.is_file():
        print(f"n_samples {point.n}: done ({point.report})")
        return json.loads(point.report.read_text(encoding="utf-8"))
    if point.trained.is_file():
        print(f"n_samples {point.n}: trained ({point.trained})")
    else:
        jobs.train(point.experiment, training, model)
    jobs.sample(point.experiment, sampling)
    return evaluate_point(point, segmenter(), labels)


def summary_rows(points: Sequence[Point], reports: Sequence[dict]) -> list[dict]:
    """One row per point: N, training items per epoch (N x the reference's repeats), the metrics, images."""
    repeats = TASKS[TASK].repeats.value
    return [
        {"n_samples": p.n, "items": p.n * repeats, **{k: r[k] for k in METRICS}, "images": r["images"]}
        for p, r in zip(points, reports, strict=True)
    ]


def write_summary(folder: Path, experiment: Experiment, rows: list[dict]) -> tuple[Path, Path]:
    """``fig1.json`` (adapter, rows) and ``fig1.md`` (the table, then the paper's full-data OFT/COFT row)."""
    data = {"task": TASK, "adapter": experiment.adapter_flags(), "rows": rows}
    table = markdown_table(
        ("N (--n_samples)", "items / epoch", *(f"{k} (%)" for k in METRICS), "images"),
        [(r["n_samples"], r["items"], *(r[k] for k in METRICS), r["images"]) for r in rows],
    )
    paper = "; ".join(
        f"{m} " + " / ".join(f"{PAPER[k][j]}" for k in ("OFT", "COFT")) for j, m in enumerate(METRICS)
    )
    adapter = ", ".join(f"{k} {v}" for k, v in experiment.adapter_flags().items())
    text = (
        f"# Fig. 1: S2I metrics vs training-set size ({TASK}; {adapter})\n\n"
        f"{table}\n\nWhole training list, 20 epochs (paper Table 2, OFT / COFT): {paper}\n"
    )
    json_path = write_json(folder / f"{SUMMARY}.json", data)
    md_path = atomic_write_bytes(folder / f"{SUMMARY}.md", text.encode())
    return json_path, md_path


def run_sweep(
    points: Sequence[Point],
    training: Training,
    sampling: Sampling,
    model: jobs.Model,
    segmenter: Callable[[], Segmenter],
    labels: str | None = None,
) -> tuple[Path, Path]:
    """Every point in turn (finished ones read back), then the table; ``segmenter`` is created once, when a
    point first needs scoring. Returns the JSON and markdown summaries."""
    training = check_one_process(training)
    made: list[Segmenter] = []

    def once() -> Segmenter:
        if not made:
            made.append(segmenter())
        return made[0]

    reports = [run_point(p, training, sampling, model, once, labels) for p in points]
    folder = points[0].experiment.run_dir.parent  # plan() puts the run folders in the sweep folder
    paths = write_summary(folder, points[0].experiment, summary_rows(points, reports))
    print(Path(paths[1]).read_text(encoding="utf-8"))
    return paths
