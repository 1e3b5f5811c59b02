"""The dueling network against keras-rl's own dueling ``DQNAgent``, and the classic path with
--dueling / --double-dqn / --snapshot-every. keras-rl agents run in subprocesses (they switch
TensorFlow to graph mode); this process stays eager."""

from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import kerasrl_compat  # noqa: F401  (Keras 2 before TensorFlow loads)

# isort: split
import h5py
import numpy as np
import pytest
from procs import h5_abs_sum, stock_kerasrl
from test_classic import ROOT, ok, run

from core.network import INPUT_SHAPE, build_q_network
from core.policy_file import is_dueling_file, read_weight_shapes, save_policy

N_ACTIONS = 4


def random_dueling_network(seed: int):
    """Our dueling network with weights that give Q-values of order 1 which differ per action."""
    model = build_q_network(N_ACTIONS, dueling=True)
    rng = np.random.default_rng(seed)
    weights = []
    for w in model.get_weights():
        if w.ndim == 1:
            weights.append(rng.normal(0.0, 0.5, w.shape).astype(np.float32))
        else:
            fan_in = int(np.prod(w.shape[:-1]))
            weights.append(rng.normal(0.0, 2.0 / np.sqrt(fan_in), w.shape).astype(np.float32))
    model.set_weights(weights)
    return model


def test_dueling_layout_is_keras_rls():
    plain, dueling = build_q_network(N_ACTIONS), build_q_network(N_ACTIONS, dueling=True)
    # keras-rl takes layers[-2] (Dense n) of the plain network, drops its final Activation,
    # and adds Dense(n + 1) + Lambda: the plain Dense(n) stays as a linear hidden layer.
    assert [type(layer).__name__ for layer in dueling.layers] == [
        "InputLayer", "Permute", "Conv2D", "Activation", "Conv2D", "Activation", "Conv2D", "Activation",
        "Flatten", "Dense", "Activation", "Dense", "Dense", "Lambda",
    ]  # fmt: skip
    plain_shapes = [w.shape for w in plain.get_weights()]
    assert [w.shape for w in dueling.get_weights()] == [*plain_shapes, (N_ACTIONS, N_ACTIONS + 1), (N_ACTIONS + 1,)]
    assert dueling.layers[-2].get_config()["activation"] == "linear"
    assert dueling.output_shape == (None, N_ACTIONS)


def test_dueling_output_is_v_plus_a_minus_mean_a():
    model = random_dueling_network(1)
    states = np.random.default_rng(2).random((3, *INPUT_SHAPE), dtype=np.float32)
    import tensorflow as tf

    head = tf.keras.Model(model.input, model.layers[-2].output)(states).numpy()  # [V, A...]
    expected = head[:, :1] + head[:, 1:] - head[:, 1:].mean(axis=1, keepdims=True)
    np.testing.assert_allclose(model(states).numpy(), expected, rtol=1e-5, atol=1e-6)


@pytest.fixture(scope="module")
def dueling_file(tmp_path_factory):
    """A random dueling policy.h5, a fixed uint8 state batch and our Q-values for it."""
    work = tmp_path_factory.mktemp("dueling")
    model = random_dueling_network(0)
    states = np.random.default_rng(3).integers(0, 256, (8, *INPUT_SHAPE), dtype=np.uint8)
    np.save(work / "states.npy", states)
    q = model(states.astype(np.float32) / 255.0).numpy()
    head = model.layers[-2].output
    import tensorflow as tf

    v_and_a = tf.keras.Model(model.input, head)(states.astype(np.float32) / 255.0).numpy()
    return save_policy(model, work / "policy.h5"), work, q, v_and_a


def test_keras_rl_dueling_agent_loads_our_file_with_the_same_q_values(dueling_file, tmp_path):
    policy, work, ours, v_and_a = dueling_file
    assert is_dueling_file(policy)
    # keras-rl's own dueling agent (the two changes docs/learning.md gives) loaded it and played a game
    stock_kerasrl([policy], tmp_path, "--dueling", "--q-values", str(work / "states.npy"), str(tmp_path / "q.npy"))
    theirs = np.load(tmp_path / "q.npy")
    assert theirs.shape == ours.shape == (8, N_ACTIONS)
    np.testing.assert_allclose(theirs, ours, rtol=1e-4, atol=1e-5)
    # the comparison can fail: Q differs across actions and states far beyond the tolerance,
    # and keras-rl's other dueling combinations would give other values
    assert ours.std(axis=1).min() > 0.05 and np.abs(ours[0] - ours[1]).max() > 0.05
    v, a = v_and_a[:, :1], v_and_a[:, 1:]
    for other in (v + a - a.max(axis=1, keepdims=True), v + a):
        assert not np.allclose(theirs, other, rtol=1e-4, atol=1e-5)


