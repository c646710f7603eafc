"""Benchmark runs as jobs: the settings of run ``i``, its folder, whether it finished, and a local GPU queue.

The queue runs a list of run indices over the visible GPUs, one run per GPU (``CUDA_VISIBLE_DEVICES``), and
starts the next run as soon as a GPU frees up; finished runs (an adapter file in their folder) are skipped, an
interrupted one resumes from its newest checkpoint. Each run's output goes to ``<run folder>/train.log``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from oft.db.layout import ADAPTER_NAME
from oft.specs.benchmark import BUILTIN, PromptTable, Run, get_run

DEFAULT_OUTPUT_ROOT = "outputs/dreambooth"


def run_dir(run: Run, output_root: str | os.PathLike = DEFAULT_OUTPUT_ROOT) -> Path:
    """``<output_root>/{subject}-{prompt index}``."""
    return Path(output_root) / run.name


def run_settings(
    index: int,
    table: PromptTable,
    data_root: str | os.PathLike,
    output_root: str | os.PathLike = DEFAULT_OUTPUT_ROOT,
    class_root: str | os.PathLike | None = None,
) -> tuple[Run, dict[str, str]]:
    """Run ``index`` and the ``DreamBoothConfig`` values SPEC §4 fixes for it (folders and prompts)."""
    run = get_run(index, table)
    data_root = Path(data_root)
    class_root = Path(class_root) if class_root else data_root / "class_data"
    return run, {
        "instance_data_dir": str(data_root / "dreambooth" / run.subject),
        "instance_prompt": run.instance_prompt,
        "class_prompt": run.class_prompt,
        "class_data_dir": str(class_root / run.class_dir_name),
        "validation_prompt": run.validation_prompt,
        "output_dir": str(run_dir(run, output_root)),
    }


def describe_run(run: Run, values: dict) -> str:
    """The human-readable card of one run (what ``--dry-run`` prints)."""
    lines = [
        f"run:               {run.index} (subject {run.subject_index}, prompt {run.prompt_index}, "
        f"{'live-subject' if run.live else 'object'} prompts)",
        f"subject:           {run.subject}",
        f"class:             {run.class_noun}",
        f"instance prompt:   {values['instance_prompt']}",
        f"class prompt:      {values['class_prompt']}",
        f"validation prompt: {values['validation_prompt']}",
        f"CLIP-T prompt:     {run.eval_prompt}",
        f"instance images:   {values['instance_data_dir']}",
        f"class images:      {values['class_data_dir']}",
        f"output folder:     {values['output_dir']}",
    ]
    return "\n".join(lines)


def is_finished(folder: str | os.PathLike) -> bool:
    """A run is finished when its adapter file exists (written atomically at the very end)."""
    return (Path(folder) / ADAPTER_NAME).is_file()


def visible_gpus() -> list[str]:
    """The GPU ids this process may use: ``CUDA_VISIBLE_DEVICES`` if set, else all CUDA devices."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip()]
    import torch  # only here: planning and running the queue need no torch

    return [str(i) for i in range(torch.cuda.device_count())]


@dataclass
class Job:
    """One queued command: the run index, its folder, and the argv that trains it."""

    index: int
    folder: Path
    argv: list[str]


def plan_jobs(
    indices: Sequence[int],
    argv_of: Callable[[int], list[str]],
    output_root: str | os.PathLike = DEFAULT_OUTPUT_ROOT,
    table: PromptTable = BUILTIN,
) -> tuple[list[Job], list[int]]:
    """(jobs to run, indices skipped because finished)."""
    jobs, done = [], []
    for i in indices:
        folder = run_dir(get_run(i, table), output_root)
        if is_finished(folder):
            done.append(i)
        else:
            jobs.append(Job(i, folder, argv_of(i)))
    return jobs, done


def run_queue(jobs: Sequence[Job], slots: Sequence[str], *, poll: float = 1.0, log=print) -> dict[int, int]:
    """Run ``jobs`` with at most one per slot (a GPU id, set as ``CUDA_VISIBLE_DEVICES``; ``""`` = CPU).

    Returns ``{run index: exit code}``. A failed run does not stop the queue; its log holds the reason.
    """
    if not slots:
        raise ValueError(
            "no GPU visible: set CUDA_VISIBLE_DEVICES or pass --gpus (use --gpus cpu to run on the CPU)"
        )
    pending = list(jobs)
    running: dict[str, tuple[Job, subprocess.Popen, object]] = {}
    codes: dict[int, int] = {}
    while pending or running:
        for slot in [s for s in slots if s not in running]:
            if not pending:
                break
            job = pending.pop(0)
            job.folder.mkdir(parents=True, exist_ok=True)
            logfile = open(job.folder / "train.log", "a")
            env = {**os.environ, "CUDA_VISIBLE_DEVICES": slot}
            running[slot] = (
                job,
                subprocess.Popen(job.argv, stdout=logfile, stderr=subprocess.STDOUT, env=env),
                logfile,
            )
            log(f"[{time.strftime('%H:%M:%S')}] run {job.index} -> gpu {slot or 'cpu'} ({job.folder})")
        time.sleep(poll)
        for slot, (job, proc, logfile) in list(running.items()):
            if proc.poll() is not None:
                logfile.close()
                codes[job.index] = proc.returncode
                del running[slot]
                status = (
                    "done"
                    if proc.returncode == 0
                    else f"FAILED (exit {proc.returncode}, see {job.folder}/train.log)"
                )
                log(f"[{time.strftime('%H:%M:%S')}] run {job.index} {status}")
    return codes


def train_argv(index: int, module: str, extra: Sequence[str] = ()) -> list[str]:
    """The command that trains benchmark run ``index`` (resuming when a checkpoint exists): ``python -m module``."""
    return [sys.executable, "-m", module, "--run", str(index), "--resume_from_checkpoint", "latest", *extra]
