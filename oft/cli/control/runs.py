"""What train.py and train_with_norm.py share: their flags (a model file, the experiment, the training)."""

from __future__ import annotations

import argparse

from oft.cli.flags import add_options, flag_names, options_from
from oft.control.config import Experiment, Training


def parse_run(
    doc: str | None,
    argv: list[str] | None,
    training: type[Training],
    model_default: str | None,
    model_help: str,
    model_aliases: tuple[str, ...] = (),
) -> argparse.Namespace:
    """Parse a training command: ``--model`` plus the flags of ``Experiment`` and of ``training``; the parsed
    configs are ``args.experiment`` and ``args.training``."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(*flag_names("model", model_aliases), dest="model", default=model_default, help=model_help)
    add_options(p, Experiment)
    add_options(p, training)
    args = p.parse_args(argv)
    args.experiment, args.training = options_from(Experiment, args, p), options_from(training, args, p)
    return args
