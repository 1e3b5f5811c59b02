"""Atomic file writes: a reader, or a crash mid-write, sees the old complete file or the new one.

Every result file of a run (policy.h5, checkpoint.npz, replay.npz, config.json) is written
through :func:`write_atomically`, whichever role writes it.
"""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def write_atomically(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    The temporary name keeps ``path``'s suffix because Keras picks the file format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_temp_suffix(path.name), dir=path.parent)
    os.close(fd)
    try:
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; others may read results, as with open()
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


# mkstemp's name: the prefix, 8 characters from its alphabet, the suffix
_TEMP_NAME = re.compile(r"\.(?P<name>.+)\.[a-z0-9_]{8}(?P<suffix>\.[^.]+)")


def _temp_suffix(name: str) -> str:
    return Path(name).suffix or ".tmp"


def drop_unfinished_writes(folder: str | os.PathLike) -> list[Path]:
    """Delete the temporary files that writes cut by a crash (SIGKILL, power loss) left in ``folder``;
    return them. Only names :func:`write_atomically` makes match, and no write there may be under way."""
    folder = Path(folder)
    dropped = []
    for path in sorted(folder.glob(".*")) if folder.is_dir() else ():
        found = _TEMP_NAME.fullmatch(path.name)
        if found and path.is_file() and found["suffix"] == _temp_suffix(found["name"]):
            path.unlink(missing_ok=True)
            dropped.append(path)
    return dropped


def _umask() -> int:
    """The process umask, read without changing it where Linux shows it (no race with other threads)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask
