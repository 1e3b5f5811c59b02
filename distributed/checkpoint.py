"""Run checkpoints: one ``checkpoint.npz`` per run directory, replaced atomically.

It holds what ``launch.py --resume`` needs to continue with every counter intact: the online
and target networks, Adam's state, the learner's counters and the driver's (env steps,
learner steps, explorer restarts, games, the seed generation, the replay ratio's baseline). A
crash mid-write leaves the previous checkpoint whole.

With --save-replay the replay is saved first, to ``replay-pending.npz``, tagged with the
checkpoint it belongs to; the checkpoint is written; then the save is renamed to ``replay.npz``.
A crash anywhere in between leaves a pair a resume can tell apart (:func:`saved_replay`): it
never loads a replay newer or older than the checkpoint.
"""

from __future__ import annotations

import json
import os
import uuid
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from core.atomic import write_atomically
from replay.npz_io import read_tag

CHECKPOINT = "checkpoint.npz"
REPLAY_FILE = "replay.npz"  # the replay memory beside it, with --save-replay (written by the replay actor)
REPLAY_PENDING = "replay-pending.npz"  # the replay saved for a checkpoint not yet (or just) written
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


def replay_tag(learner_steps: int, env_steps: int) -> dict:
    """What ties a saved replay to one checkpoint: a new id per checkpoint, and its steps (for the message)."""
    return {"id": uuid.uuid4().hex, "learner_step": int(learner_steps), "env_steps": int(env_steps)}


def commit_replay(run_dir: str | os.PathLike) -> Path:
    """After the checkpoint is written: its replay becomes RUN_DIR/replay.npz (a rename, made durable)."""
    path = Path(run_dir) / REPLAY_FILE
    os.replace(Path(run_dir) / REPLAY_PENDING, path)
    dir_fd = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return path


def saved_replay(run_dir: str | os.PathLike, tag: dict | None) -> tuple[Path | None, str]:
    """The saved replay that belongs to the checkpoint tagged ``tag`` (the checkpoint's
    ``replay_tag``), or None and one line saying why there is none (the replay then refills).

    A crash after the checkpoint but before the rename left the right save under its pending
    name: the rename is finished here."""
    run_dir = Path(run_dir)
    path, pending = run_dir / REPLAY_FILE, run_dir / REPLAY_PENDING
    if tag is None:
        return None, f"{CHECKPOINT} names no saved replay (written without --save-replay, or by an older version)"
    if pending.exists() and _tag_of(pending) == tag:
        return commit_replay(run_dir), ""
    if not path.exists():
        return None, f"there is no {REPLAY_FILE} beside {CHECKPOINT}"
    try:
        found = read_tag(str(path))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        return None, f"{REPLAY_FILE} is unreadable ({type(exc).__name__}: {exc})"
    if found != tag:
        theirs = (f"the checkpoint of learner step {found['learner_step']:,}, agent step {found['env_steps']:,}"
                  if found else "no checkpoint (it carries no tag)")
        return None, (f"{REPLAY_FILE} belongs to {theirs}, not to {CHECKPOINT} (learner step {tag['learner_step']:,}, "
                      f"agent step {tag['env_steps']:,})")
    return path, ""


def _tag_of(path: Path) -> dict | None:
    try:
        return read_tag(str(path))
    except (OSError, ValueError, KeyError, zipfile.BadZipFile):
        return None
