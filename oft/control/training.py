"""Running oft-control training with Lightning: trainer, checkpointing, resume, logs and sample grids.

Both training scripts (``train.py``: R + hint encoder; ``train_with_norm.py``: magnitudes) call ``fit``.
Multi-GPU and multi-node is Lightning's DDP (``devices``, ``num_nodes``, ``strategy``); checkpoints are
``<out>/checkpoints/last.ckpt`` every ``save_every`` steps (only trainable tensors and optimizer state), so a
killed job loses at most the steps since the last save and ``resume="auto"`` picks it up.

Checkpoints are written by ``AtomicCheckpointIO``: in their own folder (never ``$TMPDIR``), atomically, with the
one before kept as ``last.prev.ckpt``, and read back with ``weights_only=True``. A kill -9 or a full disk at any
moment leaves at least one complete checkpoint, and an unreadable ``last.ckpt`` (a run killed while an older
version wrote it) costs a warning and a resume from ``last.prev.ckpt``, not the run.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.utilities import rank_zero_only
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.utils import make_grid

from oft.common.files import atomic_torch_save, temporaries
from oft.common.images import write_png
from oft.common.safe_load import load_error_line
from oft.control.config import CHECKPOINTS, CSV_LOGS, LOGS, SAMPLES, SNAPSHOTS, Training
from oft.control.data import collate
from oft.control.inference import generate
from oft.control.model import LOADED_FROM, ControlOFT

LAST = "last.ckpt"
START_OVER = "start over with --resume none"


class ControlDataModule(L.LightningDataModule):
    """Shuffled training batches. The order is a function of (seed, epoch, rank) only (a ``DistributedSampler``
    also on one process), so a run resumed at an epoch boundary sees exactly the batches of an uninterrupted one.
    """

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int = 4, seed: int = 0) -> None:
        super().__init__()
        self.dataset, self.batch_size, self.num_workers, self.seed = dataset, batch_size, num_workers, seed

    def train_dataloader(self) -> DataLoader:
        world = self.trainer.world_size if self.trainer else 1
        rank = self.trainer.global_rank if self.trainer else 0
        sampler = DistributedSampler(
            self.dataset, num_replicas=world, rank=rank, shuffle=True, seed=self.seed
        )
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            collate_fn=collate,
            persistent_workers=self.num_workers > 0,
            drop_last=False,
        )


class CheckpointReadError(ValueError):
    """A training checkpoint to resume from cannot be read (truncated, empty, not a checkpoint)."""


def previous_checkpoint(path: str | Path) -> Path:
    """``last.ckpt`` -> ``last.prev.ckpt``: the checkpoint before the newest, kept by ``AtomicCheckpointIO``."""
    path = Path(path)
    return path.with_name(f"{path.stem}.prev{path.suffix}")


def resume_candidates(resume: str, ckpt_dir: Path) -> list[Path]:
    """The checkpoints to try, in order: ``"none"`` -> none; ``"auto"`` -> those of ``last.ckpt``,
    ``last.prev.ckpt`` that exist (the second is the fallback for an unreadable first); else the given file,
    which must exist."""
    if resume == "none":
        return []
    if resume == "auto":
        last = ckpt_dir / LAST
        return [p for p in (last, previous_checkpoint(last)) if p.is_file()]
    if not Path(resume).is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint (use auto, none, or a .ckpt path)")
    return [Path(resume)]


def _why_unreadable(path: Path, err: BaseException) -> str:
    """One line on why ``torch.load`` failed on ``path``: its first sentence (torch's run to paragraphs)."""
    size = path.stat().st_size if path.is_file() else None
    if size == 0:
        return "it is empty (0 bytes)"
    return f"{load_error_line(err)}; {size} bytes"


def repair_epoch_progress(checkpoint: dict[str, Any]) -> bool:
    """Restore the invariant of a checkpoint saved inside a training batch (every ``save_every`` steps): its
    epoch has started and is not processed, so ``started == ready == processed + 1``. True if it was broken.

    Lightning 2.6 breaks it after a resume from a checkpoint of an epoch's last batch: it counts that epoch
    processed, but, still "restarted mid-epoch", skips ``ready``/``started`` of the next one, so every later
    checkpoint of the run holds ``started == processed`` and resuming from one of those re-runs a finished
    epoch (its data order and noise, at the next step numbers). A second kill then no longer ends as an
    uninterrupted run would. With the counters a fresh run writes, Lightning resumes correctly.
    """
    fit = checkpoint.get("loops", {}).get("fit_loop", {})
    epochs, batches = fit.get("epoch_progress"), fit.get("epoch_loop.batch_progress")
    if not epochs or not batches:
        return False
    inside_a_batch = batches["total"]["completed"] == batches["total"]["processed"] - 1
    broken = False
    for part in ("total", "current"):
        progress = epochs[part]
        if inside_a_batch and progress["started"] == progress["processed"]:
            progress["ready"] = progress["started"] = progress["processed"] + 1
            broken = True
    return broken


@rank_zero_only
def _warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint files through ``oft.common.files.atomic_write``, with the previous one kept.

    Saving ``<dir>/last.ckpt``: (1) serialise into the hidden temporary ``<dir>/.last.ckpt.<random>.tmp`` and
    fsync it (Lightning's own save writes to ``$TMPDIR`` and moves the file: across file systems a copy, which
    a kill leaves as a 0-byte or partial ``last.ckpt``); (2) hard-link the current ``last.ckpt`` to a temporary
    and rename that over ``last.prev.ckpt``; (3) rename the temporary over ``last.ckpt``; fsync the folder.
    A kill before (3) leaves the old ``last.ckpt``; after (2) also ``last.prev.ckpt`` = the old one; after (3)
    the new ``last.ckpt`` and the old ``last.prev.ckpt``: there is always a complete checkpoint, and renames of
    complete files are the only changes (where hard links are not supported, (2) renames ``last.ckpt`` itself:
    until (3) only ``last.prev.ckpt`` exists, which ``--resume auto`` then takes, with a warning). A power cut
    loses at most the renames not yet fsync'ed, never the data. (2) happens only when ``last.ckpt`` is known to
    be complete (this object wrote or read it), so an unreadable one never replaces a good ``last.prev.ckpt``.
    Temporaries that a kill left behind are removed at the first save (only rank 0 saves: their only writer).

    Loading: ``weights_only=True`` (what Lightning and ``ControlOFT`` save is tensors and plain types). An
    unreadable file is followed by the next of ``fallbacks`` with a one-line warning; if none is readable,
    one ``CheckpointReadError`` line, ending with ``fix``. Loop counters are repaired both ways
    (``repair_epoch_progress``; on load for files written before).
    """

    def __init__(self, fallbacks: Sequence[str | Path] = (), fix: str = START_OVER) -> None:
        super().__init__()
        self.fallbacks = [Path(p) for p in fallbacks]
        self.fix = fix
        self._complete: set[Path] = set()  # files known to hold a whole checkpoint
        self._cleaned: set[Path] = set()

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        path = Path(path).resolve()
        previous = previous_checkpoint(path)
        if path not in self._cleaned:
            for stale in (*temporaries(path), *temporaries(previous)):
                stale.unlink(missing_ok=True)
            self._cleaned.add(path)

        repair_epoch_progress(checkpoint)  # the file holds the counters a fresh run would write
        atomic_torch_save(path, checkpoint, keep_previous=previous if path in self._complete else None)
        self._complete.add(path)

    def load_checkpoint(
        self, path: Any, map_location: Any = lambda storage, loc: storage, weights_only: bool | None = None
    ) -> dict[str, Any]:
        first = Path(path)
        candidates = [first, *(p for p in self.fallbacks if p.resolve() != first.resolve())]
        problems = []
        for i, candidate in enumerate(candidates):
            try:
                checkpoint = super().load_checkpoint(candidate, map_location=map_location, weights_only=True)
            except Exception as err:  # noqa: BLE001 - every unreadable file gets the same one-line report
                why = _why_unreadable(candidate, err)
                problems.append(f"{candidate.name}: {why}")
                if i + 1 < len(candidates):
                    _warn(
                        f"{candidate} is unreadable ({why}); resuming from {candidates[i + 1].name} instead"
                    )
                continue
            self._complete.add(candidate.resolve())
            repair_epoch_progress(checkpoint)
            checkpoint[LOADED_FROM] = str(candidate)
            return checkpoint
        where = first.parent if len(candidates) > 1 else first
        raise CheckpointReadError(
            f"cannot resume from {where}: no readable checkpoint ({'; '.join(problems)}); {self.fix}"
        )


class SampleGrid(Callback):
    """Every ``every`` steps, rank 0 samples the first items of ``dataset`` and writes a grid
    (rows: control, target, sample) to ``<out>/samples/step_N.png`` and to TensorBoard."""

    def __init__(self, dataset: Dataset, out_dir: Path, every: int, steps: int, count: int = 4) -> None:
        self.batch = collate([dataset[i] for i in range(min(count, len(dataset)))])
        self.out_dir, self.every, self.steps = out_dir, every, steps

    def on_train_batch_end(self, trainer: L.Trainer, module: ControlOFT, *_: object) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every:
            return
        n = len(self.batch["txt"])
        images = generate(
            module.cm,
            self.batch["hint"],
            self.batch["txt"],
            seeds=list(range(n)),
            steps=self.steps,
            progress=False,
        )
        rows = torch.cat([self.batch["hint"], (self.batch["jpg"] + 1) / 2, images.float()])
        grid = make_grid(rows, nrow=n)
        write_png(self.out_dir / SAMPLES / f"step_{step:07d}.png", grid)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, step)


def snapshot_path(run_dir: Path, step: int) -> Path:
    """The model exported at ``step`` by ``Snapshots``: ``<run>/snapshots/step_<step, 7 digits>.safetensors``."""
    return run_dir / SNAPSHOTS / f"step_{step:07d}.safetensors"


class Snapshots(Callback):
    """Every ``every`` steps, rank 0 exports the model (``module.export``, with ``extra`` in its metadata) to
    ``snapshot_path``: the points of a learning curve. A snapshot already on disk (a resumed run) is kept."""

    def __init__(self, out_dir: Path, every: int, extra: dict[str, object]) -> None:
        self.out_dir, self.every, self.extra = out_dir, every, extra

    def on_train_batch_end(self, trainer: L.Trainer, module: ControlOFT, *_: object) -> None:
        step = trainer.global_step
        if not trainer.is_global_zero or step % self.every:
            return
        path = snapshot_path(self.out_dir, step)
        if not path.exists():
            module.export(path, **self.extra)


def fit(
    module: ControlOFT,
    dataset: Dataset,
    cfg: Training,
    out_dir: Path,
    seed: int = 0,
    sample_dataset: Dataset | None = None,
    export_extra: dict[str, object] | None = None,
) -> L.Trainer:
    """Train ``module`` on ``dataset`` (shuffled by ``seed``) as ``cfg`` says (its epochs, batch size and
    sample-grid frequency given: ``Training.for_task``), in the run folder ``out_dir``, resuming from
    ``cfg.resume``; snapshots carry ``export_extra`` in their metadata."""
    if None in (cfg.epochs, cfg.batch_size, cfg.sample_every):
        raise ValueError(
            "fit needs the epochs, batch size and sample-grid frequency: pass Training.for_task(experiment)"
        )
    ckpt_dir = out_dir / CHECKPOINTS
    candidates = resume_candidates(cfg.resume, ckpt_dir)
    if cfg.resume == "auto" and candidates and candidates[0].name != LAST:
        _warn(f"{ckpt_dir / LAST} is missing (a kill interrupted a save); resuming from {candidates[0].name}")
    fix = START_OVER if cfg.resume == "auto" else f"pass another --resume file, or {START_OVER}"
    checkpoint_io = AtomicCheckpointIO(fallbacks=candidates[1:], fix=fix)
    callbacks: list[Callback] = [
        # only last.ckpt (never last-v1.ckpt beside a stale one), rewritten every save_every steps
        ModelCheckpoint(
            dirpath=ckpt_dir,
            save_last=True,
            save_top_k=0,
            every_n_train_steps=cfg.save_every,
            enable_version_counter=False,
        ),
    ]
    if cfg.sample_every and sample_dataset is not None:
        callbacks.append(SampleGrid(sample_dataset, out_dir, cfg.sample_every, cfg.sample_steps))
    if cfg.snapshot_every:
        callbacks.append(Snapshots(out_dir, cfg.snapshot_every, dict(export_extra or {})))
    # logs/{tensorboard,csv}/version_N, one N per (re)start: a resumed run adds a folder, overwrites nothing
    tensorboard = TensorBoardLogger(out_dir / LOGS, name="tensorboard")
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        max_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        log_every_n_steps=cfg.log_every,
        gradient_clip_val=cfg.max_grad_norm,  # global norm over every trainable tensor (None: off)
        callbacks=callbacks,
        logger=[tensorboard, CSVLogger(out_dir / LOGS, name=CSV_LOGS, version=tensorboard.version)],
        use_distributed_sampler=False,  # ControlDataModule shards with its own seeded DistributedSampler
        enable_model_summary=False,
        default_root_dir=out_dir,
        plugins=[checkpoint_io],
    )
    data = ControlDataModule(dataset, cfg.batch_size, cfg.num_workers, seed)
    with warnings.catch_warnings():
        # the frozen SD stays in eval mode on purpose (no dropout in frozen parts); Lightning warns about it
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(
            module, datamodule=data, ckpt_path=candidates[0] if candidates else None, weights_only=True
        )
    return trainer
