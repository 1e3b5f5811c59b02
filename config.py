"""Command-line flags from dataclass fields: one config object per program, validated once.

Every field declared with :func:`flag` becomes ``--field-name`` with its default and help text
in ``--help``; ranges are checked before any work starts and a bad value is a one-line error.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from typing import Any, TypeVar

T = TypeVar("T")


def flag(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[Any] | None = None,
) -> Any:
    """A dataclass field that is also a command-line flag; ``low``/``high`` are inclusive."""
    meta = {"help": help, "low": low, "high": high, "choices": choices}
    return dataclasses.field(default=default, metadata=meta)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the whole usage block
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_TYPES = {"int": int, "float": float, "str": str, "bool": _bool}


def _base_type(f: dataclasses.Field) -> str:
    """``int``, ``float``, ``str`` or ``bool`` from a field's annotation (``int | None`` -> int)."""
    name = f.type if isinstance(f.type, str) else f.type.__name__
    return name.replace("| None", "").replace("None |", "").strip()


def _describe(f: dataclasses.Field) -> str:
    meta = f.metadata
    text = meta["help"]
    if meta["low"] is not None and meta["high"] is not None:
        text += f" [{meta['low']}..{meta['high']}]"
    elif meta["low"] is not None:
        text += f" [>= {meta['low']}]"
    return text + " (default: %(default)s)"


def build_parser(cls: type, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    parser = _Parser(
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        name = "--" + f.name.replace("_", "-")
        kind = _TYPES[_base_type(f)]
        if kind is _bool:
            parser.add_argument(name, type=_bool, default=f.default, metavar="{true,false}", help=_describe(f))
        else:
            parser.add_argument(
                name, type=kind, default=f.default, choices=f.metadata["choices"], help=_describe(f)
            )
    return parser


def check_ranges(cfg: Any) -> None:
    """Raise ValueError naming the first field outside its declared range."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        low, high = f.metadata.get("low"), f.metadata.get("high")
        if value is None:
            continue
        flag_name = "--" + f.name.replace("_", "-")
        if low is not None and value < low:
            raise ValueError(f"{flag_name} must be >= {low}, got {value}")
        if high is not None and value > high:
            raise ValueError(f"{flag_name} must be <= {high}, got {value}")


def parse(
    cls: type[T], argv: Sequence[str] | None, description: str, epilog: str | None = None
) -> T:
    """Parse ``argv`` into ``cls``; exit 2 with a one-line message on any bad value.

    ``cls`` may define ``validate(self)`` raising ValueError for checks across fields.
    """
    parser = build_parser(cls, description, epilog)
    args = parser.parse_args(argv)
    cfg = cls(**{k: v for k, v in vars(args).items()})
    try:
        check_ranges(cfg)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return cfg
