"""Command-line flags derived from option dataclasses, so each option's default and help are written once.

An option dataclass (AnnotateOptions, LLMSettings, EvalOptions) gives each field its default and its help, as
TRL's configs do: `field(default=..., metadata={"help": ...})`. `add_dataclass_arguments` adds one flag per field,
`--{prefix}{name}` with `_` as `-`, typed from the field's annotation (`int`, `float`, `str`, each optionally
`| None`); `dataclass_values` reads them back. Other metadata keys a field may carry:

- `cli: False`: no flag (set only from Python or a config file);
- `flag`: the option string, where it is not the field's name (`--map` for `field_map`);
- `choices`, `metavar`, `action` (`"append"`: repeatable, the values as a list): as for `add_argument`.

The help shows the default, except where it is None (the help says in words what None means). `{default}` in a
help text is replaced by the field's default, for a flag whose own default is None because the command decides it
later (`--chunk-size`: 512, or more with an LLM).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Callable, Iterable
from typing import Any

_TYPES: dict[str, type | None] = {"int": int, "float": float, "str": None}


def _flag_fields(cls: type, names: Iterable[str] | None) -> list[dataclasses.Field]:
    by_name = {f.name: f for f in dataclasses.fields(cls)}
    if names is None:
        return [f for f in by_name.values() if f.metadata.get("cli", True)]
    return [by_name[n] for n in names]


def _flag(f: dataclasses.Field, prefix: str) -> str:
    return f.metadata.get("flag") or f"--{prefix}{f.name.replace('_', '-')}"


def _dest(f: dataclasses.Field, prefix: str) -> str:
    return _flag(f, prefix).lstrip("-").replace("-", "_")


def field_default(f: dataclasses.Field) -> Any:
    """The field's default (its factory's value), or None for a field without one."""
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return None


def _type(f: dataclasses.Field) -> type | None:
    """The flag's type from the annotation: `int | None` -> int. Other annotations need a `types` entry."""
    names = [t.strip() for t in str(f.type).split("|") if t.strip() != "None"]
    if len(names) != 1 or names[0] not in _TYPES:
        raise TypeError(f"{f.name}: {f.type}: give the flag's type (types={{{f.name!r}: ...}})")
    return _TYPES[names[0]]


def add_dataclass_arguments(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    cls: type,
    *,
    prefix: str = "",
    names: Iterable[str] | None = None,
    types: dict[str, Callable[[str], Any] | None] | None = None,
    defaults: dict[str, Any] | None = None,
) -> None:
    """One flag per field of `cls` (those named in `names`, in that order; default: every field with a flag).

    `types` maps a field to the function that parses its flag's text, where the annotation does not say
    (None: the text as given, for the command to parse, e.g. a comma-separated list); `defaults` gives a flag another default than its field, e.g. None where the
    command decides the value from other flags.
    """
    types, defaults = types or {}, defaults or {}
    for f in _flag_fields(cls, names):
        meta = f.metadata
        if "help" not in meta:
            raise TypeError(f"{cls.__name__}.{f.name}: no help text (metadata={{'help': ...}})")
        kwargs: dict[str, Any] = {"help": meta["help"].replace("{default}", str(field_default(f)))}
        if meta.get("action") == "append":
            kwargs.update(action="append", default=[])
        else:
            kwargs["default"] = defaults.get(f.name, field_default(f))
            kind = types[f.name] if f.name in types else _type(f)
            if kind is not None:
                kwargs["type"] = kind
        for key in ("choices", "metavar"):
            if key in meta:
                kwargs[key] = meta[key]
        if kwargs["default"] not in (None, []):
            kwargs["help"] += " (default: %(default)s)"
        parser.add_argument(_flag(f, prefix), **kwargs)


def dataclass_values(
    cls: type, args: argparse.Namespace, *, prefix: str = "", names: Iterable[str] | None = None
) -> dict[str, Any]:
    """The values of the flags `add_dataclass_arguments` added, by field name; a flag left at None is left out,
    so the field keeps its own default."""
    out = {}
    for f in _flag_fields(cls, names):
        value = getattr(args, _dest(f, prefix), None)
        if value is not None:
            out[f.name] = value
    return out
