"""Download, verify, unpack and check one dataset or checkpoint (the helper behind scripts/*.sh).

The code and the full --help: ``oft.cli.setup_data``.
"""

from oft.cli.setup_data import cli

if __name__ == "__main__":
    cli()
