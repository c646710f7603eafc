"""The repository's entry-point scripts: loading them as modules (tests and the demo call their ``main``
in-process) and running them from the command line with one-line errors.

``oft-control/`` and ``oft-db/`` have dashes (the reference's folder names), so they cannot be imported as
packages; ``load_script`` loads ``<folder>/<name>.py`` by path.
"""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any, TypeVar

from oft.data.files import WriteError

T = TypeVar("T")

REPO = Path(__file__).resolve().parents[1]


def load_script(name: str, folder: str = "oft-control") -> ModuleType:
    """The entry point ``<folder>/<name>.py`` of this repository as a fresh module."""
    path = REPO / folder / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"no entry point {folder}/{name}.py in {REPO}")
    spec = importlib.util.spec_from_file_location(f"{folder.replace('-', '_')}_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_main(
    main: Callable[[Any], T],
    parse_args: Callable[[], Any],
    errors: tuple[type[BaseException], ...] = (FileNotFoundError, ValueError),
) -> T:
    """``main(parse_args())`` for a script's ``__main__``: an expected failure (one of ``errors``: a missing file,
    a bad value; and always a ``WriteError``: an output that could not be written, e.g. on a full disk) exits
    with status 1 and the one line ``<script>: <message>`` instead of a traceback."""
    args = parse_args()
    try:
        return main(args)
    except (*errors, WriteError) as err:
        sys.exit(f"{Path(sys.argv[0]).stem}: {err}")
