"""Pretrain the demo's tiny SD-shaped base (VAE, then UNet; text encoder random) on the synthetic task.

The code and the full --help: ``oft.cli.pretrain_tiny_base``.
"""

from oft.cli.pretrain_tiny_base import cli

if __name__ == "__main__":
    cli()
