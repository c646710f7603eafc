"""S2I: SegFormer-B4 segments the generated images; mIoU / mAcc / aAcc against ADE20K labels (paper Table 2).

The code and the full --help: ``oft.cli.control.eval_segm``.
"""

from oft.cli.control.eval_segm import cli

if __name__ == "__main__":
    cli()
