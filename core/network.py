"""The Q-network: the single place it is built, for every trainer, actor and player.

The layout is keras-rl's Atari example (``examples/dqn_atari.py``) layer for layer, so a
``policy.h5`` written from it loads into any keras-rl ``DQNAgent`` built on that example.
Inputs are 4 stacked 84x84 frames scaled to [0, 1]; scaling happens outside the network,
as keras-rl's ``AtariProcessor.process_state_batch`` does it.

The dueling variant is the network keras-rl's ``DQNAgent(enable_dueling_network=True,
dueling_type="avg")`` makes out of that example, built the same way (see
:func:`build_q_network`), so its ``policy.h5`` loads into such an agent too.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable

import kerasrl_compat
from config import PRECISIONS
from core.frames import INPUT_SHAPE

BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")  # Intel AMX (Sapphire Rapids on), AVX-512 BF16 (Cooper Lake, Zen 4 on)


def cpu_flags(cpuinfo: str) -> set[str]:
    """The CPU feature flags of the first ``flags`` line of ``/proc/cpuinfo``'s text."""
    line = next((line for line in cpuinfo.splitlines() if line.startswith("flags")), "flags :")
    return set(line.split(":", 1)[1].split())


def bfloat16_hardware(flags: Iterable[str], gpu_capabilities: Iterable[tuple[int, int]] = ()) -> str:
    """Which of this hardware multiplies bf16 natively ('' when none does): bf16 math is only
    faster than float32 there; elsewhere TensorFlow emulates it, slower than float32. The rule
    alone, so that it is testable on any machine."""
    for capability in gpu_capabilities:
        if tuple(capability) >= (8, 0):  # Ampere and newer
            return f"GPU compute capability {capability[0]}.{capability[1]}"
    found = [flag for flag in BF16_CPU_FLAGS if flag in set(flags)]
    return f"CPU {found[0]}" if found else ""


@functools.cache
def native_bfloat16() -> str:
    """:func:`bfloat16_hardware` of the GPUs TensorFlow sees and this machine's CPU."""
    tf = kerasrl_compat.load_tensorflow()
    capabilities = [tuple(tf.config.experimental.get_device_details(gpu).get("compute_capability") or (0, 0))
                    for gpu in tf.config.list_physical_devices("GPU")]
    try:
        with open("/proc/cpuinfo") as f:
            cpuinfo = f.read()
    except OSError:
        cpuinfo = ""
    return bfloat16_hardware(cpu_flags(cpuinfo), capabilities)


def resolve_precision(precision: str, native: str | None = None) -> str:
    """``auto`` -> ``bfloat16`` where the hardware runs it natively, else ``float32``. ``native``:
    what :func:`native_bfloat16` says (asked when None)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return "bfloat16" if (native_bfloat16() if native is None else native) else "float32"
    return precision


def _dueling_avg(y):  # y: [batch, n_actions + 1] -> Q: [batch, n_actions]
    """Q = V + A - mean(A), with V = y[:, 0] and A = y[:, 1:] (keras-rl's ``dueling_type='avg'``)."""
    import tensorflow as tf

    advantage = y[:, 1:]
    return y[:, :1] + advantage - tf.reduce_mean(advantage, axis=1, keepdims=True)


def build_q_network(
    n_actions: int, dueling: bool = False, precision: str = "float32", acting: bool = False
):  # -> tf_keras.Model
    """Conv 32x8x8/4, Conv 64x4x4/2, Conv 64x3x3/1, Dense 512, Dense n_actions (linear).

    ``precision="bfloat16"`` runs the convolutions and the hidden Dense in bfloat16 with float32
    weights (Keras' ``mixed_bfloat16``), so the weights and ``policy.h5`` are the same either way.
    The Q-head stays float32, as TensorFlow's mixed-precision guide advises for output layers:
    Q-values near 10 would otherwise be rounded to steps of 0.06. The policy is per layer, never
    Keras' process-wide one, so networks built later in the process are not affected.

    ``acting=True`` (explorers: a copy that only acts and never trains) keeps the bf16 body's weights
    in bf16 rather than float32. Its Q-values are bit for bit those of the float32-weight network
    with the same weights, since that one rounds its weights to bf16 on every call anyway; here the
    rounding happens once, in ``set_weights``, which saves 0.4-0.5 ms per forward pass on the
    reference CPU (about a fifth of a forward pass over 8 emulators).

    ``dueling=True`` repeats what keras-rl's ``DQNAgent.__init__`` does to that network: it
    takes ``model.layers[-2]`` (the Dense(n_actions), skipping the final Activation), puts a
    Dense(n_actions + 1) on its output (column 0 is V, the rest A) and combines them as
    V + A - mean(A). Quirk kept on purpose: the base's Dense(n_actions) stays in as a linear
    hidden layer (512 -> n_actions -> n_actions + 1), because that is the layout, weight for
    weight, that keras-rl's dueling agent saves and loads.
    """
    kerasrl_compat.load_tensorflow()
    from tensorflow.keras.layers import Activation, Conv2D, Dense, Flatten, Lambda, Permute
    from tensorflow.keras.models import Model, Sequential

    body = {"float32": "float32", "bfloat16": "bfloat16" if acting else "mixed_bfloat16"}[resolve_precision(precision)]
    head = "float32"
    base = Sequential(
        [
            # (window, h, w) -> (h, w, window): channels-last convolutions, keras-rl's order.
            Permute((2, 3, 1), input_shape=INPUT_SHAPE, dtype=body),
            Conv2D(32, (8, 8), strides=(4, 4), dtype=body),
            Activation("relu", dtype=body),
            Conv2D(64, (4, 4), strides=(2, 2), dtype=body),
            Activation("relu", dtype=body),
            Conv2D(64, (3, 3), strides=(1, 1), dtype=body),
            Activation("relu", dtype=body),
            Flatten(dtype=body),
            Dense(512, dtype=body),
            Activation("relu", dtype=body),
            Dense(n_actions, dtype=head),
            Activation("linear", dtype=head),
        ]
    )
    if not dueling:
        return base
    value_and_advantage = Dense(n_actions + 1, activation="linear", dtype=head)(base.layers[-2].output)
    q = Lambda(_dueling_avg, output_shape=(n_actions,), dtype=head)(value_and_advantage)
    return Model(inputs=base.input, outputs=q)


def q_function(model):  # -> tf.function: uint8 [B, WINDOW, 84, 84] -> float Q [B, n_actions]
    """The acting path (explorers, the evaluator): one traced call from uint8 stacks to Q-values,
    scaled to [0, 1] inside, as keras-rl's ``AtariProcessor.process_state_batch`` scales them."""
    tf = kerasrl_compat.load_tensorflow()
    return tf.function(
        lambda x: model(tf.cast(x, tf.float32) / 255.0, training=False),
        input_signature=[tf.TensorSpec([None, *INPUT_SHAPE], tf.uint8)],
    )
