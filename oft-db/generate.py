"""Generate images with a trained DreamBooth-OFT adapter through a diffusers ``StableDiffusionPipeline``.

The code and the full --help: ``oft.cli.db.generate``.
"""

from oft.cli.db.generate import cli

if __name__ == "__main__":
    cli()
