"""The paper's settings for controllable generation (SPEC §3), in one table that generates the scripts' flags.

Per-task values (epochs, batch size per GPU, data folders) live in ``oft.control.tasks.TASKS``; everything else
that the reference hard-coded or took from a flag is here, with the flag's help text. ``add_flags`` turns
entries into argparse options, so a default in ``--help`` and in the code cannot disagree.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Default:
    """One flag: its paper value (None: derived at run time, see help), its type and what it means."""

    value: Any
    help: str
    type: Any = None  # argparse type; None for booleans (BooleanOptionalAction)
    choices: tuple | None = None


PAPER: dict[str, Default] = {
    # the adapter (reference flags: --r --eps --coft --block_share)
    "r": Default(4, "number of OFT blocks per layer (not the block size); paper: 4 (Table 3: 2/4/8/16)", int),
    "eps": Default(
        1e-3, "COFT deviation; block radius eps*b^2/sqrt(r); paper: 1e-3 (used only with --coft)", float
    ),
    "coft": Default(False, "constrained OFT: project R onto the eps-ball after every step (paper's COFT)"),
    "block_share": Default(False, "one rotation block shared by all r blocks of a layer"),
    # training (reference: AdamW lr 1e-5, batch 16 per GPU on 4 GPUs, fp32)
    "lr": Default(1e-5, "AdamW learning rate", float),
    "weight_decay": Default(0.01, "AdamW weight decay (torch's AdamW default, as the reference)", float),
    "batch_size": Default(None, "images per GPU per step (default: the task's, 16; landmark 4)", int),
    "epochs": Default(
        None, "training epochs (default: the task's reference value, e.g. segm 20, canny 11)", int
    ),
    "precision": Default(
        "32",
        "Lightning precision; the paper trained in fp32 (rotations are always float32)",
        str,
        ("32", "bf16-mixed", "16-mixed"),
    ),
    "resolution": Default(512, "image and control size in pixels (multiple of 8)", int),
    "seed": Default(
        0, "seed of shuffling, noise and timesteps (resumes reproduce an uninterrupted run)", int
    ),
    # post-fitting (train_with_norm.py): the paper says one extra epoch, the reference code ran 5
    "norm_epochs": Default(
        1, "magnitude post-fitting epochs (paper: 1; the reference code ran 5) [default: 1]", int
    ),
    # sampling for evaluation
    "steps": Default(50, "DDIM steps", int),
    "guidance": Default(
        9.0, "classifier-free guidance scale (the control stays in the unconditional branch)", float
    ),
    "eta": Default(0.0, "DDIM eta", float),
    "num_samples": Default(6, "samples per condition", int),
    "batch": Default(30, "items per chunk; --img_ID N processes chunk N (reference interface)", int),
}


def flag_names(name: str) -> list[str]:
    """``--block_share`` and ``--block-share``: the reference's underscores and the usual dashes both work."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return names


def add_flags(parser: argparse.ArgumentParser, *names: str, **overrides: Any) -> None:
    """Add the flags ``names`` of ``PAPER`` to ``parser``; ``overrides`` replaces a default for this script."""
    for name in names:
        entry = PAPER[name]
        default = overrides.get(name, entry.value)
        shown = "" if default is None else f" [default: {default}]"
        if entry.type is None:
            parser.add_argument(
                *flag_names(name),
                dest=name,
                default=default,
                action=argparse.BooleanOptionalAction,
                help=entry.help,
            )
        else:
            parser.add_argument(
                *flag_names(name),
                dest=name,
                default=default,
                type=entry.type,
                choices=entry.choices,
                help=entry.help + shown,
            )


# The synthetic task (tests, CPU demo) is not a paper task; these stand in for its TASKS entry.
SYNTHETIC_EPOCHS = 10
SYNTHETIC_BATCH_SIZE = 4


def task_defaults(control: str) -> tuple[int, int]:
    """(epochs, batch size per GPU) of ``--control``: the reference's per-task values from ``TASKS``."""
    from oft.control.tasks import get_task

    if control == "synthetic":
        return SYNTHETIC_EPOCHS, SYNTHETIC_BATCH_SIZE
    task = get_task(control)
    return task.epochs, task.batch_size


def run_name(control: str, r: int, coft: bool, eps: float, block_share: bool = False) -> str:
    """The one name of an experiment, used by every script for its default folder: ``segm_r4_coft_eps0.001``."""
    kind = f"coft_eps{eps:g}" if coft else "oft"
    return f"{control}_r{r}_{kind}{'_share' if block_share else ''}"
