"""Run a range of the 750 DreamBooth benchmark runs on this machine: one run per visible GPU, finished runs
skipped, interrupted ones resumed. The whole sweep on an 8-GPU node is one command:

    python oft-db/run_queue.py --runs 0-749                      # all visible GPUs
    python oft-db/run_queue.py --runs 0-24,100 --gpus 0,1 --dry-run
    python oft-db/run_queue.py --runs 0-749 -- --no-coft --output_root outputs/dreambooth-oft

Options after ``--`` go to every train_dreambooth_oft.py call. Each run logs to ``<run folder>/train.log``.
"""

from __future__ import annotations

import argparse
import sys

from oft.cli.db.common import add_output_root
from oft.cli.run import run_main
from oft.db.runs import plan_jobs, run_queue, train_argv, visible_gpus
from oft.specs.benchmark import get_run, parse_run_range

TRAIN_MODULE = "oft.cli.db.train_dreambooth_oft"  # run as python -m: works from a checkout and installed


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    argv = sys.argv[1:] if argv is None else list(argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []
    argv = argv[: argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="0-749", help="run indices: 137, 0-749, 0-24,50 (default: all 750)")
    p.add_argument(
        "--gpus",
        default=None,
        help="GPU ids to use, e.g. 0,1,2 (default: all visible); 'cpu' for one CPU worker",
    )
    add_output_root(p, "where the run folders are (skips finished ones)")
    p.add_argument(
        "--dry-run", action="store_true", help="print the plan (and each run's card) without training"
    )
    p.add_argument("--poll", type=float, default=5.0, help="seconds between checks for a free GPU")
    args = p.parse_args(argv)
    args.extra = ["--output_root", args.output_root, *extra]
    return args


def main(args: argparse.Namespace) -> dict[int, int]:
    indices = parse_run_range(args.runs)
    slots = [""] if args.gpus == "cpu" else args.gpus.split(",") if args.gpus else visible_gpus()
    jobs, done = plan_jobs(indices, lambda i: train_argv(i, TRAIN_MODULE, args.extra), args.output_root)
    print(
        f"{len(indices)} runs: {len(done)} finished (skipped), {len(jobs)} to run on {len(slots)} slot(s) {slots}"
    )
    if args.dry_run:
        for job in jobs:
            run = get_run(job.index)
            print(
                f"run {run.index:3d}: {run.subject} / {run.class_noun} / {run.validation_prompt!r} -> {job.folder}"
            )
        return {}
    codes = run_queue(jobs, slots, poll=args.poll)
    failed = sorted(i for i, c in codes.items() if c)
    print(f"finished {len(codes) - len(failed)} runs" + (f"; failed: {failed}" if failed else ""))
    return codes


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    sys.exit(1 if any(run_main(main, parse_args, errors=(ValueError,)).values()) else 0)


if __name__ == "__main__":
    cli()
