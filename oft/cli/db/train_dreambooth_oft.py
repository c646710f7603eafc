"""DreamBooth with OFT/COFT on SD1.5 (paper Table 1): train one subject, or run ``--run i`` of the 750-run benchmark.

    python oft-db/train_dreambooth_oft.py --run 137            # subject 137//25, prompt 137%25 (SPEC §4)
    python oft-db/train_dreambooth_oft.py --run 137 --dry-run  # print what run 137 is, train nothing
    python oft-db/train_dreambooth_oft.py --instance_data_dir my_dog/ --instance_prompt "a photo of qwe dog" \\
        --class_prompt "a photo of dog" --class_data_dir data/class_data/dog --output_dir outputs/my_dog

Defaults are the reference's (r=4, COFT eps=6e-5, lr 6e-5, batch 1, 512 px, 200 class images, seed 0).
Re-running the same command resumes from the newest checkpoint in the output folder (``--resume_from_checkpoint
latest``, the default), or returns at once when the run finished; ``--resume_from_checkpoint none`` starts over
at step 0 and deletes the earlier run's checkpoints, adapter, log and validation images.
"""

from __future__ import annotations

import argparse
import logging
from dataclasses import asdict, fields
from pathlib import Path

from oft.cli.db.common import add_benchmark_folders
from oft.cli.flags import add_options
from oft.cli.run import run_main
from oft.common.paths import data_root
from oft.db.config import DreamBoothConfig
from oft.db.runs import describe_run, run_settings
from oft.specs.benchmark import read_table


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    bench = parser.add_argument_group("benchmark run (fills the subject, prompts and folders below)")
    bench.add_argument("--run", type=int, help="benchmark run 0..749: subject run//25, prompt run%%25")
    add_benchmark_folders(
        bench, "dreambooth/ (and class_data/)", runs="runs go to OUTPUT_ROOT/{subject}-{prompt}"
    )
    bench.add_argument(
        "--class_root",
        default=None,
        help="class images go to CLASS_ROOT/{class} (default DATA_ROOT/class_data)",
    )
    bench.add_argument(
        "--dry-run", action="store_true", help="print the run's settings and exit without training"
    )
    add_options(parser.add_argument_group("training options (defaults: the reference's)"), DreamBoothConfig)
    return parser.parse_args(argv)


def main(args: argparse.Namespace) -> Path | None:
    values = {f.name: getattr(args, f.name) for f in fields(DreamBoothConfig)}
    extra = {}
    if args.run is not None:
        root = data_root(args.data_root)
        run, settings = run_settings(
            args.run, read_table(root / "dreambooth"), root, args.output_root, args.class_root
        )
        defaults = {f.name: f.default for f in fields(DreamBoothConfig)}
        explicit = {k: v for k, v in values.items() if v != defaults[k]}
        values = {**values, **settings, **explicit}  # flags given on the command line win
        extra = {
            "run": run.index,
            "subject": run.subject,
            "class_noun": run.class_noun,
            "eval_prompt": run.eval_prompt,
        }
        if args.dry_run:
            print(describe_run(run, values))
            return None
    cfg = DreamBoothConfig(**values)
    if args.dry_run:
        print("\n".join(f"{k}: {v}" for k, v in asdict(cfg).items()))
        return None
    # the library call pulls in diffusers (~3 s): imported here so that --help and flag errors answer at once
    from oft.db.train import train

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return train(cfg, extra)


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args, errors=(ValueError, FileNotFoundError, RuntimeError))


if __name__ == "__main__":
    cli()
