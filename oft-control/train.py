"""Train oft-control: OFT rotations on the 144 control targets + the hint encoder, SD1.5 frozen (paper §3).

The code and the full --help: ``oft.cli.control.train``.
"""

from oft.cli.control.train import cli

if __name__ == "__main__":
    cli()
