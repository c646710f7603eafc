"""Merge a trained DreamBooth-OFT adapter into SD1.5 and save a standalone model any SD tool opens.

The code and the full --help: ``oft.cli.db.merge_adapter``.
"""

from oft.cli.db.merge_adapter import cli

if __name__ == "__main__":
    cli()
