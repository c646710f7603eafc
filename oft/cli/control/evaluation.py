"""What the four evaluation commands share: the sampler's folder, which samples to score, the printed report."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from oft.cli.run import run_main
from oft.metrics.folder import SampleFolder, excluded_note, format_table, write_json

ERRORS = (OSError, RuntimeError, ValueError)  # a bad folder, a missing model, an unreadable image: one line


def evaluation_parser(doc: str | None) -> tuple[argparse.ArgumentParser, argparse._MutuallyExclusiveGroup]:
    """The parser of an evaluator: the folder, and ``--sample-index N`` or ``--all-samples`` (returned group,
    for an evaluator's own alternatives)."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("folder", help="sampling output folder written by test_oft_parallel.py")
    which = p.add_mutually_exclusive_group()
    which.add_argument(
        "--sample-index", type=int, default=0, help="generated sample n scored per item (default 0)"
    )
    which.add_argument(
        "--all-samples", action="store_true", help="score every sample of every item and average"
    )
    return p, which


def chosen_sample(args: argparse.Namespace) -> int | None:
    """The sample index to score, or None for every sample."""
    return None if args.all_samples else args.sample_index


def finish(
    result: dict,
    path: str | os.PathLike,
    folder: SampleFolder,
    header: Sequence[str],
    rows: Iterable[Sequence[object]],
    notes: Iterable[str] = (),
) -> dict:
    """Write ``result`` to ``path``, print the table beside the paper's values, then the notes and exclusions."""
    write_json(path, result)
    print(format_table(header, rows))
    for note in [*notes, excluded_note(folder)]:
        if note:
            print(note)
    return result


def run(main: Callable[[Any], dict], parse_args: Callable[[], Any]) -> dict:
    """``run_main`` with the evaluators' expected errors."""
    return run_main(main, parse_args, errors=ERRORS)
