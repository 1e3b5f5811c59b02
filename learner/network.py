"""The Q-network: the single place it is built, for every trainer, actor and player.

The layout is keras-rl's Atari example (``examples/dqn_atari.py``) layer for layer, so a
``policy.h5`` written from it loads into any keras-rl ``DQNAgent`` built on that example.
Inputs are 4 stacked 84x84 frames scaled to [0, 1]; scaling happens outside the network,
as keras-rl's ``AtariProcessor.process_state_batch`` does it.
"""

from __future__ import annotations

import kerasrl_compat
from actors.atari import FRAME_SHAPE, WINDOW

INPUT_SHAPE = (WINDOW, *FRAME_SHAPE)


def build_q_network(n_actions: int):  # -> tf_keras.Model
    """Conv 32x8x8/4, Conv 64x4x4/2, Conv 64x3x3/1, Dense 512, Dense n_actions (linear)."""
    kerasrl_compat.load_tensorflow()
    from tensorflow.keras.layers import Activation, Conv2D, Dense, Flatten, Permute
    from tensorflow.keras.models import Sequential

    return Sequential(
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
