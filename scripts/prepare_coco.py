"""Prepare COCO 2017 for the canny (canny1k/5k/20k/50k) and depth control tasks.

The code and the full --help: ``oft.cli.prepare_coco``.
"""

from oft.cli.prepare_coco import cli

if __name__ == "__main__":
    cli()
