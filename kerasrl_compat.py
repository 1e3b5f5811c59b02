"""keras-rl2 1.0.5 on TensorFlow 2.21: every shim the project needs, in one place.

Import this module before TensorFlow or ``rl`` anywhere. Each fix states why it exists;
``tests/test_compat.py`` shows each problem and its fix.

Importing this module is cheap and keeps TensorFlow eager: only :func:`dqn_agent_class`
imports ``rl.agents``, which switches the whole process to graph mode.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import tempfile
import types
import warnings
from collections.abc import Iterator
from typing import Any

# Fix 0: keras-rl2 needs Keras 2. TensorFlow picks the Keras flavour behind `tf.keras` at its
# first import, so these must be set before anything imports tensorflow.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# TensorFlow maps nearly all of a GPU's memory when it first touches it; grow on demand instead, so
# that a learner leaves room beside it (and a process that only loads policy.h5 takes next to none).
os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")

import numpy as np  # noqa: E402

# Library warnings that tell a user of this project nothing they can act on, silenced here (every
# entry point and Ray actor imports this module first), each by category, message and the module
# that raises it, so that any other warning still reaches the terminal.
QUIET_WARNINGS = (
    # keras-rl2's agents compile a Keras 2 training function in graph mode, and tf_keras reads its
    # own deprecated property while doing so: printed with its source line by every play/train.
    (UserWarning, r"`Model\.state_updates` will be removed", r"tf_keras\."),
)
for _category, _message, _module in QUIET_WARNINGS:
    warnings.filterwarnings("ignore", message=_message, category=_category, module=_module)

#: Environment every process of ours (Ray workers, subprocesses) must start with.
PROCESS_ENV = {
    "TF_USE_LEGACY_KERAS": "1",
    "TF_CPP_MIN_LOG_LEVEL": "2",
    "RAY_USAGE_STATS_ENABLED": "0",
    "TF_FORCE_GPU_ALLOW_GROWTH": "true",
}


# TensorFlow's C++ start-up chatter, printed before its log level applies (TF_CPP_MIN_LOG_LEVEL
# does not reach it in 2.21). Everything else written to stderr meanwhile is passed through.
_STARTUP_NOISE = re.compile(
    r"absl::InitializeLog|oneDNN custom operations|cudart_stub|cuda_platform|cuInit|cuda_dnn|cuda_fft|"
    r"cuda_blas|computation_placer|TF-TRT|optimized to use available CPU instructions|appropriate compiler flags"
)


@contextlib.contextmanager
def _filtered_stderr() -> Iterator[None]:
    """Send file descriptor 2 to a temporary file, then replay what is not start-up noise."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as capture:
        os.dup2(capture.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            capture.seek(0)
            for line in capture.read().decode(errors="replace").splitlines():
                if not _STARTUP_NOISE.search(line):
                    print(line, file=sys.stderr)


def load_tensorflow() -> Any:
    """Import TensorFlow and create its devices once, without its C++ start-up chatter."""
    if "tensorflow" in sys.modules and getattr(load_tensorflow, "done", False):
        return sys.modules["tensorflow"]
    with _filtered_stderr():
        import tensorflow as tf

        tf.config.list_logical_devices()
    load_tensorflow.done = True
    return tf


def _fix_keras_version() -> None:
    """Fix 1: ``rl/callbacks.py`` does ``from tensorflow.keras import __version__``.

    With legacy Keras that module has no ``__version__``; give it tf_keras's.
    """
    load_tensorflow()
    import tensorflow.keras  # noqa: F401  (the lazy module rl imports from)
    import tf_keras

    if not hasattr(tensorflow.keras, "__version__"):
        tensorflow.keras.__version__ = tf_keras.__version__


class _Wide16Numpy(types.ModuleType):
    """numpy as seen by ``rl.core``, with ``int16`` widened to ``int64``.

    Fix 3: ``fit()`` keeps its step and episode counters as ``np.int16``; after 32,767 steps
    they wrap negative, ``fit`` never ends and every schedule keyed on the step breaks.
    """

    int16 = np.int64

    def __getattr__(self, name: str) -> Any:
        return getattr(np, name)


def _fix_step_counters() -> None:
    import rl.core

    if not isinstance(rl.core.np, _Wide16Numpy):
        rl.core.np = _Wide16Numpy("numpy")


def _numeric_state_batch(self: Any, batch: Any) -> np.ndarray:
    """Fix 4: stock keras-rl builds ``np.array(batch, dtype=object)``.

    Converting that object array costs ~18 ms per batch of 32. A numeric array holds the
    same values.
    """
    batch = np.asarray(batch)
    if self.processor is None:
        return batch
    return self.processor.process_state_batch(batch)


def _fix_dueling_clone() -> None:
    """Fix 6: ``DQNAgent(enable_dueling_network=True).compile`` clones its model through its
    config (the target network), and tf_keras 2.21's safe mode refuses to rebuild the Python
    ``lambda`` in keras-rl's own dueling Lambda layer ("Requested the deserialization of a
    Lambda layer ..."). That lambda comes from keras-rl in this process, not from a file, so
    keras-rl's clone alone runs with safe mode off.
    """
    import rl.agents.dqn
    from tf_keras.src.saving.serialization_lib import SafeModeScope

    stock = rl.agents.dqn.clone_model
    if getattr(stock, "safe_mode_off", False):
        return

    def clone_model(model: Any, custom_objects: dict | None = None) -> Any:
        with SafeModeScope(safe_mode=False):
            return stock(model, custom_objects or {})

    clone_model.safe_mode_off = True
    rl.agents.dqn.clone_model = clone_model


def prepare_rl() -> None:
    """Apply the fixes that do not switch TensorFlow to graph mode (safe in any process)."""
    _fix_keras_version()
    _fix_step_counters()


def dqn_agent_class(fast_state_batch: bool = True) -> type:
    """Return keras-rl's ``DQNAgent`` with every fix applied.

    Importing ``rl.agents`` disables eager execution for the whole process (fix 2): call
    this only in processes that run keras-rl agents, never beside ``tf.function`` code.
    ``fast_state_batch=False`` keeps stock batching, for the baseline benchmark only.
    """
    prepare_rl()
    from rl.agents.dqn import AbstractDQNAgent, DQNAgent

    _fix_dueling_clone()

    stock = AbstractDQNAgent.__dict__.get("_stock_process_state_batch")
    if stock is None:
        stock = AbstractDQNAgent.process_state_batch
        AbstractDQNAgent._stock_process_state_batch = stock
    AbstractDQNAgent.process_state_batch = _numeric_state_batch if fast_state_batch else stock
    return DQNAgent


def graph_mode_adam(learning_rate: float) -> Any:
    """Fix 2b: in graph mode keras-rl calls ``optimizer.get_updates``, which only the legacy
    optimizers have (the new Adam fails with ``no attribute 'get_updates'``)."""
    import tensorflow as tf

    return tf.keras.optimizers.legacy.Adam(learning_rate=learning_rate)


class OldGymAPI:
    """Fix 5: keras-rl expects gym<0.26: ``reset() -> obs``, ``step() -> (obs, r, done, info)``.

    Wraps a gymnasium env; ``done = terminated or truncated``.
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.action_space = env.action_space
        self.observation_space = env.observation_space

    def reset(self) -> np.ndarray:
        obs, _ = self.env.reset()
        return obs

    def step(self, action: int) -> tuple[np.ndarray, float, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(int(action))
        return obs, float(reward), bool(terminated or truncated), info

    def render(self, mode: str = "human") -> Any:
        return None

    def close(self) -> None:
        self.env.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.env, name)
