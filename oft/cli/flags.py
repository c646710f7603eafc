"""Flags from config dataclasses (fields made with ``oft.common.options.option``) and configs from flags.

Every field ``name`` becomes ``--name`` (and ``--name-with-dashes`` when it has underscores: the reference's
spelling and the usual one both work), plus the field's ``aliases``. The type comes from the annotation: bool
fields take ``--name`` / ``--no-name``; ``X | None`` is an optional X; ``tuple[int, int]`` takes two values.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

from oft.common.paths import DATA_ROOT_ENV, DATA_ROOT_FLAGS

C = TypeVar("C")


def flag_names(name: str, aliases: tuple[str, ...] = ()) -> list[str]:
    """``--block_share``, ``--block-share`` and the ``aliases``: every spelling of one flag."""
    names = [f"--{name}"]
    if "_" in name:
        names.append(f"--{name.replace('_', '-')}")
    return names + [a for a in aliases if a not in names]


def _strip_none(annotation: Any) -> Any:
    """``X`` of ``X | None``; any other annotation unchanged."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    return args[0] if union and len(args) == 1 else annotation


def _flag_type(annotation: Any) -> tuple[Any, int | str | None]:
    """(the type of one value, argparse's nargs) of a field annotation: ``tuple[int, int]`` -> (int, 2)."""
    annotation = _strip_none(annotation)
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is tuple:
        return args[0], len(args)
    if origin is list:
        return args[0], "+"
    return annotation, None


def add_options(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    only: tuple[str, ...] | None = None,
    skip: tuple[str, ...] = (),
    defaults: dict[str, Any] | None = None,
) -> None:
    """Add a flag for every field of the dataclass ``cls`` (or the fields ``only``, minus ``skip``);
    ``defaults`` replaces a field's default for this command."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if (only is not None and f.name not in only) or f.name in skip or "help" not in f.metadata:
            continue
        meta = f.metadata
        default = (defaults or {}).get(f.name, f.default)
        kind, nargs = _flag_type(hints[f.name])
        names = list(meta["names"]) if "names" in meta else flag_names(f.name, tuple(meta.get("aliases", ())))
        kwargs: dict[str, Any] = {"dest": f.name, "default": default, "help": meta["help"]}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = kind
            if nargs is not None:
                kwargs["nargs"] = nargs
            for key in ("choices", "metavar"):
                if key in meta:
                    kwargs[key] = meta[key]
            shown = meta.get("shown", None if default is None else default)
            if shown is not None:
                kwargs["help"] += f" [default: {_show(shown)}]"
        parser.add_argument(*names, **kwargs)


def _show(value: Any) -> str:
    return " ".join(map(str, value)) if isinstance(value, tuple | list) else str(value)


def options_from(
    cls: type[C], args: argparse.Namespace, parser: argparse.ArgumentParser | None = None, **given: Any
) -> C:
    """The config ``cls`` from the parsed flags (fields without a flag keep their defaults; ``given`` wins).
    A value the config refuses (``ValueError``) is a usage error of ``parser``: its message, exit status 2."""
    hints = typing.get_type_hints(cls)
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    for name, value in values.items():
        if isinstance(value, list) and typing.get_origin(_strip_none(hints[name])) is tuple:
            values[name] = tuple(value)
    try:
        return cls(**{**values, **given})
    except ValueError as err:
        if parser is None:
            raise
        parser.error(str(err))


def add_data_root(parser: argparse.ArgumentParser | argparse._ArgumentGroup, holds: str = "") -> None:
    """``--data-root`` (``--data_root`` also accepted): the datasets folder (``holds``: what this command reads
    there), the same flag on every command."""
    parser.add_argument(
        *DATA_ROOT_FLAGS,
        dest="data_root",
        default=None,
        help=f"datasets folder{f' holding {holds}' if holds else ''} [default: ${DATA_ROOT_ENV} or ./data]",
    )


def flags_of(config: object) -> list[str]:
    """The flags that rebuild ``config`` (the inverse of ``options_from``): every field with a flag whose value
    is not the default, in field order, e.g. ``["--r", "8", "--coft"]``."""
    flags: list[str] = []
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if "help" not in f.metadata or value == f.default:
            continue
        name = f.metadata["names"][0] if "names" in f.metadata else f"--{f.name}"
        if isinstance(value, bool):
            flags.append(name if value else f"--no-{name.removeprefix('--')}")
        elif value is not None:
            flags += [name, *map(str, value if isinstance(value, tuple | list) else (value,))]
    return flags
