"""Generate images with a trained DreamBooth-OFT adapter through a diffusers ``StableDiffusionPipeline``.

    python oft-db/generate.py --adapter outputs/dreambooth/dog-0/adapter.safetensors \\
        --prompt "a qwe dog wearing a santa hat" --num_images 4 --output_dir outputs/samples

Defaults are the reference's validation settings (``oft.specs.sampling.DREAMBOOTH_VALIDATION``: DPM-Solver++,
its steps and CFG scale; 512 px); the prompt defaults to the run's validation prompt stored in the adapter.
Image i uses seed ``--seed + i``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from oft.cli.db.common import add_adapter_flags
from oft.cli.run import run_main
from oft.common.images import write_png
from oft.specs.sampling import DREAMBOOTH_VALIDATION


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_adapter_flags(p)
    p.add_argument("--prompt", default=None, help="text prompt (default: the run's validation prompt)")
    p.add_argument("--negative_prompt", default="", help="negative prompt")
    p.add_argument("--num_images", type=int, default=4, help="images to generate")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED+i")
    preset = DREAMBOOTH_VALIDATION  # the sampler of to_pipeline
    p.add_argument(
        "--steps", type=int, default=preset.steps, help="DPM-Solver++ steps (default: %(default)s)"
    )
    p.add_argument(
        "--guidance",
        type=float,
        default=preset.guidance,
        help="classifier-free guidance (default: %(default)s)",
    )
    p.add_argument(
        "--resolution",
        type=int,
        default=None,
        help="image height and width [default: the base's: 512 SD1.5, 768 SD2.1, 1024 SDXL]",
    )
    p.add_argument("--output_dir", default="outputs/samples", help="where 00.png, 01.png, ... are written")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--fp16", action="store_true", help="half precision (GPU)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> list[Path]:
    # the library call pulls in diffusers (~3 s): imported here so that --help and flag errors answer at once
    from oft.db.export import load_with_adapter, to_pipeline

    dtype = torch.float16 if args.fp16 else torch.float32
    models, meta = load_with_adapter(args.base, args.adapter, merge=True, device=args.device, dtype=dtype)
    prompt = args.prompt or meta.get("validation_prompt")
    if not prompt:
        raise ValueError("the adapter records no validation prompt: pass --prompt")
    pipe = to_pipeline(models)
    pipe.set_progress_bar_config(disable=True)
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(args.num_images):
        image = pipe(
            prompt,
            negative_prompt=args.negative_prompt or None,
            num_inference_steps=args.steps,
            guidance_scale=args.guidance,
            height=args.resolution or models.base.resolution,
            width=args.resolution or models.base.resolution,
            generator=torch.Generator().manual_seed(args.seed + i),
            output_type="pt",
        ).images[0]
        paths.append(out / f"{i:02d}.png")
        write_png(paths[-1], image)
    print(f"wrote {len(paths)} images of {prompt!r} to {out}")
    return paths


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
