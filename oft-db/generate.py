"""Generate images with a trained DreamBooth-OFT adapter through a diffusers ``StableDiffusionPipeline``.

    python oft-db/generate.py --adapter outputs/dreambooth/dog-0/adapter.safetensors \\
        --prompt "a qwe dog wearing a santa hat" --num_images 4 --output_dir outputs/samples

Defaults are the reference's validation settings (DPM-Solver++ 25 steps, CFG 7.5, 512 px); the prompt defaults
to the run's validation prompt stored in the adapter. Image i uses seed ``--seed + i``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from oft.db.class_images import save_png
from oft.db.export import load_with_adapter, to_pipeline
from oft.db.train import TrainConfig
from oft.entry_points import run_main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--adapter", required=True, help="adapter.safetensors written by train_dreambooth_oft.py")
    p.add_argument(
        "--base",
        default=TrainConfig.pretrained_model,
        help="the SD1.5 it was trained on (file or diffusers folder)",
    )
    p.add_argument("--prompt", default=None, help="text prompt (default: the run's validation prompt)")
    p.add_argument("--negative_prompt", default="", help="negative prompt")
    p.add_argument("--num_images", type=int, default=4, help="images to generate")
    p.add_argument("--seed", type=int, default=0, help="image i uses seed SEED+i")
    p.add_argument("--steps", type=int, default=25, help="DPM-Solver++ steps")
    p.add_argument("--guidance", type=float, default=7.5, help="classifier-free guidance scale")
    p.add_argument("--resolution", type=int, default=512, help="image height and width")
    p.add_argument("--output_dir", default="outputs/samples", help="where 00.png, 01.png, ... are written")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cuda or cpu")
    p.add_argument("--fp16", action="store_true", help="half precision (GPU)")
    return p.parse_args(argv)


def main(args: argparse.Namespace) -> list[Path]:
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
            height=args.resolution,
            width=args.resolution,
            generator=torch.Generator().manual_seed(args.seed + i),
            output_type="pt",
        ).images[0]
        paths.append(out / f"{i:02d}.png")
        save_png(image.float().cpu(), paths[-1])
    print(f"wrote {len(paths)} images of {prompt!r} to {out}")
    return paths


if __name__ == "__main__":
    run_main(main, parse_args)
