"""The paper's toy experiment (Fig. 2): an autoencoder rebuilt from angles only still reconstructs images,
from magnitudes only it does not. CPU defaults finish in a few minutes; ``--paper`` is the reference setting.

    python examples/toy_exp_ae.py                      # Flowers-102 if under data/, else offline photographs
    python examples/toy_exp_ae.py --paper --dataset flowers --download

Writes ``<output-dir>/toy_exp_ae.png`` (input | normal | angle-only | magnitude-only), ``errors.json`` and a
resumable ``checkpoint.pt``. The experiment, operators and data sets live in :mod:`oft.toy`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from pathlib import Path

from oft.cli.flags import add_data_root
from oft.cli.run import run_main
from oft.common.paths import data_root
from oft.toy.config import CPU_DEFAULTS, PAPER_DEFAULTS, ExperimentConfig, ToyConfig, ToyDataError
from oft.toy.data import DATASETS
from oft.toy.experiment import run_experiment

DEFAULT_OUTPUT_DIR = Path("outputs/toy_exp_ae")
# the defaults of the flags that are not training settings: ExperimentConfig's own
_DEFAULTS = {f.name: f.default for f in dataclasses.fields(ExperimentConfig)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = CPU_DEFAULTS
    p.add_argument("--paper", action="store_true", help="the reference setting: " + str(PAPER_DEFAULTS))
    p.add_argument("--epochs", type=int, help=f"training epochs (CPU default {d.epochs})")
    p.add_argument(
        "--image-size", type=int, help=f"square image side, a multiple of 8 (default {d.image_size})"
    )
    p.add_argument("--num-images", type=int, help=f"training images (default {d.num_images})")
    p.add_argument("--batch-size", type=int, help=f"batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr})")
    p.add_argument(
        "--dataset",
        default=_DEFAULTS["dataset"],
        choices=DATASETS,
        help="auto: flowers if present, else skimage",
    )
    p.add_argument(
        "--download", action="store_true", help="download Flowers-102 with torchvision (needs internet)"
    )
    add_data_root(p)
    p.add_argument("--output-dir", type=Path, default=DEFAULT_OUTPUT_DIR)
    p.add_argument(
        "--num-test",
        type=int,
        default=_DEFAULTS["num_test"],
        help="held-out images the errors are measured on",
    )
    p.add_argument(
        "--grid-rows", type=int, default=_DEFAULTS["grid_rows"], help="test images shown in the PNG grid"
    )
    p.add_argument("--seed", type=int, default=_DEFAULTS["seed"])
    args = p.parse_args(argv)
    base = PAPER_DEFAULTS if args.paper else CPU_DEFAULTS
    for field in dataclasses.fields(base):  # explicit flags override the chosen table
        if getattr(args, field.name) is None:
            setattr(args, field.name, getattr(base, field.name))
    if args.image_size <= 0 or args.image_size % 8:
        p.error(
            f"--image-size {args.image_size} must be a positive multiple of 8 (three stride-2 convolutions)"
        )
    for name in ("epochs", "num_images", "batch_size", "num_test", "grid_rows"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.lr <= 0:
        p.error("--lr must be positive")
    return args


def experiment_config(args: argparse.Namespace) -> ExperimentConfig:
    """The parsed flags as the library's config (``--data-root`` resolved: flag, $OFT_DATA_ROOT, ./data)."""
    train = ToyConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(ToyConfig)})
    return ExperimentConfig(
        train=train,
        data_root=data_root(args.data_root),
        output_dir=args.output_dir,
        dataset=args.dataset,
        download=args.download,
        num_test=args.num_test,
        grid_rows=args.grid_rows,
        seed=args.seed,
    )


def main(args: argparse.Namespace) -> dict:
    """Run the experiment; returns what errors.json holds. A missing data set or a foreign checkpoint exits
    with one line."""
    try:
        return run_experiment(experiment_config(args))
    except ToyDataError as err:
        sys.exit(f"error: {err}")


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args, errors=())


if __name__ == "__main__":
    cli()
