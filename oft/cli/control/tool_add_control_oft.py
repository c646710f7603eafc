"""Build the initial oft-control model from an SD1.5 checkpoint: OFT on the 144 control targets (R = 0) plus a
zero-initialised hint encoder, with the hyperparameters in the file's metadata.

    python oft-control/tool_add_control_oft.py --input_path=./models/v1-5-pruned.ckpt \\
        --output_path=./models/control_sd15_ini_oft.ckpt --eps=1e-3 --r=4 --coft

By default the output also carries a copy of the base SD (as the reference's did); --adapter-only writes only
the new weights (a few MB) and a reference to the base file.

    python oft-control/tool_add_control_oft.py --count-only --r 2 4 8 16
    python oft-control/tool_add_control_oft.py --count-only --base sdxl

prints the trainable parameters per r (paper Table 3) on the weight-free SD1.5 architecture (--base: SD2.1's or
SDXL's), then per target set (--targets; the appendix ablation of where OFT goes: "attn" is oft-db's set), and
writes nothing. Building reads the base's architecture from --input_path (SD1.5, SD2.1 or SDXL).
"""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

from oft.cli.flags import add_options, flag_names
from oft.cli.run import run_main
from oft.common.files import create_output_folder
from oft.common.paths import models_root
from oft.control.checkpoint import build_initial
from oft.control.config import Experiment
from oft.control.params import (
    count_control_parameters,
    count_target_sets,
    format_parameter_table,
    format_target_set_table,
)
from oft.sd.configs import REAL_BASES

R = next(f for f in fields(Experiment) if f.name == "r")  # its default and help, with several values here


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        *flag_names("input_path"),
        dest="input_path",
        default=str(models_root() / "v1-5-pruned.ckpt"),
        help="SD single-file checkpoint (.ckpt/.safetensors; SD1.5, SD2.1 or SDXL) or diffusers folder "
        "[default: %(default)s]",
    )
    p.add_argument(
        *flag_names("output_path"),
        dest="output_path",
        default=str(models_root() / "control_sd15_ini_oft.ckpt"),
        help="control model to write (.ckpt, or .safetensors with --adapter-only) [default: %(default)s]",
    )
    p.add_argument(
        "--r",
        type=int,
        nargs="+",
        default=[R.default],
        help=R.metadata["help"] + " (several values only with --count-only) [default: %(default)s]",
    )
    add_options(p, Experiment, only=("eps", "coft", "block_share", "targets", "conv_layout"))
    p.add_argument(
        "--base",
        choices=REAL_BASES,
        default="sd15",
        help="the architecture --count-only counts [default: %(default)s]",
    )
    p.add_argument(
        *flag_names("adapter_only"),
        dest="adapter_only",
        action="store_true",
        help="store only the new weights and a reference to --input_path instead of a 4 GB copy",
    )
    p.add_argument(
        *flag_names("count_only"),
        dest="count_only",
        action="store_true",
        help="print the trainable-parameter tables (paper Table 3; every target set) for each --r and exit",
    )
    args = p.parse_args(argv)
    if any(r < 1 for r in args.r):
        p.error(f"--r takes positive block counts, got {args.r}")
    if not args.count_only and len(args.r) != 1:
        p.error(f"building a model takes one --r, got {args.r} (several values are for --count-only)")
    if args.conv_layout != "flat" and args.targets not in ("conv", "extended"):
        p.error(f"--conv_layout {args.conv_layout} needs convolutions: --targets conv or extended")
    return args


def main(args: argparse.Namespace) -> Path | str:
    if args.count_only:
        base = args.base
        table = format_parameter_table([count_control_parameters(r, base) for r in args.r])
        table += "\n\n" + format_target_set_table([row for r in args.r for row in count_target_sets(r, base)])
        print(table)
        return table
    output = Path(args.output_path)
    if output.is_dir():
        raise ValueError(
            f"--output_path {output} is a folder; give a file name, e.g. {output / 'ini_oft.ckpt'}"
        )
    create_output_folder(output.parent, f"--output_path {output}")  # before the SD loads
    path = build_initial(
        args.input_path,
        args.output_path,
        r=args.r[0],
        eps=args.eps if args.coft else None,
        coft=args.coft,
        block_share=args.block_share,
        adapter_only=args.adapter_only,
        targets=args.targets,
        conv_layout=args.conv_layout,
    )
    print(f"wrote {path}")
    return path


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
