"""The repository's entry-point scripts as modules, so tests and the demo call their ``main`` in-process.

``oft-control/`` and ``oft-db/`` have dashes (the reference's folder names), so they cannot be imported as
packages; this loads ``<folder>/<name>.py`` by path.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

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
