"""The oft-control jobs, one call each, taking config objects: train (R + hint encoder), post-fit magnitudes,
sample the validation set. The command lines (``oft.cli.control``) and the demo call these.
"""

from __future__ import annotations

import os
from pathlib import Path

import lightning as L

from oft.common.files import create_output_folder
from oft.control.checkpoint import ControlModel, check_flags_match
from oft.control.config import (
    FINAL_MODEL,
    GENERATED_DIR,
    NORM_DIR,
    NORM_MODEL,
    Experiment,
    Sampling,
    Training,
)
from oft.control.inference import SamplingJob, chunk, local_devices, run_parallel
from oft.control.model import ControlOFT
from oft.control.training import fit

Model = str | os.PathLike | ControlModel


def _check_model(model: Model, experiment: Experiment) -> None:
    """A control-model file must have been built with the experiment's adapter flags (one line if not)."""
    if not isinstance(model, ControlModel):
        check_flags_match(model, **experiment.adapter_flags())


def train_module(module: ControlOFT, experiment: Experiment, training: Training, folder: Path) -> L.Trainer:
    """Fit ``module`` on the experiment's training set (sample grids from its validation set) in ``folder``."""
    training = training.for_task(experiment)
    train_set = experiment.dataset("train")
    sample_set = experiment.dataset("val") if training.sample_every else None
    return fit(module, train_set, training, folder, experiment.seed, sample_set, {"task": experiment.control})


def train(experiment: Experiment, training: Training, model: Model, *, stage: str = "oft") -> Path:
    """train.py (``stage="oft"``: R and the hint encoder, from the initial model ``model``) and
    train_with_norm.py (``stage="magnitude"``: per-output scales of a trained ``model``). Returns the exported
    model: ``<run folder>/control_final.safetensors``, or ``control_norm.safetensors`` for post-fitting."""
    out = experiment.run_dir
    folder, result = (out, FINAL_MODEL) if stage == "oft" else (out / NORM_DIR, NORM_MODEL)
    _check_model(model, experiment)
    create_output_folder(folder, f"--output_dir {out}")  # before data and model load: fails in a second
    module = ControlOFT(
        model,
        experiment.base,
        stage=stage,
        lr=training.lr,
        weight_decay=training.weight_decay,
        seed=experiment.seed,
        gradient_checkpointing=training.gradient_checkpointing,
        timestep_range=training.timestep_range,
        cache_encodings=training.cache_encodings,
    )
    trainer = train_module(module, experiment, training, folder)
    if trainer.is_global_zero:
        module.export(out / result, task=experiment.control)
        print(f"wrote {out / result}")
    return out / result


def sample(
    experiment: Experiment,
    sampling: Sampling,
    model: Model | None = None,
    *,
    out_dir: str | os.PathLike | None = None,
    img_id: int | None = None,
) -> Path:
    """test_oft_parallel.py: sample the validation set (chunk ``img_id`` only, if given) with ``model``
    [default: the run's trained model] into ``out_dir`` [default: <run folder>/generated]."""
    run = experiment.run_dir
    model = run / FINAL_MODEL if model is None else model
    _check_model(model, experiment)
    folder = Path(out_dir or run / GENERATED_DIR)
    create_output_folder(folder, f"--out_dir {folder}" if out_dir else f"--output_dir {run}")
    data = experiment.dataset("val", full=sampling.full)
    job = SamplingJob(model, experiment.base, folder, sampling, experiment.seed)
    if img_id is not None:
        indices, devices = list(chunk(img_id, sampling.batch, len(data))), local_devices(1)
    else:
        indices, devices = list(range(len(data))), local_devices(sampling.workers)
    run_parallel(job, data, indices, sampling.batch, devices, sampling.threads)
    print(f"{len(indices)} items in {folder}")
    return folder
