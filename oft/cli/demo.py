"""The CPU demo (``make demo``): OFT, COFT and a rank-matched LoRA teach a pretrained tiny SD-shaped model to
follow canny edges on the synthetic task, with several seeds, through the library calls behind the real commands
(tool_add_control_oft, train.py, test_oft_parallel.py, eval_canny.py). The toy keeps the paper's proportions
(rotations outweigh the hint encoder; COFT's per-entry budget of SD1.5 at eps 1e-3). Prints the table (mean ± sd,
paired differences to LoRA), the proportions, the energy change and a verdict per claim of the paper (control,
convergence, stability, preservation), and writes
outputs/demo/{results.md,results.json,grid.png,loss.png,curves.png}.

    python scripts/demo.py                                    # 3 seeds: ~8 min on an idle 2-core Xeon
    python scripts/demo.py --seeds 1                          # one seed, a third of the time
    python scripts/demo.py --seeds 8 --steps 1200 --out_dir outputs/demo_large   # the README's larger run

Re-running reuses finished stages (delete the output folder to start over).
"""

from __future__ import annotations

import argparse

from oft.cli.flags import add_options, options_from
from oft.cli.run import run_main
from oft.demo.config import DemoConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, DemoConfig)
    args = p.parse_args(argv)
    args.config = options_from(DemoConfig, args, p)
    return args


def main(args: argparse.Namespace) -> dict:
    # the pipeline pulls in Lightning and diffusers (~4 s): imported here so that --help answers at once
    from oft.demo.pipeline import Demo

    return Demo(args.config).run()


def cli() -> None:
    """The command line: parse the flags and run, with one-line errors."""
    run_main(main, parse_args)


if __name__ == "__main__":
    cli()
