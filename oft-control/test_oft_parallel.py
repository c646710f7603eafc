"""Sample the validation set with a trained control model, for evaluation (paper §3): DDIM 50 steps, CFG 9, the

The code and the full --help: ``oft.cli.control.test_oft_parallel``.
"""

from oft.cli.control.test_oft_parallel import cli

if __name__ == "__main__":
    cli()
