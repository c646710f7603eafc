"""L2F: mean 68-point facial landmark error of generated faces (paper Table 2; lower is better).

The code and the full --help: ``oft.cli.control.eval_landmark``.
"""

from oft.cli.control.eval_landmark import cli

if __name__ == "__main__":
    cli()
