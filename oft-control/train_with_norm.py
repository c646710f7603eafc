"""Magnitude post-fitting ("re-scaled OFT", paper §3 / Table 4): load a trained OFT/COFT control model, freeze

The code and the full --help: ``oft.cli.control.train_with_norm``.
"""

from oft.cli.control.train_with_norm import cli

if __name__ == "__main__":
    cli()
