"""Parallel sampling for evaluation (``test_oft_parallel.py``): chunks of the validation set, one worker per GPU
or CPU worker, seeded per item, resumable, in the reference's output layout (SPEC §3):

    the layout of ``oft.specs.layout`` (source/, hints/, results/, excluded/).

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

import torch
from torch.utils.data import Dataset
from tqdm.auto import tqdm

import oft_layers
from oft.common.files import atomic_write_json
from oft.common.images import write_png
from oft.common.seeds import derived_seed
from oft.control.checkpoint import ControlModel, load_control
from oft.control.config import Sampling
from oft.control.data import DataError, UnreadableItemError
from oft.sd import add_to_conv_in, sample
from oft.specs.layout import EXCLUDED, excluded_path, hint_path, result_path, source_path


@dataclass(frozen=True)
class SamplingJob:
    """What every worker needs: the model (a control-model file, or a loaded ``ControlModel``), its base,
    where to write, the sampling settings and the seed."""

    model: str | os.PathLike | ControlModel
    base: str | None
    out_dir: Path
    sampling: Sampling = Sampling()
    seed: int = 0

    @property
    def num_samples(self) -> int:
        return self.sampling.num_samples


SKIP_FLAG = "--skip-unreadable"  # test_oft_parallel.py's flag for ``Sampling.skip_unreadable``


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
        source_path(out_dir, index),
        hint_path(out_dir, index),
        *(result_path(out_dir, index, n) for n in range(num_samples)),
    ]


def is_done(out_dir: Path, index: int, num_samples: int) -> bool:
    return all(p.is_file() for p in output_paths(out_dir, index, num_samples))


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
    the first and how many), or with ``job.sampling.skip_unreadable`` are recorded in ``excluded/`` and left out.

    Records of items that are finished (or readable now) are removed: an item is either sampled or recorded.
    """
    todo = []
    for i in indices:
        if is_done(job.out_dir, i, job.num_samples):
            excluded_path(job.out_dir, i).unlink(missing_ok=True)  # a run killed after the outputs
        else:
            todo.append(i)
    bad = find_unreadable(dataset, todo)
    if bad and not job.sampling.skip_unreadable:
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
    given = isinstance(job.model, ControlModel)
    cm = job.model if given else load_control(job.model, job.base, device=device)
    cm.hint.eval()
    oft_layers.merge(cm.sd.unet)  # fold each rotation into its weight once: sampling costs exactly SD's
    try:
        for i in tqdm(todo, desc=desc or "items", disable=None):
            sample_item(job, cm, dataset[i], i)
    finally:
        if given:
            oft_layers.unmerge(cm.sd.unet)  # the caller's model comes back as it was given
    return len(todo)


def sample_item(job: SamplingJob, cm: ControlModel, item: dict, index: int) -> None:
    """Sample item ``index`` (``item``: its dataset entry) and write its outputs, the target last."""
    k = job.num_samples
    images = generate(
        cm,
        item["hint"][None].expand(k, -1, -1, -1),
        [job.sampling.prompt(item["txt"])] * k,
        seeds=[sample_seed(job.seed, index, n) for n in range(k)],
        steps=job.sampling.steps,
        guidance=job.sampling.guidance,
        eta=job.sampling.eta,
        progress=False,
    )
    source, hint, *results = output_paths(job.out_dir, index, k)
    for path, image in zip(results, images, strict=True):
        write_png(path, image)
    write_png(hint, item["hint"])
    # the target last: evaluators index items by it, so it marks a complete item
    write_png(source, (item["jpg"] + 1) / 2)
    excluded_path(job.out_dir, index).unlink(missing_ok=True)  # readable now: no longer excluded


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
    sampling, or is recorded and left out with ``job.sampling.skip_unreadable``. CPU workers get ``threads`` threads
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
