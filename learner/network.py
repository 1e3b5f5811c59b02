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

import kerasrl_compat
from actors.atari import FRAME_SHAPE, WINDOW

INPUT_SHAPE = (WINDOW, *FRAME_SHAPE)


def _dueling_avg(y):  # y: [batch, n_actions + 1] -> Q: [batch, n_actions]
    """Q = V + A - mean(A), with V = y[:, 0] and A = y[:, 1:] (keras-rl's ``dueling_type='avg'``)."""
    import tensorflow as tf

    advantage = y[:, 1:]
    return y[:, :1] + advantage - tf.reduce_mean(advantage, axis=1, keepdims=True)


def build_q_network(n_actions: int, dueling: bool = False):  # -> tf_keras.Model
    """Conv 32x8x8/4, Conv 64x4x4/2, Conv 64x3x3/1, Dense 512, Dense n_actions (linear).

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

    base = Sequential(
        [
            # (window, h, w) -> (h, w, window): channels-last convolutions, keras-rl's order.
            Permute((2, 3, 1), input_shape=INPUT_SHAPE),
            Conv2D(32, (8, 8), strides=(4, 4)),
            Activation("relu"),
            Conv2D(64, (4, 4), strides=(2, 2)),
            Activation("relu"),
            Conv2D(64, (3, 3), strides=(1, 1)),
            Activation("relu"),
            Flatten(),
            Dense(512),
            Activation("relu"),
            Dense(n_actions),
            Activation("linear"),
        ]
    )
    if not dueling:
        return base
    value_and_advantage = Dense(n_actions + 1, activation="linear")(base.layers[-2].output)
    q = Lambda(_dueling_avg, output_shape=(n_actions,))(value_and_advantage)
    return Model(inputs=base.input, outputs=q)


def q_function(model):  # -> tf.function: uint8 [B, WINDOW, 84, 84] -> float Q [B, n_actions]
    """The acting path (explorers, the evaluator): one traced call from uint8 stacks to Q-values,
    scaled to [0, 1] inside, as keras-rl's ``AtariProcessor.process_state_batch`` scales them."""
    tf = kerasrl_compat.load_tensorflow()
    return tf.function(
        lambda x: model(tf.cast(x, tf.float32) / 255.0, training=False),
        input_signature=[tf.TensorSpec([None, *INPUT_SHAPE], tf.uint8)],
    )
