"""Command-line options generated from a config dataclass.

A field declared with :func:`option` becomes ``--field-name`` (or a positional argument); its
type gives the parsing: ``bool`` a switch, a ``Literal`` its choices, ``tuple[int, ...]``
"1,16,64", ``int`` / ``float`` / ``str`` / ``Path`` that type; ``X | None`` parses as ``X``.

Example:
    >>> add_options(parser, EvalConfig)  # doctest: +SKIP
    >>> cfg = from_options(EvalConfig, parser.parse_args())  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, Literal, TypeVar

C = TypeVar("C")
MISSING: Any = dataclasses.MISSING


def option(help: str, default: Any = MISSING, *, positional: bool = False, cli_default: Any = MISSING,
           from_cli: Callable[[Any], Any] | None = None) -> Any:
    """A dataclass field that is also a command-line option.

    Args:
        help: the option's help text.
        default: the field's default; none makes the option required.
        positional: a positional argument instead of ``--name``.
        cli_default: the command line's default when it differs from the field's.
        from_cli: maps the parsed value to the field's value (e.g. ``0`` -> ``None``).
    """
    metadata = {"help": help, "positional": positional, "cli_default": cli_default, "from_cli": from_cli}
    return dataclasses.field(default=default, metadata=metadata)


def int_list(text: str) -> tuple[int, ...]:
    """'1,16,64' -> (1, 16, 64)."""
    try:
        return tuple(int(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, e.g. 1,16,64; got {text!r}") from None


def _options(cls: type) -> list[dataclasses.Field[Any]]:
    return [f for f in dataclasses.fields(cls) if "help" in f.metadata]


def _parsing(kind: Any) -> dict[str, Any]:
    """argparse keywords for a field type."""
    if isinstance(kind, types.UnionType) or typing.get_origin(kind) is typing.Union:
        kind = next(a for a in typing.get_args(kind) if a is not type(None))
    if typing.get_origin(kind) is Literal:
        return {"choices": list(typing.get_args(kind))}
    if kind is bool:
        return {"action": "store_true"}
    if typing.get_origin(kind) is tuple:
        return {"type": int_list}
    return {"type": kind}


def add_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """Add one argument per :func:`option` field of dataclass ``cls``."""
    hints = typing.get_type_hints(cls)
    for f in _options(cls):
        kwargs = {"help": f.metadata["help"], **_parsing(hints[f.name])}
        if f.metadata["positional"]:
            parser.add_argument(f.name, **kwargs)
            continue
        default = f.default if f.metadata["cli_default"] is MISSING else f.metadata["cli_default"]
        if default is MISSING:
            kwargs["required"] = True
        else:
            kwargs["default"] = default
        parser.add_argument("--" + f.name.replace("_", "-"), **kwargs)


def from_options(cls: type[C], args: argparse.Namespace) -> C:
    """An instance of dataclass ``cls`` from arguments parsed with :func:`add_options`."""
    values = {}
    for f in _options(cls):
        value = getattr(args, f.name)
        values[f.name] = f.metadata["from_cli"](value) if f.metadata["from_cli"] else value
    return cls(**values)
