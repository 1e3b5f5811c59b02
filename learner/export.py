"""``policy.h5``: the file every trainer writes and keras-rl's ``DQNAgent`` reads.

It is a Keras 2 HDF5 weights file (``model.save_weights``). Writes are atomic: a reader, or a
crash mid-write, sees the old complete file or the new complete file, never a partial one.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np


class PolicyFileError(ValueError):
    """A weights file that is missing, unreadable or made for another network."""


def write_atomically(path: str | os.PathLike, write: Callable[[str], Any]) -> Path:
    """Call ``write(tmp)`` on a temporary file beside ``path``, fsync it, rename it over ``path``.

    The temporary name keeps ``path``'s suffix because Keras picks the file format by it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix or ".tmp", dir=path.parent)
    os.close(fd)
    try:
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


def save_policy(model: Any, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights as a keras-rl ``policy.h5``, atomically."""
    return write_atomically(path, lambda tmp: model.save_weights(tmp, overwrite=True))


def read_weight_shapes(path: str | os.PathLike) -> list[tuple[int, ...]]:
    """Shapes of the weight arrays in a Keras 2 HDF5 weights file, in layer order.

    Raises :class:`PolicyFileError` with a one-line reason when the file is missing,
    truncated, not HDF5 or not a Keras weights file.
    """
    path = Path(path)
    if not path.is_file():
        raise PolicyFileError(f"weights file {path} does not exist")
    try:
        with h5py.File(path, "r") as f:
            if "layer_names" not in f.attrs:
                raise PolicyFileError(f"{path} is HDF5 but not a Keras weights file (no layer_names)")
            shapes = []
            for layer in f.attrs["layer_names"]:
                group = f[layer.decode() if isinstance(layer, bytes) else layer]
                for name in group.attrs.get("weight_names", []):
                    name = name.decode() if isinstance(name, bytes) else name
                    shapes.append(tuple(group[name].shape))
            return shapes
    except PolicyFileError:
        raise
    except (OSError, KeyError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise PolicyFileError(f"{path} is not a readable weights file ({first})") from None


def check_policy_file(path: str | os.PathLike, model: Any) -> None:
    """Raise :class:`PolicyFileError` unless ``path`` holds weights shaped for ``model``."""
    shapes = read_weight_shapes(path)
    expected = [tuple(np.shape(w)) for w in model.get_weights()]
    if shapes != expected:
        n_file = shapes[-1][0] if shapes and len(shapes[-1]) == 1 else "?"
        n_model = expected[-1][0] if expected else "?"
        raise PolicyFileError(
            f"{path} was written for a different network ({len(shapes)} weight arrays, "
            f"{n_file} actions; this game's network has {len(expected)} arrays, {n_model} actions)"
        )
