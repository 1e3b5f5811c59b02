"""Independent keras-rl player: proves a ``policy.h5`` is keras-rl compatible.

Usage: python kerasrl_play.py POLICY_H5 [N_ACTIONS] [--dueling] [--q-values STATES_NPY OUT_NPY]

Deliberately imports nothing from this repository. It rebuilds keras-rl's Atari example
(``examples/dqn_atari.py`` of keras-rl / keras-rl2) as that example writes it: the same
network, the same ``AtariProcessor`` on raw RGB frames, ``SequentialMemory`` and a
``DQNAgent`` (with ``--dueling``: ``enable_dueling_network=True, dueling_type='avg'``, keras-rl
adding its own dueling head); loads the weights with ``dqn.load_weights`` and plays one episode
with ``dqn.test``. ``--q-values`` also writes the agent's Q-values for a uint8 state batch
(``dqn.compute_batch_q_values``). On success the last line is ``REFERENCE_OK episodes=1 ...``.
"""

import argparse
import os

# Shim (a): keras-rl2 needs Keras 2; TensorFlow picks tf_keras only if this is set before its
# first import.
os.environ["TF_USE_LEGACY_KERAS"] = "1"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ale_py
import gymnasium
import numpy as np
import tensorflow as tf
import tensorflow.keras
import tf_keras
from PIL import Image

# Shim (b): rl/callbacks.py does `from tensorflow.keras import __version__`, which legacy Keras
# lacks; borrow tf_keras's before importing rl.
if not hasattr(tensorflow.keras, "__version__"):
    tensorflow.keras.__version__ = tf_keras.__version__

from rl.agents.dqn import DQNAgent
from rl.core import Processor
from rl.memory import SequentialMemory
from rl.policy import GreedyQPolicy
from tensorflow.keras.layers import Activation, Convolution2D, Dense, Flatten, Permute
from tensorflow.keras.models import Sequential

INPUT_SHAPE = (84, 84)
WINDOW_LENGTH = 4


class AtariProcessor(Processor):
    """keras-rl's examples/dqn_atari.py processor, verbatim in behaviour."""

    def process_observation(self, observation):
        assert observation.ndim == 3  # (height, width, channel)
        img = Image.fromarray(observation)
        img = img.resize(INPUT_SHAPE).convert("L")  # resize and convert to grayscale
        processed_observation = np.array(img)
        assert processed_observation.shape == INPUT_SHAPE
        return processed_observation.astype("uint8")  # saves storage in experience memory

    def process_state_batch(self, batch):
        # We could perform this processing step in `process_observation`. In this case, however,
        # we would need to store a `float32` array instead, which is 4x more memory intensive than
        # an `uint8` array. This matters if we store 1M observations.
        processed_batch = batch.astype("float32") / 255.0
        return processed_batch

    def process_reward(self, reward):
        return np.clip(reward, -1.0, 1.0)


def allow_keras_rl_lambda():
    """Shim (e): with enable_dueling_network, dqn.compile clones the model through its config and
    tf_keras 2.21's safe mode refuses the Python lambda of keras-rl's dueling Lambda layer. It
    is keras-rl's own lambda from this process, so safe mode is switched off here."""
    tf_keras.__internal__.enable_unsafe_deserialization()


class OldGymEnv:
    """Shim (c): keras-rl expects gym<0.26's reset() -> obs, step() -> (obs, r, done, info)."""

    def __init__(self, env):
        self.env = env
        self.action_space = env.action_space
        self.observation_space = env.observation_space

    def reset(self):
        return self.env.reset(seed=0)[0]

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(int(action))
        return obs, reward, terminated or truncated, info

    def render(self, mode="human"):
        return None

    def close(self):
        self.env.close()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("weights")
    parser.add_argument("nb_actions", nargs="?", type=int, default=4)
    parser.add_argument("--dueling", action="store_true")
    parser.add_argument("--q-values", nargs=2, metavar=("STATES_NPY", "OUT_NPY"))
    args = parser.parse_args()
    weights, nb_actions = args.weights, args.nb_actions

    gymnasium.register_envs(ale_py)
    # BreakoutDeterministic-v4 of the original example: frameskip 4, no sticky actions.
    env = OldGymEnv(gymnasium.make("ALE/Breakout-v5", frameskip=4, repeat_action_probability=0.0))
    np.random.seed(123)

    # Next, we build our model. We use the same model that was described by Mnih et al. (2015).
    input_shape = (WINDOW_LENGTH,) + INPUT_SHAPE
    model = Sequential()
    # (width, height, channels)
    model.add(Permute((2, 3, 1), input_shape=input_shape))
    model.add(Convolution2D(32, (8, 8), strides=(4, 4)))
    model.add(Activation("relu"))
    model.add(Convolution2D(64, (4, 4), strides=(2, 2)))
    model.add(Activation("relu"))
    model.add(Convolution2D(64, (3, 3), strides=(1, 1)))
    model.add(Activation("relu"))
    model.add(Flatten())
    model.add(Dense(512))
    model.add(Activation("relu"))
    model.add(Dense(nb_actions))
    model.add(Activation("linear"))

    memory = SequentialMemory(limit=1000, window_length=WINDOW_LENGTH)
    processor = AtariProcessor()
    policy = GreedyQPolicy()
    dqn = DQNAgent(
        model=model,
        nb_actions=nb_actions,
        policy=policy,
        test_policy=policy,
        memory=memory,
        processor=processor,
        nb_steps_warmup=50000,
        gamma=0.99,
        target_model_update=10000,
        train_interval=4,
        delta_clip=1.0,
        enable_dueling_network=args.dueling,
        dueling_type="avg",
    )
    if args.dueling:
        allow_keras_rl_lambda()
    # Shim (d): in the graph mode rl.agents switches on, only the legacy optimizers work.
    dqn.compile(tf.keras.optimizers.legacy.Adam(learning_rate=0.00025), metrics=["mae"])

    dqn.load_weights(weights)
    weight_sum = float(sum(np.abs(w).astype(np.float64).sum() for w in dqn.model.get_weights()))
    if args.q_values:
        states = np.load(args.q_values[0])
        np.save(args.q_values[1], dqn.compute_batch_q_values(states))
    history = dqn.test(env, nb_episodes=1, visualize=False, nb_max_episode_steps=300, verbose=0)
    episodes = len(history.history["episode_reward"])
    reward = float(history.history["episode_reward"][0])
    steps = int(history.history["nb_steps"][0])
    env.close()
    print(f"REFERENCE_OK episodes={episodes} reward={reward:g} steps={steps} weight_abs_sum={weight_sum:.6f}")


if __name__ == "__main__":
    main()
