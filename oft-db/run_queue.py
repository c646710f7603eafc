"""Run a range of the 750 DreamBooth benchmark runs on this machine: one run per visible GPU, finished runs
skipped, interrupted ones resumed.

The code and the full --help: ``oft.cli.db.run_queue``.
"""

from oft.cli.db.run_queue import cli

if __name__ == "__main__":
    cli()
