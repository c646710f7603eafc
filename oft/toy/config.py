"""The settings of the toy experiment (training tables and one invocation) and its one expected error."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ToyConfig:
    """Settings of one run; the two tables below are the only place their defaults live."""

    epochs: int
    image_size: int
    num_images: int
    batch_size: int
    lr: float = 1e-3  # Adam, as in the reference


# A few minutes on 2 CPU cores; enough training for the angle/magnitude gap to be unambiguous.
CPU_DEFAULTS = ToyConfig(epochs=20, image_size=64, num_images=1000, batch_size=64)
# The reference / paper setting (GPU): 64×64, the first 1,000 images, batch 128, 200 epochs.
PAPER_DEFAULTS = ToyConfig(epochs=200, image_size=64, num_images=1000, batch_size=128)


@dataclass(frozen=True)
class ExperimentConfig:
    """One invocation of :func:`oft.toy.experiment.run_experiment`: training settings, images, outputs."""

    train: ToyConfig
    data_root: Path  # Flowers-102 sits (or is downloaded) under <data_root>/flowers-102
    output_dir: Path  # toy_exp_ae.png, errors.json and the resumable checkpoint.pt
    dataset: str = "auto"  # one of oft.toy.data.DATASETS
    download: bool = False  # fetch Flowers-102 with torchvision when it is missing
    num_test: int = 64  # held-out images the errors are measured on
    grid_rows: int = 6  # test images shown in the PNG grid
    seed: int = 0


class ToyDataError(RuntimeError):
    """A dataset is missing or cannot be fetched, or a checkpoint cannot be resumed; the message says what to do."""
