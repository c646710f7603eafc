"""FID between generated images and real images, as pytorch-fid computes it (paper Table 4).

The code and the full --help: ``oft.cli.control.eval_fid``.
"""

from oft.cli.control.eval_fid import cli

if __name__ == "__main__":
    cli()
