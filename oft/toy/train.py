"""Training the autoencoder with MSE and Adam, resumable from a checkpoint saved after every epoch."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from oft.common.files import atomic_torch_save
from oft.common.safe_load import load_error_line
from oft.toy.config import ToyConfig, ToyDataError
from oft.toy.model import ConvAutoEncoder


@dataclass(frozen=True)
class TrainResult:
    """Mean training loss per epoch, and training seconds summed over every (resumed) session."""

    losses: list[float]
    seconds: float


def _resume(
    checkpoint: Path, run_key: dict | None, model: ConvAutoEncoder, opt: torch.optim.Optimizer
) -> tuple[list[float], float]:
    """Load model and optimizer from ``checkpoint``; returns the losses and seconds recorded so far."""
    try:  # tensors and plain values only: no code in the file can run
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - pickled objects, truncated or foreign files: one line for all
        raise ToyDataError(
            f"cannot resume from {checkpoint} ({load_error_line(err)}); use another --output-dir or delete it"
        ) from None
    if state["run_key"] != run_key:
        raise ToyDataError(
            f"{checkpoint} belongs to a run with other settings ({state['run_key']}); "
            "use another --output-dir or delete it"
        )
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    return list(state["losses"]), float(state["seconds"])


def _train_epoch(
    model: ConvAutoEncoder, opt: torch.optim.Optimizer, images: torch.Tensor, batch_size: int, seed: int
) -> float:
    """One pass over ``images`` in an order drawn from ``seed``; returns the mean training loss."""
    gen = torch.Generator().manual_seed(seed)
    total = 0.0
    for idx in torch.randperm(len(images), generator=gen).split(batch_size):
        batch = images[idx]
        loss = F.mse_loss(model(batch), batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        total += loss.item() * len(idx)
    return total / len(images)


def train_autoencoder(
    model: ConvAutoEncoder,
    images: torch.Tensor,
    config: ToyConfig,
    seed: int,
    checkpoint: Path | None = None,
    run_key: dict | None = None,
) -> TrainResult:
    """Train with MSE and Adam; returns every epoch's mean loss and the training time summed over resumes.

    Each epoch's shuffle comes from ``seed`` and the epoch number, so a run resumed from ``checkpoint`` (saved
    atomically after every epoch, with model, optimizer and losses) ends with exactly the weights of an
    uninterrupted run. ``run_key`` identifies the run; a checkpoint with another key is refused.
    """
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    losses: list[float] = []
    seconds = 0.0
    if checkpoint is not None and checkpoint.is_file():
        losses, seconds = _resume(checkpoint, run_key, model, opt)
    bar = tqdm(range(len(losses), config.epochs), desc="train", initial=len(losses), total=config.epochs)
    for epoch in bar:
        epoch_start = time.perf_counter()
        losses.append(_train_epoch(model, opt, images, config.batch_size, seed * 100_003 + epoch))
        seconds += time.perf_counter() - epoch_start
        bar.set_postfix(loss=f"{losses[-1]:.4f}")
        if checkpoint is not None:
            state = {
                "run_key": run_key,
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "losses": losses,
                "seconds": seconds,
            }
            atomic_torch_save(checkpoint, state)
    return TrainResult(losses, seconds)
