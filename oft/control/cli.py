"""What the oft-control entry points share: flag groups, validation, run folders and training configs."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from oft.control.data import SYNTHETIC, build_dataset
from oft.control.defaults import PAPER, add_flags, flag_names, run_name, task_defaults
from oft.control.tasks import TASKS
from oft.data.synthetic import HINT_KINDS


def _flag(p: argparse.ArgumentParser, name: str, **kwargs: Any) -> None:
    p.add_argument(*flag_names(name), dest=name, **kwargs)


def add_model_flags(p: argparse.ArgumentParser) -> None:
    """Flags of every script after the tool: the adapter (it names the run), the task and its data, the base."""
    add_flags(p, "r", "eps", "coft", "block_share", "resolution", "seed")
    p.add_argument(
        "--control",
        default="segm",
        choices=[*TASKS, SYNTHETIC],
        help="task: which data and which per-task defaults [default: %(default)s]",
    )
    _flag(
        p,
        "synthetic_hint",
        default="canny",
        choices=HINT_KINDS,
        help="control image of --control synthetic [default: %(default)s]",
    )
    _flag(
        p,
        "synthetic_length",
        type=int,
        default=None,
        help="number of synthetic items [default: 64 train, 16 val]",
    )
    _flag(
        p,
        "data_root",
        default=None,
        help="folder holding ADE20K/, COCO/, ... [default: $OFT_DATA_ROOT or ./data]",
    )
    p.add_argument(
        "--base",
        default=None,
        help="base SD checkpoint or diffusers folder [default: the one recorded in the model file]",
    )
    _flag(
        p,
        "output_dir",
        default=None,
        help="run folder (checkpoints/, logs/, samples/, control_final.safetensors, generated/) "
        "[default: outputs/control/<task>_r<r>_<coft_eps|oft>]",
    )


def add_run_flags(p: argparse.ArgumentParser, epochs: str = "epochs") -> None:
    """Flags of train.py and train_with_norm.py: model and data, optimisation, scale-out, checkpoints, logs.

    ``epochs``: the ``PAPER`` entry that documents and defaults --epochs."""
    add_model_flags(p)
    add_flags(p, "lr", "weight_decay", "batch_size", "precision")
    # ``epochs`` names the table entry of --epochs: the task's epochs, or "norm_epochs" for post-fitting
    _flag(p, "epochs", type=int, default=PAPER[epochs].value, help=PAPER[epochs].help)
    _flag(
        p,
        "max_steps",
        type=int,
        default=-1,
        help="stop after this many optimizer steps in total (-1: all epochs)",
    )
    p.add_argument("--accelerator", default="auto", help="cpu, gpu, ... (Lightning) [default: %(default)s]")
    p.add_argument("--devices", default="auto", help="GPUs per node, e.g. 4 [default: %(default)s]")
    _flag(p, "num_nodes", type=int, default=1, help="nodes (multi-node DDP) [default: %(default)s]")
    p.add_argument("--strategy", default="auto", help="Lightning strategy, e.g. ddp [default: %(default)s]")
    _flag(p, "num_workers", type=int, default=4, help="data-loading processes per GPU [default: %(default)s]")
    p.add_argument(
        "--resume",
        default="auto",
        help="auto (continue from <run folder>/checkpoints/last.ckpt if present), none, or a .ckpt path",
    )
    _flag(p, "log_every", type=int, default=50, help="log the loss every N steps [default: %(default)s]")
    _flag(
        p,
        "save_every",
        type=int,
        default=500,
        help="rewrite checkpoints/last.ckpt every N steps [default: %(default)s]",
    )
    _flag(
        p,
        "sample_every",
        type=int,
        default=1000,
        help="write a sample grid every N steps, 0 = never [default: %(default)s]",
    )
    _flag(
        p, "sample_steps", type=int, default=20, help="DDIM steps of the sample grids [default: %(default)s]"
    )
    _flag(
        p,
        "timestep_range",
        type=int,
        nargs=2,
        default=None,
        metavar=("LO", "HI"),
        help="draw training timesteps from [LO, HI) only [default: all of [0, 1000), as the reference]; "
        "a mid range makes the zero-initialised hint encoder learn in hundreds of steps instead of thousands",
    )
    _flag(
        p,
        "gradient_checkpointing",
        action="store_true",
        help="recompute UNet activations in the backward pass (less memory, slower)",
    )


def check_run_flags(p: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.Namespace:
    """Validate flag combinations right after parsing (before any model loads)."""
    for name in ("batch_size", "epochs", "save_every", "log_every", "resolution"):
        value = getattr(args, name, None)
        if value is not None and value < 1:
            p.error(f"--{name} must be positive, got {value}")
    if args.resolution % 8:
        p.error(
            f"--resolution must be a multiple of 8 (hint encoder and VAE downsample by 8), got {args.resolution}"
        )
    if getattr(args, "sample_every", 0) < 0:
        p.error(f"--sample_every must be >= 0, got {args.sample_every}")
    return args


def run_dir(args: argparse.Namespace) -> Path:
    """The run folder: --output_dir, else outputs/control/<run name> (one rule for the three scripts)."""
    name = run_name(args.control, args.r, args.coft, args.eps, args.block_share)
    return Path(args.output_dir or Path("outputs/control") / name)


_PASSED = (
    "max_steps",
    "precision",
    "accelerator",
    "devices",
    "num_nodes",
    "strategy",
    "num_workers",
    "seed",
    "log_every",
    "save_every",
    "sample_every",
    "sample_steps",
    "resume",
)


def train_config(args: argparse.Namespace, out_dir: Path):
    """``TrainConfig`` from the run flags; epochs and batch size default to the task's."""
    from oft.control.training import TrainConfig  # Lightning: imported only by the training scripts

    epochs, batch_size = task_defaults(args.control)
    return TrainConfig(
        out_dir=out_dir,
        epochs=args.epochs or epochs,
        batch_size=args.batch_size or batch_size,
        **{k: getattr(args, k) for k in _PASSED},
    )


def dataset(args: argparse.Namespace, split: str, **options: Any):
    """The ``--control`` dataset of ``split`` as the flags describe it."""
    return build_dataset(
        args.control,
        split,
        root=args.data_root,
        resolution=args.resolution,
        synthetic_hint=args.synthetic_hint,
        synthetic_length=args.synthetic_length,
        seed=args.seed,
        **options,
    )


def run_datasets(args: argparse.Namespace):
    """(training set, sample-grid set or None) of ``--control``."""
    return dataset(args, "train"), (dataset(args, "val") if args.sample_every else None)
