"""The paper's toy experiment (Fig. 2): angles between neurons carry the semantics, magnitudes do not.

A small convolutional autoencoder (:mod:`oft.toy.model`) is trained to reconstruct images. At test time its
bottleneck is rebuilt from the angles alone or from the magnitudes alone (:mod:`oft.toy.operators`). If the
decoder still reconstructs the image from the angles alone but not from the magnitudes, the angular
information is what matters, which is why OFT rotates neurons (keeping their pairwise angles) instead of
rescaling them.

Differences from the reference ``examples/toy_exp_ae.py``: it took the patch norm of the bottleneck's own
*output* (3×3, stride 1, bias included) instead of the input patch that the filter sees, and rescaled the
angle-only code by a hand-picked 60; here ``‖p‖`` is the norm of the conv's real input patch (same stride and
padding) and the rescale is measured on the training set. It trained on the first 1,000 files of 102flowers
and showed reconstructions of those same images; here training uses Flowers-102's "train" split and the
errors are measured on held-out images (:mod:`oft.toy.data`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

import torch

from oft.common.files import atomic_write_json
from oft.toy.config import ExperimentConfig
from oft.toy.data import DATASET_DESCRIPTIONS, load_images, resolve_dataset
from oft.toy.model import MODES, ConvAutoEncoder, angle_scale, reconstruct
from oft.toy.report import GRID_LABELS, error_report, save_grid, verdict
from oft.toy.train import train_autoencoder


def run_key(dataset: str, config: ExperimentConfig) -> dict:
    """What a checkpoint must match to be resumed: everything that shapes the weights but the epoch count
    (more epochs may continue a finished run)."""
    key = {"dataset": dataset, "seed": config.seed, **dataclasses.asdict(config.train)}
    key.pop("epochs")
    return key


def run_experiment(config: ExperimentConfig, log: Callable[[str], object] = print) -> dict:
    """Train, rebuild the bottleneck three ways, write the grid and ``errors.json``; returns what it holds.

    Raises :class:`oft.toy.config.ToyDataError` when the image set is missing or the checkpoint in
    ``config.output_dir`` belongs to another run.
    """
    start = time.time()
    settings, out = config.train, config.output_dir
    name = resolve_dataset(config.dataset, config.data_root, config.download)
    log(f"dataset: {DATASET_DESCRIPTIONS[name]}")
    load = dict(data_root=config.data_root, size=settings.image_size, download=config.download)
    train = load_images(name, n=settings.num_images, split="train", seed=config.seed, **load)
    test = load_images(name, n=config.num_test, split="test", seed=config.seed + 1, **load)
    torch.manual_seed(config.seed)
    model = ConvAutoEncoder()
    trained = train_autoencoder(
        model, train, settings, config.seed, out / "checkpoint.pt", run_key(name, config)
    )
    scale = angle_scale(model, train)
    recons = reconstruct(model, test, scale)
    report = error_report(recons, test, train)
    rows = slice(0, config.grid_rows)
    grid = out / "toy_exp_ae.png"
    save_grid(grid, [test[rows]] + [recons[m][rows] for m in MODES], GRID_LABELS)
    result = {
        "dataset": name,
        "dataset_description": DATASET_DESCRIPTIONS[name],
        "config": dataclasses.asdict(settings),
        "seed": config.seed,
        "num_test": len(test),
        "angle_scale": scale,
        "final_train_loss": trained.losses[-1],
        **report,
        "verdict": verdict(report["mse"]),
        "train_time_s": round(trained.seconds, 1),  # summed over resumed sessions
        "wall_time_s": round(time.time() - start, 1),  # this invocation
    }
    atomic_write_json(out / "errors.json", result)
    log(f"wrote {grid} and {out / 'errors.json'}")
    log(result["verdict"])
    return result
