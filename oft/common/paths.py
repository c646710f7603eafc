"""Where datasets and checkpoints live: one rule shared by every tool.

Clusters keep datasets on shared storage, so the data root can be moved with ``--data-root`` or the
``OFT_DATA_ROOT`` environment variable (and models with ``OFT_MODELS_ROOT``); the default is ``./data``
and ``./models`` relative to the working directory, as in the reference README.
"""

from __future__ import annotations

import os
from pathlib import Path

DATA_ROOT_ENV = "OFT_DATA_ROOT"
MODELS_ROOT_ENV = "OFT_MODELS_ROOT"
# the data-root flag of every command: one spelling, the other accepted
DATA_ROOT_FLAGS = ("--data-root", "--data_root")


def data_root(override: str | os.PathLike | None = None) -> Path:
    """The datasets folder: ``override`` if given, else ``$OFT_DATA_ROOT``, else ``./data``."""
    return Path(override or os.environ.get(DATA_ROOT_ENV) or "data")


def models_root(override: str | os.PathLike | None = None) -> Path:
    """The checkpoints folder: ``override`` if given, else ``$OFT_MODELS_ROOT``, else ``./models``."""
    return Path(override or os.environ.get(MODELS_ROOT_ENV) or "models")