def test_plain_keras_rl_agent_refuses_the_dueling_file(dueling_file, tmp_path):
    policy, *_ = dueling_file
    with pytest.raises(AssertionError, match="Layer count mismatch"):  # refused for its layout, nothing else
        stock_kerasrl([policy], tmp_path)


SNAPSHOT_ARGS = ["--steps", "300", "--warmup", "100", "--memory-limit", "1000", "--log-every", "0.1",
                 "--dueling", "true", "--double-dqn", "true", "--snapshot-every", "100"]


@pytest.fixture(scope="module")
def trained_dueling(tmp_path_factory):
    work = tmp_path_factory.mktemp("train-dueling")
    out = ok(run(work, "train", [ROOT / "train.py", *SNAPSHOT_ARGS, "--output", work / "policy.h5",
                                 "--run-dir", work / "run"]))
    return work, out


def test_train_dueling_double_dqn_writes_a_dueling_policy(trained_dueling):
    work, out = trained_dueling
    assert re.search(r"^training Breakout \(4 actions\) for 300 steps with keras-rl DQNAgent "
                     r"\(dueling, double DQN\);", out, re.M), out
    config = json.loads((work / "run" / "config.json").read_text())
    assert config["dueling"] is True and config["double_dqn"] is True and config["snapshot_every"] == 100
    assert is_dueling_file(work / "policy.h5")
    # keras-rl's dueling agent wrote it; our dueling network reads it, weight for weight
    model = build_q_network(N_ACTIONS, dueling=True)
    model.load_weights(str(work / "policy.h5"))
    assert [w.shape for w in model.get_weights()] == read_weight_shapes(work / "policy.h5")
    assert sum(float(np.abs(w).astype(np.float64).sum()) for w in model.get_weights()) == pytest.approx(
        h5_abs_sum(work / "policy.h5"), rel=1e-6)


def test_train_snapshots(trained_dueling):
    work, _ = trained_dueling
    run_dir = work / "run"
    with open(run_dir / "snapshots.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "env_steps", "learner_steps", "wall_seconds", "point_minutes"]
    assert all(r[4] == "" for r in rows[1:])  # train.py takes no timed snapshots
    assert [r[0] for r in rows[1:]] == [f"snapshots/policy-{s:09d}.h5" for s in (100, 200, 300)]
    assert [int(r[1]) for r in rows[1:]] == [100, 200, 300]
    learner = [int(r[2]) for r in rows[1:]]
    assert learner[0] == 0  # nothing trained during the warm-up
    # keras-rl trains at its 0-based step s when s > warmup and s % 4 == 0, plus once more after
    # some episode ends: at least (K - 1) // 4 - 100 // 4 updates after K steps
    assert 24 <= learner[1] <= 30 and 49 <= learner[2] <= 60 and learner == sorted(learner)
    walls = [float(r[3]) for r in rows[1:]]
    assert walls == sorted(walls) and walls[0] >= 0
    assert sorted(p.name for p in (run_dir / "snapshots").iterdir()) == [Path(r[0]).name for r in rows[1:]]
    for r in rows[1:]:
        assert is_dueling_file(run_dir / r[0])
    with h5py.File(run_dir / rows[-1][0], "r") as a, h5py.File(work / "policy.h5", "r") as b:
        # the last snapshot, at step 300, is the final network
        a.visititems(lambda name, obj: np.testing.assert_array_equal(obj[()], b[name][()])
                     if isinstance(obj, h5py.Dataset) else None)


def test_stock_keras_rl_loads_a_dueling_file_as_the_docs_say(trained_dueling, tmp_path):
    """docs/learning.md's two changes to dqn_atari.py load train.py's --dueling true file."""
    work, _ = trained_dueling
    stock_kerasrl([work / "policy.h5"], tmp_path, "--dueling")


def test_play_detects_the_dueling_file(trained_dueling, tmp_path):
    work, _ = trained_dueling
    out = ok(run(tmp_path, "play", [ROOT / "play.py", "--weights", work / "policy.h5", "--max-steps", "50",
                                    "--seed", "1"]))
    assert re.search(r"^loaded .*policy\.h5: dueling network, DQNAgent\(enable_dueling_network=True\), 4 actions$",
                     out, re.M), out
    assert re.search(r"^game 1: score \d+ in \d+ steps$", out, re.M), out
