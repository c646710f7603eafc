"""The interactive app: a Gradio page that samples a trained control model from a control image, or the canny
edges of a photo, and a prompt (number of images, DDIM steps, guidance, seed), as ControlNet's gradio apps do.
Without --model it opens the trained tiny demo model shipped in oft/demo/tiny_control/ on the shipped tiny
base (64 px, DDIM 20, CFG 5): it runs on a CPU out of the box. Image n of seed s is drawn with the seed
test_oft_parallel.py --seed s gives sample n of item 0 (OFTControlPipeline, which matches its sampler).

    python oft-control/app.py                          # the tiny demo model at http://127.0.0.1:7860
    python oft-control/app.py --model outputs/control/canny_r4_coft_eps0.001/control_final.safetensors \\
        --base models/v1-5-pruned.ckpt --device cuda

Needs the optional dependency gradio (pip install -e '.[app]'). Offline: no analytics, no share link.
"""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

from oft.cli.run import run_main
from oft.demo.app_model import APP_BASE, APP_MODEL, APP_SAMPLER

DEFAULT_RESOLUTION = 512  # for control files that do not record the size they were trained at


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--model",
        type=Path,
        default=APP_MODEL,
        help="trained control file (control_final.safetensors, control_norm.safetensors, a .ckpt) "
        "[default: the shipped tiny demo model]",
    )
    p.add_argument(
        "--base",
        default=None,
        help="the SD checkpoint the model was built on [default: the one the file records or "
        "carries; the shipped tiny base for the default model]",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="image size in pixels, a multiple of 8 [default: the size the model file records, "
        f"else {DEFAULT_RESOLUTION}]",
    )
    p.add_argument("--device", default=None, help="torch device [default: cuda if available, else cpu]")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (0.0.0.0: every interface)")
    p.add_argument("--port", type=int, default=None, help="port [default: the first free one from 7860]")
    args = p.parse_args(argv)
    if args.resolution is not None and (args.resolution < 8 or args.resolution % 8):
        p.error(f"--resolution must be a positive multiple of 8, got {args.resolution}")
    return args


def main(args: argparse.Namespace, block: bool = True) -> str:
    """Load the model, build the page and serve it (``block=False``: return its URL at once)."""
    if not args.model.is_file():
        raise FileNotFoundError(f"control model not found: {args.model}; pass --model <trained control file>")
    if importlib.util.find_spec("gradio") is None:
        raise ModuleNotFoundError("the app needs gradio: pip install -e '.[app]'")
    # diffusers and gradio (~5 s): imported here so that --help and a missing file answer at once
    import torch

    from oft.control.pipeline import OFTControlPipeline
    from oft.demo.app import build_app, serve
    from oft.specs.sampling import CONTROL_EVAL

    shipped = args.model.resolve() == APP_MODEL.resolve()
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    pipe = OFTControlPipeline.from_control_file(
        args.model,
        args.base or (APP_BASE if shipped else None),
        device=device,
        sampler=APP_SAMPLER if shipped else CONTROL_EVAL,
    )
    size = args.resolution or int(pipe.meta.get("resolution", DEFAULT_RESOLUTION))
    app = build_app(pipe, pipe.meta, size, title=f"OFT control: {args.model.name}")
    return serve(app, args.host, args.port, block)


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args, errors=(FileNotFoundError, ValueError, ModuleNotFoundError))


if __name__ == "__main__":
    cli()
