"""Config fields that carry their own --help: the library's config dataclasses are where every default lives,
and ``oft.cli.flags`` turns their fields into command-line flags, so a default in ``--help`` and in the code
cannot disagree."""

from __future__ import annotations

from dataclasses import field
from typing import Any


def option(default: Any, help: str, **flag: Any) -> Any:
    """A dataclass field with its default and --help text; ``flag`` spells its flag: ``names`` (all its
    spellings, the first shown first; default ``--name`` and ``--name-with-dashes``), ``aliases`` (more names),
    ``choices``, ``metavar``, ``shown`` (the default as --help states it, when it is derived)."""
    return field(default=default, metadata={"help": help, **flag})
