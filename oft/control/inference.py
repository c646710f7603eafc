"""Parallel sampling for evaluation (``test_oft_parallel.py``): chunks of the validation set, one worker per GPU
or CPU worker, seeded per item, resumable, in the reference's output layout (SPEC §3):

    <out>/source/image_{i}.png      target (ground truth) of item i
    <out>/hints/hint_{i}.png        its control image
    <out>/results/result_{i}_{n}.png  sample n of item i (n < num_samples)

Sample (i, n) uses the seed ``sample_seed(seed, i, n)``, and every item is sampled as its own batch of
``num_samples``, so the images do not depend on how items are split into chunks or workers.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

import oft_layers
from oft.control.checkpoint import ControlModel, load_control
from oft.control.images import write_png
from oft.sd import add_to_conv_in, sample


@dataclass(frozen=True)
class SamplingJob:
    """What every worker needs: the model, the data, where to write, and the paper's sampling settings."""

    model: str
    base: str | None
    out_dir: Path
    num_samples: int = 6
    steps: int = 50
    guidance: float = 9.0
    eta: float = 0.0
    seed: int = 0


@torch.no_grad()
def generate(
    cm: ControlModel, hints: torch.Tensor, prompts: list[str], seeds: list[int], **sampling
) -> torch.Tensor:
    """Images (B, 3, H, W) in [0, 1] for control images ``hints`` (B, 3, H, W) in [0, 1] and ``prompts``.

    The hint features are added after ``conv_in`` in both CFG branches (the unconditional branch keeps the
    control, as the reference sampled); ``sampling`` goes to ``oft.sd.sample`` (steps, guidance, eta, ...).
    """
    features = cm.hint(hints.to(cm.sd.device, torch.float32))
    with add_to_conv_in(cm.sd.unet, features):
        return sample(cm.sd, prompts, seeds=seeds, height=hints.shape[-2], width=hints.shape[-1], **sampling)


def derived_seed(*keys: int) -> int:
    """A 63-bit seed that is a function of ``keys`` only (numpy's SeedSequence hashing): sample (seed, item, n)
    here, training step (seed, step, rank) in ``oft.control.model``."""
    return int(np.random.SeedSequence(list(keys)).generate_state(1, np.uint64)[0] >> 1)


def sample_seed(seed: int, index: int, n: int) -> int:
    """The seed of sample ``n`` of item ``index``."""
    return derived_seed(seed, index, n)


def chunk(img_id: int, batch: int, total: int) -> range:
    """Items of chunk ``img_id`` when ``total`` items are cut into chunks of ``batch`` (the last may be short)."""
    chunks = -(-total // batch)
    if not 0 <= img_id < chunks:
        raise ValueError(
            f"--img_ID {img_id} is out of range: {total} items in chunks of --batch {batch} give ids 0..{chunks - 1}"
        )
    return range(img_id * batch, min((img_id + 1) * batch, total))


def output_paths(out_dir: Path, index: int, num_samples: int) -> list[Path]:
    """The files item ``index`` produces: target, hint, then its samples."""
    return [
        out_dir / "source" / f"image_{index}.png",
        out_dir / "hints" / f"hint_{index}.png",
        *(out_dir / "results" / f"result_{index}_{n}.png" for n in range(num_samples)),
    ]


def is_done(out_dir: Path, index: int, num_samples: int) -> bool:
    return all(p.is_file() for p in output_paths(out_dir, index, num_samples))


def run_items(
    job: SamplingJob, dataset: Dataset, indices: list[int], device: str = "cpu", desc: str = ""
) -> int:
    """Sample every unfinished item of ``indices``; returns how many were sampled (finished ones are skipped)."""
    todo = [i for i in indices if not is_done(job.out_dir, i, job.num_samples)]
    if not todo:
        return 0
    cm = load_control(job.model, job.base, device=device)
    cm.hint.eval()
    oft_layers.merge(cm.sd.unet)  # fold each rotation into its weight once: sampling costs exactly SD's
    for i in tqdm(todo, desc=desc or "items", disable=None):
        item = dataset[i]
        k = job.num_samples
        images = generate(
            cm,
            item["hint"][None].expand(k, -1, -1, -1),
            [item["txt"]] * k,
            seeds=[sample_seed(job.seed, i, n) for n in range(k)],
            steps=job.steps,
            guidance=job.guidance,
            eta=job.eta,
            progress=False,
        )
        source, hint, *results = output_paths(job.out_dir, i, k)
        for path, image in zip(results, images, strict=True):
            write_png(path, image)
        write_png(hint, item["hint"])
        # the target last: evaluators index items by it, so it marks a complete item
        write_png(source, (item["jpg"] + 1) / 2)
    return len(todo)


def _worker(
    rank: int, job: SamplingJob, dataset: Dataset, shards: list[list[int]], devices: list[str], threads: int
) -> None:
    previous = torch.get_num_threads()
    if devices[rank] == "cpu":
        torch.set_num_threads(threads)  # CPU workers share the cores instead of oversubscribing them
    try:
        run_items(job, dataset, shards[rank], devices[rank], desc=f"worker {rank} ({devices[rank]})")
    finally:
        torch.set_num_threads(previous)


def run_parallel(
    job: SamplingJob,
    dataset: Dataset,
    indices: list[int],
    batch: int,
    devices: list[str],
    threads: int | None = None,
) -> None:
    """Spread the chunks of ``indices`` (``batch`` items each) round-robin over one process per device.

    CPU workers get ``threads`` threads each (default: the cores divided among them).
    """
    chunks = [indices[s : s + batch] for s in range(0, len(indices), batch)]
    shards = [[i for c in chunks[w :: len(devices)] for i in c] for w in range(len(devices))]
    threads = threads or max(1, (os.cpu_count() or 1) // len(devices))
    args = (job, dataset, shards, devices, threads)
    if len(devices) == 1:
        _worker(0, *args)
    else:
        torch.multiprocessing.spawn(_worker, args=args, nprocs=len(devices), join=True)


def local_devices(workers: int | None) -> list[str]:
    """One entry per worker: every visible GPU (``cuda:k``), else ``workers`` CPU workers (default 1)."""
    gpus = torch.cuda.device_count()
    if gpus:
        return [f"cuda:{k % gpus}" for k in range(workers or gpus)]
    return ["cpu"] * (workers or 1)
