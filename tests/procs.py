"""Helpers for tests that run processes: this session's own Ray workers (to kill them in failure
tests) and keras-rl as its users run it (``tests/stock_kerasrl.py``)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import pytest

STOCK_KERASRL = Path(__file__).resolve().parent / "stock_kerasrl.py"


def session_actor_pids(title: str) -> list[int]:
    """PIDs of this test session's Ray workers whose process title starts with ``title``
    (e.g. ``ray::Explorer``): children of our own raylet only, never another session's."""
    import ray

    raylets = {p.process.pid for p in ray._private.worker._global_node.all_processes["raylet"]}
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, ppid, args = line.split(None, 2)
        if int(ppid) in raylets and args.startswith(title):
            pids.append(int(pid))
    return pids


def run_and_kill(run_dir: Path, argv: list[str], title: str, ready: Callable[[dict], bool]) -> list[int]:
    """Run ``launch.main`` in this thread; from another, SIGKILL the first of this session's ``title``
    processes once a record of RUN_DIR/metrics.jsonl satisfies ``ready``. Returns the PIDs killed;
    nothing is killed after the run ends (a later test's actors are not ours to kill)."""
    import json
    import signal
    import threading

    import launch

    killed: list[int] = []
    done = threading.Event()

    def killer() -> None:
        metrics = run_dir / "metrics.jsonl"
        while not done.is_set() and not killed:
            if metrics.exists() and any(ready(json.loads(x)) for x in metrics.read_text().splitlines()):
                for pid in session_actor_pids(title)[:1]:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
            done.wait(0.1)

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    try:
        assert launch.main([*argv, "--run-dir", str(run_dir)]) == 0
    finally:
        done.set()
        thread.join()
    return killed


def h5_abs_sum(path: Path) -> float:
    """Sum of |value| over every dataset of an HDF5 file: what a model that loaded it must hold."""
    import h5py
    import numpy as np

    sums: list[float] = []
    with h5py.File(path, "r") as f:
        f.visititems(lambda _, obj: sums.append(float(np.abs(obj[()]).astype(np.float64).sum()))
                     if isinstance(obj, h5py.Dataset) else None)
    return sum(sums)


def stock_kerasrl(paths: list[Path], cwd: Path, *args: str) -> dict[str, dict[str, float]]:
    """Run keras-rl's dqn_atari.py agent (``stock_kerasrl.py``) on ``paths`` as a user would: a fresh
    process outside the repository, with neither PYTHONPATH nor TF_USE_LEGACY_KERAS set, so nothing of
    ours can be imported; ``args`` go to the script (``--dueling``). Asserts every file loaded and
    played; returns each file's STOCK_OK fields."""
    source = STOCK_KERASRL.read_text()
    assert not re.search(r"^\s*(from|import) (kerasrl_compat|actors|learner|replay|config|train|play|launch)\b",
                         source, re.M), "the stock check must import nothing of ours"
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "PYTHONPATH")}
    proc = subprocess.run([sys.executable, str(STOCK_KERASRL), *map(str, paths), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    found = {}
    for match in re.finditer(r"^STOCK_OK file=(\S+) (.*)$", proc.stdout, re.M):
        found[match[1]] = {k: float(v) for k, v in (kv.split("=") for kv in match[2].split())}
    assert sorted(found) == sorted(map(str, paths)), proc.stdout
    for path in paths:  # the file's values are what the agent holds: it really loaded them
        assert found[str(path)]["weight_abs_sum"] == pytest.approx(h5_abs_sum(path), rel=1e-6)
        assert 0 < found[str(path)]["steps"] <= 300
    return found


def kill_processes_under(path: str) -> None:
    """Kill what is left of a test's own Ray: only processes naming our own temp folder."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    for line in out.splitlines():
        pid, _, args = line.strip().partition(" ")
        if path in args and int(pid) != os.getpid():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass


def run_with_private_ray(argv: list[str], env: dict[str, str], cwd: Path, timeout: float,
                         prefix: str) -> subprocess.CompletedProcess:
    """Run ``argv`` with a Ray temp folder of its own (RAY_TMPDIR; short: Ray's socket paths must stay
    under 108 bytes), then kill every process still naming that folder and remove it."""
    ray_tmp = tempfile.mkdtemp(prefix=prefix)
    try:
        return subprocess.run(argv, cwd=cwd, env=dict(env, RAY_TMPDIR=ray_tmp), capture_output=True, text=True,
                              timeout=timeout)
    finally:
        kill_processes_under(ray_tmp)
        shutil.rmtree(ray_tmp, ignore_errors=True)
