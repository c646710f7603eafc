"""Parallel sampling for evaluation (``test_oft_parallel.py``): chunks of the validation set, one worker per GPU
or CPU worker, seeded per item, resumable, in the reference's output layout (SPEC §3):

    <out>/source/image_{i}.png      target (ground truth) of item i
    <out>/hints/hint_{i}.png        its control image
    <out>/results/result_{i}_{n}.png  sample n of item i (n < num_samples)
    <out>/excluded/item_{i}.json    only with ``skip_unreadable``: item i could not be read (why), no outputs

Item i is always line i of the caption file (``ControlDataset`` keeps indices): before sampling, every item to
do is read once, and an unreadable one stops the run with its index and path (``UnreadableItemError``), or with
``skip_unreadable`` is recorded in ``excluded/`` (which every evaluator reads and reports) while the others
are sampled. A later run retries recorded items, and a successful one removes its record.

Sample (i, n) uses the seed ``sample_seed(seed, i, n)``, and every item is sampled as its own batch of
``num_samples``, so which images are drawn does not depend on how items are split into chunks or workers.
The pixels are identical byte for byte only when every process computes the same way: the same device and
software (kernels) and the same number of threads per CPU worker (``threads``; its default depends on the
cores and workers). Another thread count makes some GEMM and convolution kernels split their sums otherwise,
which changes the last bits of a few pixels (measured on CPU, 1 against 2 threads).
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
from oft.control.data import DataError, UnreadableItemError
from oft.control.images import write_png
from oft.data.files import atomic_write_json
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
    skip_unreadable: bool = False  # record unreadable items in <out>/excluded/ and sample the rest


EXCLUDED = "excluded"  # <out>/excluded/item_{i}.json: items the sampler could not read (oft.metrics.folder)
SKIP_FLAG = "--skip-unreadable"  # test_oft_parallel.py's flag for ``SamplingJob.skip_unreadable``


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


def excluded_path(out_dir: Path, index: int) -> Path:
    """The record of an item the sampler could not read (written only with ``skip_unreadable``)."""
    return out_dir / EXCLUDED / f"item_{index}.json"


def find_unreadable(dataset: Dataset, indices: list[int]) -> dict[int, DataError]:
    """{index: the error} for the items of ``indices`` whose files are missing or cannot be decoded.

    Reads each item once (a few ms per 512-px pair, against seconds of sampling per item), so a bad file
    stops the run before any sampling instead of hours in.
    """
    bad = {}
    for i in tqdm(indices, desc="checking items", disable=None, leave=False):
        try:
            dataset[i]
        except DataError as err:
            bad[i] = err
    return bad


def check_items(job: SamplingJob, dataset: Dataset, indices: list[int]) -> list[int]:
    """The unfinished items of ``indices`` that can be read: unreadable ones stop the run (one line naming
    the first and how many), or with ``job.skip_unreadable`` are recorded in ``excluded/`` and left out.

    Records of items that are finished (or readable now) are removed: an item is either sampled or recorded.
    """
    todo = []
    for i in indices:
        if is_done(job.out_dir, i, job.num_samples):
            excluded_path(job.out_dir, i).unlink(missing_ok=True)  # a run killed after the outputs
        else:
            todo.append(i)
    bad = find_unreadable(dataset, todo)
    if bad and not job.skip_unreadable:
        first = min(bad)
        raise UnreadableItemError(
            f"{len(bad)} of {len(todo)} items to sample cannot be read, first {bad[first]}: restore the file "
            f"(re-run the data setup script) so that every item keeps its index, or pass {SKIP_FLAG} to "
            f"sample the others and record these in {job.out_dir / EXCLUDED}/",
            first,
            getattr(bad[first], "path", None),
        )
    for i, err in bad.items():
        atomic_write_json(excluded_path(job.out_dir, i), {"index": i, "reason": str(err)})
    for i in todo:
        if i not in bad:
            excluded_path(job.out_dir, i).unlink(missing_ok=True)
    return [i for i in todo if i not in bad]


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
        excluded_path(job.out_dir, i).unlink(missing_ok=True)  # readable now: no longer excluded
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

    Every unfinished item is read first (``check_items``): an unreadable one stops the run before any
    sampling, or is recorded and left out with ``job.skip_unreadable``. CPU workers get ``threads`` threads
    each (default: the cores divided among them); outputs are byte-identical across runs at equal ``threads``.
    """
    readable = set(check_items(job, dataset, indices))
    chunks = [indices[s : s + batch] for s in range(0, len(indices), batch)]
    shards = [[i for c in chunks[w :: len(devices)] for i in c if i in readable] for w in range(len(devices))]
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
