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


def auto_precision(gpu_capability: tuple[int, int] | None, cpu_flags: Iterable[str]) -> tuple[str, str]:
    """What ``auto`` means on this hardware, and why: ``(precision, reason)``. Pure, so that any
    GPU can be tested without one.

    On a GPU (``gpu_capability`` is its CUDA compute capability): float32 at every capability.
    From 8.0 (Ampere) TensorFlow already runs float32 convolutions and matmuls as TF32 on the
    tensor cores; mixed_float16 would need loss scaling (updates skipped on overflow, a scale to
    checkpoint) for a network whose update is too small to be bound by arithmetic (docs/gpu.md).
    On a CPU: bfloat16 where it multiplies bf16 natively (AVX-512 BF16, AMX); elsewhere TensorFlow
    emulates bf16, slower than float32.
    """
    if gpu_capability is not None:
        major, minor = gpu_capability
        tf32 = ", TF32 tensor cores" if (major, minor) >= (8, 0) else ""
        return "float32", f"GPU compute capability {major}.{minor}{tf32}"
    flags = set(cpu_flags)
    found = [flag for flag in BF16_CPU_FLAGS if flag in flags]
    return ("bfloat16", f"CPU {found[0]}") if found else ("float32", "no native bfloat16 here")


@functools.cache
def visible_gpu() -> dict | None:
    """The first GPU TensorFlow sees in this process (``name``, ``capability``), or None. Actors
    without a GPU of their own see none: distributed.topology hides the node's GPUs from them."""
    tf = kerasrl_compat.load_tensorflow()
    gpus = tf.config.list_physical_devices("GPU")
    if not gpus:
        return None
    details = tf.config.experimental.get_device_details(gpus[0])
    return {"name": details.get("device_name", gpus[0].name),
            "capability": tuple(details.get("compute_capability") or (0, 0))}


@functools.cache
def auto_choice() -> tuple[str, str]:
    """:func:`auto_precision` for this process's hardware."""
    gpu = visible_gpu()
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return auto_precision(gpu["capability"] if gpu else None, flags)


def resolve_precision(precision: str) -> str:
    """``auto`` -> what :func:`auto_precision` picks for this process's hardware."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, not {precision!r}")
    if precision == "auto":
        return auto_choice()[0]
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
