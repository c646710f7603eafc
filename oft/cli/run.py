"""Running a command line: ``main(parse_args())`` with the expected failures as one line, not a traceback."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from oft.common.files import WriteError

T = TypeVar("T")


def run_main(
    main: Callable[[Any], T],
    parse_args: Callable[[], Any],
    errors: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError),
) -> T:
    """``main(parse_args())`` for a command's entry: an expected failure (one of ``errors``: a missing file,
    a bad value; and always a ``WriteError``: an output that could not be written, e.g. on a full disk) exits
    with status 1 and the one line ``<command>: <message>`` instead of a traceback."""
    args = parse_args()
    try:
        return main(args)
    except (*errors, WriteError) as err:
        sys.exit(f"{Path(sys.argv[0]).stem}: {err}")
