"""Build the initial oft-control model from an SD1.5 checkpoint: OFT on the 144 control targets (R = 0) plus a
zero-initialised hint encoder, with the hyperparameters in the file's metadata.

    python oft-control/tool_add_control_oft.py --input_path=./models/v1-5-pruned.ckpt \\
        --output_path=./models/control_sd15_ini_oft.ckpt --eps=1e-3 --r=4 --coft

By default the output also carries a copy of the base SD (as the reference's did); --adapter-only writes only
the new weights (a few MB) and a reference to the base file.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from oft.control.checkpoint import build_initial
from oft.control.cli import run
from oft.control.defaults import add_flags, flag_names
from oft.paths import models_root


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        *flag_names("input_path"),
        dest="input_path",
        default=str(models_root() / "v1-5-pruned.ckpt"),
        help="SD1.5 single-file checkpoint (.ckpt/.safetensors) or diffusers folder [default: %(default)s]",
    )
    p.add_argument(
        *flag_names("output_path"),
        dest="output_path",
        default=str(models_root() / "control_sd15_ini_oft.ckpt"),
        help="control model to write (.ckpt, or .safetensors with --adapter-only) [default: %(default)s]",
    )
    add_flags(p, "r", "eps", "coft", "block_share")
    p.add_argument(
        *flag_names("adapter_only"),
        dest="adapter_only",
        action="store_true",
        help="store only the new weights and a reference to --input_path instead of a 4 GB copy",
    )
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> Path:
    path = build_initial(
        args.input_path,
        args.output_path,
        r=args.r,
        eps=args.eps if args.coft else None,
        coft=args.coft,
        block_share=args.block_share,
        adapter_only=args.adapter_only,
    )
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    run(main, parse_args)
