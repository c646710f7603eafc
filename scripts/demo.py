"""The CPU demo (``make demo``): OFT, COFT and a rank-matched LoRA teach a pretrained tiny SD-shaped model to

The code and the full --help: ``oft.cli.demo``.
"""

from oft.cli.demo import cli

if __name__ == "__main__":
    cli()
