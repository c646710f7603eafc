"""Evaluate benchmark runs (paper Table 1): metrics per run, per subject and overall, as JSON and Markdown.

Image choice (documented, sorted; the reference took "the first 4" in directory-listing order, which is
arbitrary): for run ``{subject}-{p}`` the generated images are the first ``n`` file names, sorted, of
``validation/step-{step:06d}/`` (seeds 0..n-1 of that validation); the real images are all of
``dreambooth/{subject}/``, sorted. CLIP-T compares with the prompt without the unique token (``Run.eval_prompt``,
the reference's ``prompt_test_list``; CLIP has never seen "qwe"), or with the validation prompt itself
(``clip_t_prompt="validation"``). Per-run results are cached in the run folder, so an interrupted evaluation
resumes.

Averaging: a run's DINO / CLIP-I is its mean over n_real x n_gen (real, generated) pairs. ``overall`` pools every
pair of every run, as the reference did (one list of pair scores across all subjects, ``oft-db/eval.py`` at
df2b263, lines 394-415 and 427-450): a run weighs by its pair count, so subjects with more photos weigh more.
``overall_mean_of_runs`` is the plain mean of run means. The two differ because the subjects have different
numbers of photos; within a subject they are equal (its runs share the photos and the image count). CLIP-T and
LPIPS pool the same way, by images and by pairs of generated images (``oft.metrics.subject.pair_counts``).
``evaluate_real_images`` scores Table 1's "Real images" row from the dataset folder alone: each subject's photos
against each other (every ordered pair i != j), pooled over all subjects' pairs, as the reference did.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path

from PIL import Image
from tqdm.auto import tqdm

from oft.common.files import atomic_write_bytes
from oft.common.images import list_images
from oft.db.layout import VALIDATION_DIR
from oft.db.runs import run_dir
from oft.metrics.subject import REAL_METRICS, SubjectMetrics, pair_counts, real_pair_counts
from oft.specs.benchmark import BUILTIN, PROMPTS_PER_SUBJECT, SETUP_HINT, PromptTable, get_run

METRICS = ("dino", "clip_i", "clip_t", "lpips", "lpips_real_vs_generated")
PAPER_TABLE1 = {  # SPEC §5: DINO / CLIP-I / CLIP-T / LPIPS (diversity)
    "Real images": {"dino": 0.703, "clip_i": 0.864, "clip_t": None, "lpips": 0.695},
    "DreamBooth": {"dino": 0.614, "clip_i": 0.778, "clip_t": 0.239, "lpips": 0.737},
    "LoRA": {"dino": 0.613, "clip_i": 0.765, "clip_t": 0.237, "lpips": 0.744},
    "COFT": {"dino": 0.630, "clip_i": 0.783, "clip_t": 0.235, "lpips": 0.744},
    "OFT": {"dino": 0.632, "clip_i": 0.785, "clip_t": 0.237, "lpips": 0.746},
}


def _open(paths: Sequence[Path]) -> list[Image.Image]:
    images = []
    for p in paths:
        with Image.open(p) as im:
            images.append(im.convert("RGB"))
    return images


def generated_images(folder: Path, step: int, n: int) -> list[Path]:
    """The first ``n`` (sorted) validation images of ``step`` in a run folder."""
    return list_images(folder / VALIDATION_DIR / f"step-{step:06d}")[:n]


def evaluate_runs(
    metrics: SubjectMetrics,
    indices: Sequence[int],
    output_root: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    *,
    step: int = 1000,
    num_images: int = 4,
    clip_t_prompt: str = "plain",
    table: PromptTable = BUILTIN,
    real_images: bool = True,
    progress: bool = True,
) -> dict:
    """Metrics of every run in ``indices`` that has ``num_images`` validation images at ``step``, and (with
    ``real_images``) the "Real images" row of the subjects of ``indices`` (``evaluate_real_images``).

    Returns ``{"runs": {name: {...}}, "subjects": {subject: {...}}, "overall": {...}, "overall_mean_of_runs":
    {...}, "real_images": {...} or None, "missing": [names], ...}``.
    """
    dataset_dir = Path(dataset_dir)
    runs, missing = {}, []
    for index in tqdm(indices, desc="evaluate", disable=not progress):
        run = get_run(index, table)
        folder = run_dir(run, output_root)
        gen = generated_images(folder, step, num_images)
        if len(gen) < num_images:
            missing.append(run.name)
            continue
        prompt = {"plain": run.eval_prompt, "validation": run.validation_prompt}[clip_t_prompt]
        real = subject_photos(dataset_dir, run.subject)
        cache = folder / f"metrics-step-{step:06d}-n{num_images}-{clip_t_prompt}.json"
        stamp = [p.name for p in gen] + [p.stat().st_mtime_ns for p in gen] + [p.name for p in real]
        if cache.is_file() and (cached := json.loads(cache.read_text())).get("stamp") == stamp:
            runs[run.name] = cached["result"]
            continue
        result = {
            "subject": run.subject,
            "prompt_index": run.prompt_index,
            "prompt": prompt,
            "num_real": len(real),
            "num_generated": len(gen),
        }
        result.update(metrics.evaluate(_open(real), _open(gen), prompt))
        atomic_write_bytes(cache, json.dumps({"stamp": stamp, "result": result}, indent=1).encode())
        runs[run.name] = result
    subjects = list(dict.fromkeys(get_run(i, table).subject for i in indices))
    real_row = evaluate_real_images(metrics, subjects, dataset_dir) if real_images else None
    return summarise(
        runs, missing, step=step, num_images=num_images, clip_t_prompt=clip_t_prompt, real_images=real_row
    )


def subject_photos(dataset_dir: Path, subject: str) -> list[Path]:
    """All photos of ``subject`` in the dataset folder, sorted; one line naming the folder when there are none."""
    real = list_images(dataset_dir / subject)
    if not real:
        raise FileNotFoundError(f"no real images of {subject} in {dataset_dir}: {SETUP_HINT}")
    return real


def pooled_mean(values: Sequence[float], counts: Sequence[int]) -> float:
    """The mean over all the pairs behind ``values``: value i is a mean over ``counts[i]`` pair scores."""
    return sum(v * n for v, n in zip(values, counts, strict=True)) / sum(counts)


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def pool_runs(rows: list[dict]) -> dict[str, float]:
    """Each metric pooled over every pair (or image) of ``rows`` (runs with ``num_real``/``num_generated``)."""
    counts = [pair_counts(r["num_real"], r["num_generated"]) for r in rows]
    return {m: pooled_mean([r[m] for r in rows], [c[m] for c in counts]) for m in METRICS}


def summarise(runs: dict[str, dict], missing: list[str], **info) -> dict:
    """Per subject and overall: pooled over all pairs (``subjects``, ``overall``: the reference's numbers) and
    the mean of run means (``overall_mean_of_runs``)."""
    subjects: dict[str, list[dict]] = {}
    for row in runs.values():
        subjects.setdefault(row["subject"], []).append(row)
    per_subject = {s: {"runs": len(rows), **pool_runs(rows)} for s, rows in subjects.items()}
    rows = list(runs.values())
    overall = {"runs": len(rows), **(pool_runs(rows) if rows else {})}
    mean_of_runs = {"runs": len(rows), **({m: _mean([r[m] for r in rows]) for m in METRICS} if rows else {})}
    return {
        **info,
        "runs": runs,
        "subjects": per_subject,
        "overall": overall,
        "overall_mean_of_runs": mean_of_runs,
        "missing": missing,
    }


def evaluate_real_images(
    metrics: SubjectMetrics, subjects: Sequence[str], dataset_dir: str | os.PathLike
) -> dict:
    """Table 1's "Real images" row: DINO, CLIP-I and LPIPS among each subject's own photos (every ordered pair
    i != j), per subject, pooled over all subjects' pairs (``overall``, the reference's) and as the mean of
    subject means (``overall_mean_of_subjects``)."""
    dataset_dir = Path(dataset_dir)
    per_subject = {}
    for subject in subjects:
        real = subject_photos(dataset_dir, subject)
        per_subject[subject] = {"photos": len(real), **metrics.evaluate_real(_open(real))}
    rows = list(per_subject.values())
    counts = [real_pair_counts(r["photos"]) for r in rows]
    return {
        "subjects": per_subject,
        "overall": {m: pooled_mean([r[m] for r in rows], [c[m] for c in counts]) for m in REAL_METRICS},
        "overall_mean_of_subjects": {m: _mean([r[m] for r in rows]) for m in REAL_METRICS},
    }


def to_markdown(results: dict) -> str:
    """The results table: one row per subject, overall (pooled, then mean of run means), the real images' own
    row (when computed), then the paper's Table 1 for comparison."""
    head = "| subject | runs | DINO | CLIP-I | CLIP-T | LPIPS (diversity) | LPIPS (real vs gen.) |\n|---|---|---|---|---|---|---|"

    def row(name: str, r: dict) -> str:
        cells = [f"{r[m]:.3f}" if r.get(m) is not None else "–" for m in METRICS]
        return f"| {name} | {r.get('runs', '')} | " + " | ".join(cells) + " |"

    lines = [
        f"Step {results['step']}, {results['num_images']} generated images per run (sorted names), all real images"
        f" per subject; CLIP-T text: {results['clip_t_prompt']} prompt.",
        "",
        head,
        *(row(s, r) for s, r in sorted(results["subjects"].items())),
    ]
    if results["overall"].get("runs"):
        lines.append(row("**overall** (pooled over all pairs, the reference's)", results["overall"]))
        lines.append(row("overall (mean of run means)", results["overall_mean_of_runs"]))
    if results["real_images"]:
        real = results["real_images"]
        lines.append(row("**real images** (photo vs photo, pooled)", {**real["overall"], "runs": "–"}))
        lines.append(
            row("real images (mean of subject means)", {**real["overall_mean_of_subjects"], "runs": "–"})
        )
    if results["missing"]:
        lines += [
            "",
            f"Not evaluated (fewer than {results['num_images']} images at this step): {len(results['missing'])} runs.",
        ]
    lines += ["", "Paper (Table 1; LPIPS = diversity):", "", head]
    lines += [row(name, {**r, "runs": ""}) for name, r in PAPER_TABLE1.items()]
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir: str | os.PathLike, stem: str = "results") -> tuple[Path, Path]:
    """``{stem}.json`` and ``{stem}.md`` in ``out_dir``, written atomically."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(out / f"{stem}.json", json.dumps(results, indent=1).encode())
    atomic_write_bytes(out / f"{stem}.md", to_markdown(results).encode())
    return out / f"{stem}.json", out / f"{stem}.md"


def prompt_indices(spec: str) -> list[int]:
    """``"all"`` or a comma list of prompt indices 0..24."""
    if spec == "all":
        return list(range(PROMPTS_PER_SUBJECT))
    values = sorted({int(x) for x in spec.split(",")})
    if not all(0 <= v < PROMPTS_PER_SUBJECT for v in values):
        raise ValueError(f"prompt indices must be in 0..{PROMPTS_PER_SUBJECT - 1}, got {spec!r}")
    return values
