"""Run checkpoints: one ``checkpoint.npz`` per run directory, replaced atomically.

It holds what ``launch.py --resume`` needs to continue with every counter intact: the online
and target networks, Adam's state, the learner's counters and the driver's (env steps,
learner steps, explorer restarts, games, the seed generation). A crash mid-write leaves the
previous checkpoint whole.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_atomically

CHECKPOINT = "checkpoint.npz"
REPLAY_FILE = "replay.npz"  # the replay memory beside it, with --save-replay (written by the replay actor)
FORMAT = "distributed-dqn-checkpoint/1"


class CheckpointError(ValueError):
    """A run directory without a usable checkpoint."""


def save_checkpoint(run_dir: str | os.PathLike, learner_state: dict, driver_state: dict) -> Path:
    """Write ``run_dir/checkpoint.npz`` atomically; return its path."""
    arrays: dict[str, np.ndarray] = {}
    for part in ("online", "target", "optimizer"):
        for i, value in enumerate(learner_state[part]):
            arrays[f"{part}/{i:03d}"] = np.asarray(value)
    meta = {
        "format": FORMAT,
        "learner": {k: v for k, v in learner_state.items() if k not in ("online", "target", "optimizer")},
        "driver": driver_state,
    }
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), np.uint8)

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    return write_atomically(Path(run_dir) / CHECKPOINT, write)


def load_checkpoint(run_dir: str | os.PathLike) -> tuple[dict, dict]:
    """``(learner_state, driver_state)`` from ``run_dir/checkpoint.npz``, or CheckpointError."""
    path = Path(run_dir) / CHECKPOINT
    if not path.is_file():
        raise CheckpointError(f"{path} does not exist: resume needs a run directory that launch.py checkpointed")
    try:
        with np.load(path) as data:
            meta = json.loads(bytes(data["meta"]).decode())
            if meta.get("format") != FORMAT:
                raise CheckpointError(f"{path} is not a checkpoint of this program (format {meta.get('format')!r})")
            state: dict[str, Any] = dict(meta["learner"])
            for part in ("online", "target", "optimizer"):
                keys = sorted(k for k in data.files if k.startswith(part + "/"))
                state[part] = [data[k] for k in keys]
    except CheckpointError:
        raise
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as exc:
        raise CheckpointError(f"{path} is unreadable ({type(exc).__name__}: {exc}); it may be truncated") from None
    return state, meta["driver"]
