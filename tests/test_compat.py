"""kerasrl_compat: every keras-rl2 shim, on the real TensorFlow, keras-rl2 and emulator.

Whatever imports ``rl.agents`` runs in a subprocess: it switches TensorFlow to graph mode for
the whole process.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

import kerasrl_compat
from core.atari import make_env

ROOT = Path(__file__).resolve().parents[1]


def run_python(tmp_path: Path, name: str, code: str, *, legacy_env: bool = True) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (repo on the path); keep its output under tmp_path."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "PYTHONPATH")}
    env.update(PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="2", RAY_USAGE_STATS_ENABLED="0")
    if legacy_env:
        env["TF_USE_LEGACY_KERAS"] = "1"
    script = tmp_path / f"{name}.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    (tmp_path / f"{name}.stdout").write_text(proc.stdout)
    (tmp_path / f"{name}.stderr").write_text(proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def last_json(proc: subprocess.CompletedProcess) -> dict:
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_compat_selects_keras2_before_tensorflow_loads(tmp_path):
    code = """
import json, os, sys
first = sys.argv[0].endswith("compat_first.py")
if first:
    import kerasrl_compat
import tensorflow as tf
import tf_keras
print(json.dumps({"var": os.environ.get("TF_USE_LEGACY_KERAS"), "module": tf.keras.__name__,
                  "legacy": tf.keras.Sequential is tf_keras.Sequential}))
"""
    # TF_USE_LEGACY_KERAS is NOT in these processes' environment: only kerasrl_compat sets it
    ours = last_json(run_python(tmp_path, "compat_first", code, legacy_env=False))
    assert ours["var"] == "1" and ours["legacy"] is True
    assert ours["module"].startswith("tf_keras")
    # control: without the module TensorFlow 2.21 gives Keras 3, which keras-rl2 cannot use
    plain = last_json(run_python(tmp_path, "tf_first", code, legacy_env=False))
    assert plain["var"] is None and plain["legacy"] is False
    assert not plain["module"].startswith("tf_keras")


def test_prepare_rl_widens_step_counters_and_stays_eager():
    import tensorflow as tf

    kerasrl_compat.prepare_rl()
    kerasrl_compat.prepare_rl()  # idempotent
    import rl.callbacks  # fix 2: it imports tensorflow.keras's __version__, which legacy Keras lacks
    import rl.core
    import tf_keras

    counter = rl.core.np.int16(32767) + 1  # what fit()'s counters do at step 32,768
    assert counter == 32768 and type(counter) is np.int64
    with np.errstate(over="ignore"):
        assert np.int16(32767) + np.int16(1) == -32768  # the bug the proxy avoids
    assert rl.core.np.float32 is np.float32  # everything else is plain numpy
    assert rl.callbacks.KERAS_VERSION == tf_keras.__version__ and tf_keras.__version__.startswith("2.")
    assert "rl.agents" not in sys.modules
    assert tf.executing_eagerly()


def test_old_gym_api_adapter():
    env = kerasrl_compat.OldGymAPI(make_env("Breakout", training=False, seed=0, max_episode_steps=3))
    assert env.action_space.n == 4
    assert env.get_action_meanings()[1] == "FIRE"  # other attributes pass through
    obs = env.reset()
    assert isinstance(obs, np.ndarray) and obs.shape == (84, 84)
    results = [env.step(np.int64(0)) for _ in range(3)]
    for result in results:
        assert len(result) == 4
        obs, reward, done, info = result
        assert obs.shape == (84, 84) and isinstance(reward, float) and isinstance(done, bool)
        assert isinstance(info, dict)
    assert [r[2] for r in results] == [False, False, True]  # done = terminated or truncated
    assert env.render() is None
    env.close()


AGENT_CODE = """
import json
import numpy as np
import kerasrl_compat
from core.atari import make_env
from learner.classic import make_dqn_agent  # applies prepare_rl() before any rl import below
from rl.agents.dqn import AbstractDQNAgent
from rl.callbacks import Callback
from rl.memory import SequentialMemory
from rl.policy import EpsGreedyQPolicy

agent = make_dqn_agent(4, policy=EpsGreedyQPolicy(eps=1.0), memory=SequentialMemory(limit=1000, window_length=4),
                       warmup=1000)
rng = np.random.default_rng(0)
batch = [[rng.integers(0, 256, (84, 84), dtype=np.uint8) for _ in range(4)] for _ in range(3)]
fast_is_custom = agent.process_state_batch.__func__ is not AbstractDQNAgent._stock_process_state_batch
fast = agent.process_state_batch(batch)
fast_q = agent.compute_q_values(batch[0])
kerasrl_compat.dqn_agent_class(fast_state_batch=False)
stock_is_stock = agent.process_state_batch.__func__ is AbstractDQNAgent._stock_process_state_batch
stock = agent.process_state_batch(batch)
stock_q = agent.compute_q_values(batch[0])
kerasrl_compat.dqn_agent_class(fast_state_batch=True)

episodes = []
class Counters(Callback):
    def on_episode_end(self, episode, logs):
        episodes.append((type(episode).__name__, type(logs["nb_steps"]).__name__))

env = kerasrl_compat.OldGymAPI(make_env("Breakout", training=True, seed=0))
np.random.seed(0)  # EpsGreedyQPolicy draws from numpy's global generator
# episodes are capped at 25 steps, so at least two end in 60 steps whatever the ball does
agent.fit(env, nb_steps=60, verbose=0, nb_max_episode_steps=25, callbacks=[Counters()])
print(json.dumps({
    "fast_is_custom": fast_is_custom, "stock_is_stock": stock_is_stock,
    "fast_dtype": str(fast.dtype), "fast_shape": list(fast.shape),
    "same_values": bool(np.array_equal(np.asarray(stock, dtype=np.float32), fast)),
    "expected_values": bool(np.array_equal(fast, np.asarray(batch, dtype=np.float32) / 255.0)),
    "same_q": bool(np.allclose(fast_q, stock_q)),
    "step": int(agent.step), "step_type": type(agent.step).__name__,
    "past_int16": int(agent.step + 32767), "episodes": episodes,
}))
"""


def test_dqn_agent_fast_batching_and_wide_counters(tmp_path):
    out = last_json(run_python(tmp_path, "agent", AGENT_CODE))
    # fix 4: the numeric batch is the stock object batch, value for value
    assert out["fast_is_custom"] and out["stock_is_stock"]
    assert out["fast_dtype"] == "float32" and out["fast_shape"] == [3, 4, 84, 84]
    assert out["same_values"] and out["expected_values"] and out["same_q"]
    # fix 3: fit()'s counters are 64-bit, so they pass 32,767 without wrapping
    assert out["step"] == 60 and out["step_type"] == "int64"
    assert out["past_int16"] == 60 + 32767
    assert len(out["episodes"]) >= 2, "fit() reported fewer episode ends than its 25-step cap makes"
    assert all(pair == ["int64", "int64"] for pair in out["episodes"])
