"""C2I: canny-edge IoU and F1 of generated images against their targets (paper Table 2).

The code and the full --help: ``oft.cli.control.eval_canny``.
"""

from oft.cli.control.eval_canny import cli

if __name__ == "__main__":
    cli()
