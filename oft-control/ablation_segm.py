"""Fig. 1's data-efficiency sweep: train --control ablation_segm on the first N ADE20K items for each N, sample and
score (S2I metrics) each, and write one table of metric vs N.

The code and the full --help: ``oft.cli.control.ablation_segm``.
"""

from oft.cli.control.ablation_segm import cli

if __name__ == "__main__":
    cli()
