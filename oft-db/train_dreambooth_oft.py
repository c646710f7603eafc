"""DreamBooth with OFT/COFT on SD1.5 (paper Table 1): train one subject, or run ``--run i`` of the 750-run benchmark.

The code and the full --help: ``oft.cli.db.train_dreambooth_oft``.
"""

from oft.cli.db.train_dreambooth_oft import cli

if __name__ == "__main__":
    cli()
