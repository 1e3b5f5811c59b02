"""``policy.h5``: the file every trainer writes and keras-rl's ``DQNAgent`` reads.

It is a Keras 2 HDF5 weights file (``model.save_weights``). Writes are atomic (``core.atomic``): a
reader, or a crash mid-write, sees the old complete file or the new complete file, never a partial one.
"""

from __future__ import annotations

import csv
import os
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from core.atomic import write_atomically


class PolicyFileError(ValueError):
    """A weights file that is missing, unreadable or made for another network."""


def save_policy(model: Any, path: str | os.PathLike) -> Path:
    """Write ``model``'s weights as a keras-rl ``policy.h5``, atomically."""
    return write_atomically(path, lambda tmp: model.save_weights(tmp, overwrite=True))


def read_weight_shapes(path: str | os.PathLike) -> list[tuple[int, ...]]:
    """Shapes of the weight arrays in a Keras 2 HDF5 weights file, in layer order.

    Raises :class:`PolicyFileError` with a one-line reason when the file is missing,
    truncated, not HDF5 or not a Keras weights file.
    """
    path = Path(path)
    if path.is_dir():
        raise PolicyFileError(f"{path} is a folder; give the weights file in it (e.g. {path / 'policy.h5'})")
    if not path.is_file():
        if path.with_name(path.name + ".index").is_file():  # e.g. keras-rl's dqn_atari.py name, *.h5f
            raise PolicyFileError(f"{path} is a TensorFlow checkpoint (tf_keras writes one when the name does not end "
                                  f"in .h5), not a Keras HDF5 weights file; save it with a name ending in .h5")
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


def is_dueling_shapes(shapes: list[tuple[int, ...]]) -> bool:
    """Whether weight shapes are keras-rl's dueling Atari network rather than the plain one.

    Plain: 10 arrays ending in Dense (512, n), (n,). Dueling: 12 arrays, the plain ones plus
    Dense (n, n + 1), (n + 1,) on top (see ``core.network.build_q_network``).
    """
    if len(shapes) != 12:
        return False
    hidden_kernel, hidden_bias, kernel, bias = shapes[-4:]
    n = hidden_bias[0] if len(hidden_bias) == 1 else -1
    return len(hidden_kernel) == 2 and hidden_kernel[1] == n and kernel == (n, n + 1) and bias == (n + 1,)


def is_dueling_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a dueling network (see :func:`is_dueling_shapes`); raises
    :class:`PolicyFileError` like :func:`read_weight_shapes`."""
    return is_dueling_shapes(read_weight_shapes(path))


def describe_shapes(shapes: list[tuple[int, ...]]) -> str:
    """``"plain, 10 weight arrays, 4 actions"``: what a weights file holds, for error messages."""
    dueling = is_dueling_shapes(shapes)
    last_bias = shapes[-1] if shapes else ()
    if len(last_bias) == 1:
        n_actions = last_bias[0] - 1 if dueling else last_bias[0]
    else:
        n_actions = "?"
    return f"{'dueling' if dueling else 'plain'}, {len(shapes)} weight arrays, {n_actions} actions"


def check_policy_file(path: str | os.PathLike, model: Any) -> None:
    """Raise :class:`PolicyFileError` unless ``path`` holds weights shaped for ``model``."""
    shapes = read_weight_shapes(path)
    expected = [tuple(np.shape(w)) for w in model.get_weights()]
    if shapes != expected:
        raise PolicyFileError(
            f"{path} was written for a different network ({describe_shapes(shapes)}; "
            f"this game's network: {describe_shapes(expected)})"
        )


class SnapshotWriter:
    """Numbered copies of the network for learning curves, shared by train.py and launch.py.

    Each :meth:`write` saves ``RUN_DIR/snapshots/policy-<env steps, 9 digits>.h5`` (a copy taken at
    a wall-clock point: ``policy-<env steps>-at-<minutes>min.h5``) atomically and then appends a
    row to ``RUN_DIR/snapshots.csv`` (``file`` relative to RUN_DIR; ``point_minutes`` is the point
    for a timed copy, empty otherwise), so a row never names a file that is not complete. An
    existing CSV is appended to (resumed runs), in the columns its header has.
    """

    HEADER = ("file", "env_steps", "learner_steps", "wall_seconds", "point_minutes")

    def __init__(self, run_dir: str | os.PathLike, start: float | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.csv_path = self.run_dir / "snapshots.csv"
        self.start = time.monotonic() if start is None else start

    def write(self, model: Any, env_steps: int, learner_steps: int, wall_seconds: float | None = None,
              point_minutes: float | None = None) -> Path:
        """Save ``model`` and record it; ``wall_seconds`` defaults to the time since ``start``;
        ``point_minutes``: the wall-clock point this copy was taken for (None: a step snapshot)."""
        if wall_seconds is None:
            wall_seconds = time.monotonic() - self.start
        at = "" if point_minutes is None else f"-at-{point_minutes:g}min"
        relative = Path("snapshots") / f"policy-{int(env_steps):09d}{at}.h5"
        path = save_policy(model, self.run_dir / relative)
        header = self._header()
        row = {"file": relative.as_posix(), "env_steps": int(env_steps), "learner_steps": int(learner_steps),
               "wall_seconds": round(wall_seconds, 1), "point_minutes": "" if point_minutes is None else point_minutes}
        with open(self.csv_path, "a", newline="") as f:
            writer = csv.writer(f)
            if header is None:
                writer.writerow(self.HEADER)
            writer.writerow([row.get(name, "") for name in header or self.HEADER])
            f.flush()
            os.fsync(f.fileno())
        return path

    def _header(self) -> list[str] | None:
        """The existing CSV's columns (a run from before point_minutes has four), None for a new one."""
        if not self.csv_path.exists() or self.csv_path.stat().st_size == 0:
            return None
        with open(self.csv_path, newline="") as f:
            return next(csv.reader(f), None) or list(self.HEADER)
