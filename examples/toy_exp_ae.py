"""The paper's toy experiment (Fig. 2): an autoencoder rebuilt from angles only still reconstructs images,
from magnitudes only it does not. CPU defaults finish in a few minutes; ``--paper`` is the reference setting.

    python examples/toy_exp_ae.py                      # Flowers-102 if under data/, else offline photographs
    python examples/toy_exp_ae.py --paper --dataset flowers --download

Writes ``<output-dir>/toy_exp_ae.png`` (input | normal | angle-only | magnitude-only), ``errors.json`` and a
resumable ``checkpoint.pt``. The operators and data sets live in :mod:`oft.toy_ae`.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

import torch

from oft import toy_ae
from oft.data.files import atomic_write_json
from oft.paths import data_root


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    d = toy_ae.CPU_DEFAULTS
    p.add_argument(
        "--paper", action="store_true", help="the reference setting: " + str(toy_ae.PAPER_DEFAULTS)
    )
    p.add_argument("--epochs", type=int, help=f"training epochs (CPU default {d.epochs})")
    p.add_argument(
        "--image-size", type=int, help=f"square image side, a multiple of 8 (default {d.image_size})"
    )
    p.add_argument("--num-images", type=int, help=f"training images (default {d.num_images})")
    p.add_argument("--batch-size", type=int, help=f"batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d.lr})")
    p.add_argument(
        "--dataset", default="auto", choices=toy_ae.DATASETS, help="auto: flowers if present, else skimage"
    )
    p.add_argument(
        "--download", action="store_true", help="download Flowers-102 with torchvision (needs internet)"
    )
    p.add_argument("--data-root", help="datasets folder (default $OFT_DATA_ROOT or ./data)")
    p.add_argument("--output-dir", type=Path, default=Path("outputs/toy_exp_ae"))
    p.add_argument("--num-test", type=int, default=64, help="held-out images the errors are measured on")
    p.add_argument("--grid-rows", type=int, default=6, help="test images shown in the PNG grid")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    base = toy_ae.PAPER_DEFAULTS if args.paper else toy_ae.CPU_DEFAULTS
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


def main(args: argparse.Namespace) -> dict:
    """Train, rebuild the bottleneck three ways, write the grid and errors; returns what errors.json holds."""
    start = time.time()
    config = toy_ae.ToyConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(toy_ae.ToyConfig)})
    root = data_root(args.data_root)
    try:
        name = toy_ae.resolve_dataset(args.dataset, root, args.download)
        print(f"dataset: {toy_ae.DATASET_DESCRIPTIONS[name]}")
        load = dict(data_root=root, size=config.image_size, download=args.download)
        train = toy_ae.load_images(name, n=config.num_images, split="train", seed=args.seed, **load)
        test = toy_ae.load_images(name, n=args.num_test, split="test", seed=args.seed + 1, **load)
        torch.manual_seed(args.seed)
        model = toy_ae.ConvAutoEncoder()
        run_key = {"dataset": name, "seed": args.seed, **dataclasses.asdict(config)}
        run_key.pop("epochs")  # more epochs may continue a finished run
        trained = toy_ae.train_autoencoder(
            model, train, config, args.seed, args.output_dir / "checkpoint.pt", run_key
        )
    except toy_ae.ToyDataError as err:
        sys.exit(f"error: {err}")
    scale = toy_ae.angle_scale(model, train)
    recons = toy_ae.reconstruct(model, test, scale)
    report = toy_ae.error_report(recons, test, train)
    rows = slice(0, args.grid_rows)
    grid = args.output_dir / "toy_exp_ae.png"
    toy_ae.save_grid(grid, [test[rows]] + [recons[m][rows] for m in toy_ae.MODES], toy_ae.GRID_LABELS)
    result = {
        "dataset": name,
        "dataset_description": toy_ae.DATASET_DESCRIPTIONS[name],
        "config": dataclasses.asdict(config),
        "seed": args.seed,
        "num_test": len(test),
        "angle_scale": scale,
        "final_train_loss": trained.losses[-1],
        **report,
        "verdict": toy_ae.verdict(report["mse"]),
        "train_time_s": round(trained.seconds, 1),  # summed over resumed sessions
        "wall_time_s": round(time.time() - start, 1),  # this invocation
    }
    atomic_write_json(args.output_dir / "errors.json", result)
    print(f"wrote {grid} and {args.output_dir / 'errors.json'}")
    print(result["verdict"])
    return result


if __name__ == "__main__":
    main(parse_args())
