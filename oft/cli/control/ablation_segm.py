"""Fig. 1's data-efficiency sweep: for each training-set size N (--n_samples), train --control ablation_segm on the
first N ADE20K training items (each repeated 100 times, one epoch), sample segm's full validation set and score
it with the S2I metrics (SegFormer-B4 mIoU / mAcc / aAcc), then write one table of metric vs N.

    python oft-control/ablation_segm.py --eps=1e-3 --r=4 --coft --n_samples 1 10 100 1000
    python oft-control/ablation_segm.py --eps=1e-3 --r=4 --coft --dry-run     # the per-N commands, e.g. for DDP

Writes <sweep folder>/n<N>/ (a run folder: control_final.safetensors, generated/eval_segm.json, ...) and
<sweep folder>/fig1.{json,md}. Rerunning skips every finished N and resumes the others where they stopped. The
sweep runs in this one process on one device; --dry-run prints the train.py / test_oft_parallel.py /
eval_segm.py commands of the unfinished N instead, for job arrays or DDP.
"""

from __future__ import annotations

import argparse
import shlex

from oft.cli.flags import add_options, flag_names, flags_of, options_from
from oft.cli.run import run_main
from oft.common.paths import models_root
from oft.control.config import RUNS_ROOT, Experiment, Sampling, Training
from oft.metrics.segmentation import Segmenter, load_segformer
from oft.specs.tasks import ABLATION, ABLATION_SIZES


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        *flag_names("model"),
        dest="model",
        default=str(models_root() / "control_sd15_ini_oft.ckpt"),
        help="initial control model from tool_add_control_oft.py [default: %(default)s]",
    )
    p.add_argument(
        *flag_names("n_samples"),
        dest="sizes",
        type=int,
        nargs="+",
        default=list(ABLATION_SIZES),
        help="training-set sizes N [default: %(default)s, ours: the paper does not list Fig. 1's]",
    )
    p.add_argument(
        *flag_names("output_dir"),
        dest="output_dir",
        default=None,
        help=f"sweep folder [default: {RUNS_ROOT}/{ABLATION}_sweep_r<r>_<coft_eps|oft>]",
    )
    add_options(
        p, Experiment, skip=("control", "n_samples", "output_dir", "synthetic_hint", "synthetic_length")
    )
    add_options(p, Training)
    add_options(p, Sampling)
    p.add_argument("--labels", help="ADE20K annotation folder [default: <data-root>/ADE20K/val/annotations]")
    p.add_argument("--segformer", help="SegFormer-B4 transformers folder [default: see eval_segm.py --help]")
    p.add_argument("--device", default="cpu", help="torch device of SegFormer, e.g. cuda [default: cpu]")
    p.add_argument(
        "--dry-run", action="store_true", help="print the commands of the unfinished N, run nothing"
    )
    args = p.parse_args(argv)
    given = {"control": ABLATION, "n_samples": min(args.sizes)}
    args.experiment = options_from(Experiment, args, p, **given)
    args.training, args.sampling = options_from(Training, args, p), options_from(Sampling, args, p)
    return args


def commands(args: argparse.Namespace) -> list[str]:
    """The train.py / test_oft_parallel.py / eval_segm.py command lines of the sweep's unfinished N."""
    from oft.control import ablation  # Lightning and diffusers (~4 s): not on --help

    points = ablation.plan(args.experiment, args.sizes)
    scoring = ["--device", args.device]
    for flag, value in (
        ("--labels", args.labels),
        ("--model", args.segformer),
        ("--data-root", args.data_root),
    ):
        scoring += [flag, value] if value else []
    lines = []
    for point in (p for p in points if not p.report.is_file()):
        run = flags_of(point.experiment)
        if not point.trained.is_file():
            lines.append(["oft-control/train.py", "--model", args.model, *run, *flags_of(args.training)])
        lines.append(["oft-control/test_oft_parallel.py", *run, *flags_of(args.sampling)])
        lines.append(["oft-control/eval_segm.py", str(point.generated), *scoring])
    return [shlex.join(["python", *line]) for line in lines]


def main(args: argparse.Namespace, segmenter: Segmenter | None = None) -> list[str]:
    """Run the sweep and return the summary files, or with --dry-run the commands it would run; ``segmenter``
    replaces SegFormer when given (tests)."""
    if args.dry_run:
        lines = commands(args)
        print("\n".join(lines) if lines else "every N is finished: rerun without --dry-run for the table")
        return lines
    # the sweep pulls in Lightning and diffusers (~4 s): imported here so that --help and flag errors answer at once
    from oft.control import ablation

    def load() -> Segmenter:
        return segmenter or load_segformer(args.segformer, args.device)

    points = ablation.plan(args.experiment, args.sizes)
    paths = ablation.run_sweep(points, args.training, args.sampling, args.model, load, args.labels)
    return [str(path) for path in paths]


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
