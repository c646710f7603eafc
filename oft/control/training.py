"""Running oft-control training with Lightning: trainer, checkpointing, resume, logs and sample grids.

Both training scripts (``train.py``: R + hint encoder; ``train_with_norm.py``: magnitudes) call ``fit``.
Multi-GPU and multi-node is Lightning's DDP (``devices``, ``num_nodes``, ``strategy``); checkpoints are
``<out>/checkpoints/last.ckpt`` every ``save_every`` steps (only trainable tensors and optimizer state), so a
killed job loses at most the steps since the last save and ``resume="auto"`` picks it up.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from torchvision.utils import make_grid

from oft.control.data import collate
from oft.control.images import write_png
from oft.control.inference import generate
from oft.control.model import ControlOFT

LAST = "last.ckpt"


@dataclass
class TrainConfig:
    """Everything ``fit`` needs besides the module and data (the scripts' flags, validated)."""

    out_dir: Path
    epochs: int
    batch_size: int
    max_steps: int = -1
    precision: str = "32"
    accelerator: str = "auto"
    devices: str = "auto"
    num_nodes: int = 1
    strategy: str = "auto"
    num_workers: int = 4
    seed: int = 0
    log_every: int = 50
    save_every: int = 500
    sample_every: int = 0
    sample_steps: int = 20
    resume: str = "auto"


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


def resume_path(resume: str, ckpt_dir: Path) -> str | None:
    """``"none"`` -> None; ``"auto"`` -> ``last.ckpt`` if present; else the given file (which must exist)."""
    if resume == "none":
        return None
    if resume == "auto":
        last = ckpt_dir / LAST
        return str(last) if last.is_file() else None
    if not Path(resume).is_file():
        raise FileNotFoundError(f"--resume {resume}: no such checkpoint (use auto, none, or a .ckpt path)")
    return resume


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
        write_png(self.out_dir / "samples" / f"step_{step:07d}.png", grid)
        for logger in trainer.loggers:
            if isinstance(logger, TensorBoardLogger):
                logger.experiment.add_image("samples", grid, step)


def fit(
    module: ControlOFT, dataset: Dataset, cfg: TrainConfig, sample_dataset: Dataset | None = None
) -> L.Trainer:
    """Train ``module`` on ``dataset`` (shuffled) as ``cfg`` says, resuming from ``cfg.resume``."""
    ckpt_dir = cfg.out_dir / "checkpoints"
    ckpt_path = resume_path(cfg.resume, ckpt_dir)
    callbacks: list[Callback] = [
        # only last.ckpt, rewritten every save_every steps (Lightning writes it atomically)
        ModelCheckpoint(dirpath=ckpt_dir, save_last=True, save_top_k=0, every_n_train_steps=cfg.save_every),
    ]
    if cfg.sample_every and sample_dataset is not None:
        callbacks.append(SampleGrid(sample_dataset, cfg.out_dir, cfg.sample_every, cfg.sample_steps))
    # logs/{tensorboard,csv}/version_N, one N per (re)start: a resumed run adds a folder, overwrites nothing
    tensorboard = TensorBoardLogger(cfg.out_dir / "logs", name="tensorboard")
    trainer = L.Trainer(
        accelerator=cfg.accelerator,
        devices=cfg.devices,
        num_nodes=cfg.num_nodes,
        strategy=cfg.strategy,
        precision=cfg.precision,
        max_epochs=cfg.epochs,
        max_steps=cfg.max_steps,
        log_every_n_steps=cfg.log_every,
        callbacks=callbacks,
        logger=[tensorboard, CSVLogger(cfg.out_dir / "logs", name="csv", version=tensorboard.version)],
        use_distributed_sampler=False,  # ControlDataModule shards with its own seeded DistributedSampler
        enable_model_summary=False,
        default_root_dir=cfg.out_dir,
    )
    data = ControlDataModule(dataset, cfg.batch_size, cfg.num_workers, cfg.seed)
    with warnings.catch_warnings():
        # the frozen SD stays in eval mode on purpose (no dropout in frozen parts); Lightning warns about it
        warnings.filterwarnings("ignore", message=r"Found \d+ module\(s\) in eval mode")
        trainer.fit(module, datamodule=data, ckpt_path=ckpt_path)
    return trainer
