"""--init-weights: launch.py and train.py start from a keras-rl policy.h5, one that keras-rl's own
dqn_atari.py agent saved (tests/stock_kerasrl.py --save), in both networks; a file of another
network or game is a one-line error before Ray or training starts, and nothing is written."""

from __future__ import annotations

import kerasrl_compat  # noqa: F401  (Keras 2 before TensorFlow loads)

# isort: split
import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from procs import STOCK_KERASRL
from test_classic import ROOT, ok, one_line_error, run

from core.network import build_q_network
from core.policy_file import save_policy
from distributed.checkpoint import load_checkpoint

SMALL = ["--num-actors", "1", "--envs-per-actor", "2", "--replay-capacity", "1000", "--eval-every", "0"]


def h5_arrays(path: Path) -> list[np.ndarray]:
    """Every weight array of a Keras 2 weights file, in layer order (the order load_weights uses)."""
    with h5py.File(path, "r") as f:
        out = []
        for layer in f.attrs["layer_names"]:
            group = f[layer.decode() if isinstance(layer, bytes) else layer]
            for name in group.attrs.get("weight_names", []):
                out.append(group[name.decode() if isinstance(name, bytes) else name][()])
        return out


@pytest.fixture(scope="module")
def stock_file(tmp_path_factory) -> Path:
    """What a keras-rl user gets from dqn_atari.py --mode train (shortened): DQNAgent.save_weights."""
    work = tmp_path_factory.mktemp("stock")
    path = work / "dqn_BreakoutDeterministic-v4_weights.h5"  # .h5: tf_keras writes HDF5 only for that name
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "PYTHONPATH")}
    proc = subprocess.run([sys.executable, str(STOCK_KERASRL), "--save", str(path), "--train-steps", "100",
                           "--seed", "7"], cwd=work, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "STOCK_SAVED" in proc.stdout, proc.stderr[-3000:]
    return path


@pytest.fixture(scope="module")
def other_files(tmp_path_factory) -> dict[str, Path]:
    work = tmp_path_factory.mktemp("other")
    return {"pong": save_policy(build_q_network(6), work / "pong.h5"),
            "dueling": save_policy(build_q_network(4, dueling=True), work / "dueling.h5")}


def test_launch_starts_both_networks_from_a_stock_kerasrl_file(ray_session, stock_file, tmp_path):
    import launch

    run_dir = tmp_path / "run"
    # learning starts only at the end: no update changes the networks, so they are the file's
    argv = [*SMALL, "--total-env-steps", "600", "--learning-starts", "600", "--init-weights", str(stock_file),
            "--run-dir", str(run_dir)]
    assert launch.main(argv) == 0
    stock = h5_arrays(stock_file)
    learner, driver = load_checkpoint(run_dir)
    assert learner["steps"] == 0 and driver["env_steps"] == 600
    for name, arrays in (("policy.h5", h5_arrays(run_dir / "policy.h5")), ("online", learner["online"]),
                         ("target", learner["target"])):
        assert len(arrays) == len(stock) == 10, name
        assert all(np.array_equal(a, b) for a, b in zip(arrays, stock, strict=True)), name
    assert json.loads((run_dir / "config.json").read_text())["init_weights"] == str(stock_file)


def test_a_restarted_learner_starts_again_from_the_file_with_versions_past_every_one_seen(ray_session, stock_file):
    """A learner SIGKILLed before the run's first checkpoint: Ray restarts it with the same
    arguments, so it starts again from --init-weights (not from scratch), and the driver's
    versions_from puts its weights versions past every one handed out before."""
    import signal
    import time

    from config import Config
    from distributed import topology

    ray = ray_session
    stock = h5_arrays(stock_file)
    learner = topology.learner_actor(Config(batch_size=16), 4, None, 1, stock)
    try:
        pid, instance = ray.get(learner.__ray_call__.remote(lambda lrn: (os.getpid(), lrn.instance)))
        ray.get(learner.versions_from.remote(9))
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 120
        while True:
            try:
                now = ray.get(learner.__ray_call__.remote(lambda lrn: lrn.instance))
                if now != instance:
                    break
            except (ray.exceptions.ActorUnavailableError, ray.exceptions.RayActorError):
                pass
            assert time.monotonic() < deadline, "the learner did not come back"
            time.sleep(0.2)
        version, weights = ray.get(learner.get_weights.remote())
        assert version == 0, "a restarted learner starts afresh: the driver moves its versions on"
        assert all(np.array_equal(a, b) for a, b in zip(weights, stock, strict=True))
        ray.get(learner.versions_from.remote(10))
        ray.get(learner.versions_from.remote(4))  # a lower one never takes the versions back
        assert ray.get(learner.get_weights.remote())[0] == 10
    finally:
        ray.kill(learner)


def launch_error(tmp_path: Path, name: str, *args: str) -> str:
    """launch.py ARGS in a fresh process: a one-line error, no run directory and no Ray started."""
    env_dir = tmp_path / f"ray-{name}"
    os.environ["RAY_TMPDIR"], saved = str(env_dir), os.environ.get("RAY_TMPDIR")
    try:
        proc = run(tmp_path, name, [ROOT / "launch.py", *SMALL, "--learning-starts", "500", "--run-dir",
                                    tmp_path / f"run-{name}", *args])
    finally:
        os.environ.pop("RAY_TMPDIR") if saved is None else os.environ.update(RAY_TMPDIR=saved)
    line = one_line_error(proc, "launch.py", only_line=False)  # TensorFlow may have logged
    assert not (tmp_path / f"run-{name}").exists() and not env_dir.exists(), "Ray started or a run began"
    assert proc.stdout == ""
    return line


def test_launch_refuses_other_networks_before_ray(other_files, tmp_path):
    line = launch_error(tmp_path, "pong", "--init-weights", str(other_files["pong"]))
    assert "different network" in line and "6 actions" in line and "4 actions" in line
    line = launch_error(tmp_path, "dueling", "--init-weights", str(other_files["dueling"]))
    assert "different network" in line and line.endswith("give --dueling true")
    assert "does not exist" in launch_error(tmp_path, "missing", "--init-weights", str(tmp_path / "none.h5"))
    old = tmp_path / "old-run"
    old.mkdir()
    (old / "config.json").write_text(json.dumps({"num_actors": 1, "replay_capacity": 1000, "learning_starts": 50}))
    proc = run(tmp_path, "resume", [ROOT / "launch.py", "--resume", old, "--init-weights", other_files["pong"]])
    assert "--init-weights is for new runs" in one_line_error(proc, "launch.py")


def test_a_tensorflow_checkpoint_is_named_as_such(tmp_path):
    from core.policy_file import PolicyFileError, read_weight_shapes

    (tmp_path / "dqn_weights.h5f.index").write_bytes(b"")  # what tf_keras saves for dqn_atari.py's *.h5f name
    with pytest.raises(PolicyFileError, match="is a TensorFlow checkpoint .* name ending in .h5"):
        read_weight_shapes(tmp_path / "dqn_weights.h5f")


def test_train_starts_from_a_stock_kerasrl_file(stock_file, tmp_path):
    out = tmp_path / "policy.h5"
    ok(run(tmp_path, "train", [ROOT / "train.py", "--steps", "160", "--warmup", "150", "--memory-limit", "1000",
                               "--init-weights", stock_file, "--output", out, "--run-dir", tmp_path / "run"]))
    # two or three Adam steps of 2.5e-4 from the file's values: each moves a weight with a gradient
    # by about the learning rate, so every layer moved by at least one step (trained) and no weight
    # by more than a few (loaded: a fresh initialisation is 1e-2 to 1e-1 away from the file)
    moved = [np.abs(got - start).max() for got, start in zip(h5_arrays(out), h5_arrays(stock_file), strict=True)]
    assert len(moved) == 10
    assert all(1e-4 < m < 2e-3 for m in moved), moved


def test_train_refuses_another_network_and_writes_nothing(other_files, tmp_path):
    proc = run(tmp_path, "pong", [ROOT / "train.py", "--steps", "160", "--warmup", "150", "--init-weights",
                                  other_files["pong"], "--output", tmp_path / "p.h5", "--run-dir", tmp_path / "run"])
    line = one_line_error(proc, "train.py", only_line=False)
    assert "--init-weights" in line and "6 actions" in line and "4 actions" in line
    assert not (tmp_path / "run").exists() and not (tmp_path / "p.h5").exists()
    proc = run(tmp_path, "missing", [ROOT / "train.py", "--init-weights", tmp_path / "none.h5"])
    assert "does not exist" in one_line_error(proc, "train.py")
