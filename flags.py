"""Command-line flags from dataclass fields: one config object per program, validated once.

Every field declared with :func:`flag` becomes ``--field-name`` with its default and help text
in ``--help``; ranges are checked before any work starts and a bad value is a one-line error.
Shared by launch.py's :class:`config.Config`, train.py and play.py.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def flag(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[Any] | None = None,
    positional: bool = False,
) -> Any:
    """A dataclass field that is also a command-line flag; ``low``/``high`` are inclusive.
    ``positional``: an optional argument without a flag name (``play.py RUN_DIR``)."""
    meta = {"help": help, "low": low, "high": high, "choices": choices, "positional": positional}
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
    return text if "(default" in meta["help"] else text + " (default: %(default)s)"


def build_parser(
    cls: type, description: str, epilog: str | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        allow_abbrev=False,  # a typo like --num-actor must not silently mean --num-actors
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = {title: parser.add_argument_group(title) for title in getattr(cls, "GROUPS", {})}
    group_of = {name: groups[title] for title, names in getattr(cls, "GROUPS", {}).items() for name in names}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        where = group_of.get(f.name, parser)
        name = "--" + f.name.replace("_", "-")
        kind = _TYPES[_base_type(f)]
        if f.metadata.get("positional"):
            parser.add_argument(f.name, type=kind, nargs="?", default=f.default, metavar=f.name.upper(),
                                help=f.metadata["help"])
        elif kind is _bool:
            # a bare --flag means true, as users expect of a switch; --flag false still works
            where.add_argument(name, type=_bool, nargs="?", const=True, default=f.default, metavar="{true,false}",
                               help=_describe(f))
        else:
            where.add_argument(
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
        if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison
            raise ValueError(f"{flag_name} must be a finite number, got {value}")
        if low is not None and value < low:
            raise ValueError(f"{flag_name} must be >= {low}, got {value}")
        if high is not None and value > high:
            raise ValueError(f"{flag_name} must be <= {high}, got {value}")


def check_writable_folder(folder: Path, what: str) -> None:
    """Raise ValueError unless ``folder`` exists or can be made, and takes a file. Leaves no
    trace: folders it made for the probe are removed (the run makes them for real later)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} is a file; give a folder")
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write to {what} {folder} ({exc.strerror}); choose a writable folder") from None
    finally:
        for made in missing:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()


def check_run_dir(run_dir: Path, holds: Sequence[str], hint: str) -> None:
    """A run directory must take files and must not hold another run's ``holds`` (nothing is overwritten)."""
    if run_dir.is_dir() and any((run_dir / name).exists() for name in holds):
        raise ValueError(f"{run_dir} already holds a run; {hint}")
    check_writable_folder(run_dir, "--run-dir")


def parse(
    cls: type[T], argv: Sequence[str] | None, description: str, epilog: str | None = None, prog: str | None = None
) -> T:
    """Parse ``argv`` into ``cls``; exit 2 with a one-line message on any bad value.

    ``cls`` may define ``validate(self)`` raising ValueError for checks across fields.
    """
    parser = build_parser(cls, description, epilog, prog)
    args = parser.parse_args(argv)
    cfg = cls(**{k: v for k, v in vars(args).items()})
    try:
        check_ranges(cfg)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return cfg


def parse_minutes(text: str | None, name: str) -> tuple[float, ...]:
    """``"5,10,20"`` -> (5.0, 10.0, 20.0): points in minutes, each > 0, strictly increasing (``None``
    or ``""``: none). Raises ValueError with a one-line message naming ``name``."""
    if not text or not text.strip():
        return ()
    try:
        points = tuple(float(p) for p in text.split(","))
    except ValueError:
        points = ()
    if (not points or not all(math.isfinite(p) and p > 0 for p in points)
            or any(b <= a for a, b in zip(points, points[1:], strict=False))):
        raise ValueError(f"{name} takes minutes > 0 in increasing order, comma-separated (e.g. 5,10,20), "
                         f"not {text!r}")
    return points


def hms(seconds: float) -> str:
    """``H:MM:SS`` for the progress lines of train.py and launch.py (``--:--:--`` when unknown)."""
    if not math.isfinite(seconds):
        return "--:--:--"
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


def given_flags(cls: type, argv: Sequence[str] | None) -> set[str]:
    """Names of the fields whose flags appear in ``argv`` (to let them override a saved config)."""
    parser = build_parser(cls, "")
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))
