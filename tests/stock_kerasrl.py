"""keras-rl as its users have it: does a ``policy.h5`` load into ``examples/dqn_atari.py``?

Usage: python stock_kerasrl.py POLICY_H5 [POLICY_H5 ...] [--max-steps N] [--dueling]
       python stock_kerasrl.py --save POLICY_H5 [--train-steps N] [--seed S]

This is keras-rl2's ``examples/dqn_atari.py`` in ``--mode test``, as someone who has never
seen this repository runs it on today's stack. It imports nothing from this repository and
applies only what every keras-rl2 user on TensorFlow >= 2.16 must:

1. ``TF_USE_LEGACY_KERAS=1`` before TensorFlow loads (keras-rl2 needs Keras 2, ``tf_keras``);
2. ``tensorflow.keras.__version__`` borrowed from ``tf_keras`` (``rl/callbacks.py`` imports it);
3. the old gym step API around the emulator (``gym[atari]`` has no installable ROMs; gymnasium +
   ale-py is the working stand-in, and keras-rl2 calls ``reset() -> obs`` and
   ``step() -> (obs, reward, done, info)``); ``BreakoutDeterministic-v4`` is
   ``ALE/Breakout-v5`` with frameskip 4 and no sticky actions.

Everything else is the example: its network, its ``AtariProcessor``, ``SequentialMemory``,
the ``DQNAgent`` arguments, ``Adam(lr=.00025)`` and ``dqn.load_weights(path)``. Each file then
plays one game with ``dqn.test`` (capped at ``--max-steps``: a barely trained greedy agent may
never press FIRE). ``--dueling`` makes the two changes docs/learning.md gives a keras-rl user for
a ``--dueling true`` file: ``enable_dueling_network=True, dueling_type="avg"`` and tf_keras's safe
mode off before ``compile`` (keras-rl clones its own dueling Lambda layer).

``--q-values STATES OUT`` also saves the agent's Q-values for a uint8 state batch, to compare
them with ours.

Per file a line ``STOCK_OK file=... weight_abs_sum=... reward=... steps=...``; exit 0 only
when every file loaded and played. ``--save`` is the example's ``--mode train`` instead:
``dqn.fit`` for ``--train-steps`` steps, then ``dqn.save_weights`` (a file for ``--init-weights``).
"""

import argparse
import os
import sys

os.environ["TF_USE_LEGACY_KERAS"] = "1"  # fix 1
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow.keras  # noqa: E402
import tf_keras  # noqa: E402

if not hasattr(tensorflow.keras, "__version__"):  # fix 2
    tensorflow.keras.__version__ = tf_keras.__version__

import ale_py  # noqa: E402
import gymnasium  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from rl.agents.dqn import DQNAgent  # noqa: E402
from rl.core import Processor  # noqa: E402
from rl.memory import SequentialMemory  # noqa: E402
from rl.policy import EpsGreedyQPolicy, LinearAnnealedPolicy  # noqa: E402
from tensorflow.keras.layers import Activation, Convolution2D, Dense, Flatten, Permute  # noqa: E402
from tensorflow.keras.models import Sequential  # noqa: E402
from tensorflow.keras.optimizers import Adam  # noqa: E402

INPUT_SHAPE = (84, 84)
WINDOW_LENGTH = 4


class AtariProcessor(Processor):
    """The example's processor: RGB frame -> 84x84 grey uint8, states scaled to [0, 1], rewards clipped."""

    def process_observation(self, observation):
        assert observation.ndim == 3
        img = Image.fromarray(observation).resize(INPUT_SHAPE).convert("L")
        processed = np.array(img)
        assert processed.shape == INPUT_SHAPE
        return processed.astype("uint8")

    def process_state_batch(self, batch):
        return batch.astype("float32") / 255.0

    def process_reward(self, reward):
        return np.clip(reward, -1.0, 1.0)


class OldGymApi:
    """Fix 3: the gym < 0.26 API keras-rl2 calls, over a gymnasium env."""

    def __init__(self, env):
        self.env = env
        self.action_space = env.action_space
        self.observation_space = env.observation_space

    def reset(self):
        return self.env.reset(seed=123)[0]

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(int(action))
        return obs, reward, terminated or truncated, info

    def render(self, mode="human"):
        return None

    def close(self):
        self.env.close()


def build_agent(nb_actions, dueling=False):
    """The example's model and agent, argument for argument (keras-rl's dueling head on top if asked)."""
    model = Sequential()
    model.add(Permute((2, 3, 1), input_shape=(WINDOW_LENGTH,) + INPUT_SHAPE))
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
    memory = SequentialMemory(limit=1000000, window_length=WINDOW_LENGTH)
    policy = LinearAnnealedPolicy(EpsGreedyQPolicy(), attr="eps", value_max=1.0, value_min=0.1, value_test=0.05,
                                  nb_steps=1000000)
    dqn = DQNAgent(model=model, nb_actions=nb_actions, policy=policy, memory=memory,
                   processor=AtariProcessor(), nb_steps_warmup=50000, gamma=0.99, target_model_update=10000,
                   train_interval=4, delta_clip=1.0, enable_dueling_network=dueling, dueling_type="avg")
    if dueling:
        tf_keras.__internal__.enable_unsafe_deserialization()
    dqn.compile(Adam(lr=0.00025), metrics=["mae"])
    return dqn


def main():
    parser = argparse.ArgumentParser(description="Load policy.h5 files into keras-rl's dqn_atari.py agent and play.")
    parser.add_argument("weights", nargs="*")
    parser.add_argument("--save", help="train for --train-steps and save the weights here instead")
    parser.add_argument("--train-steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--max-steps", type=int, default=300, help="agent-step cap of each test game")
    parser.add_argument("--dueling", action="store_true", help="keras-rl's dueling agent, for --dueling true files")
    parser.add_argument("--q-values", nargs=2, metavar=("STATES_NPY", "OUT_NPY"),
                        help="also save the agent's Q-values (compute_batch_q_values) for a uint8 state batch, per "
                             "loaded file (the last file's stay in OUT_NPY)")
    args = parser.parse_args()

    gymnasium.register_envs(ale_py)
    env = OldGymApi(gymnasium.make("ALE/Breakout-v5", frameskip=4, repeat_action_probability=0.0))
    np.random.seed(args.seed)
    tensorflow.random.set_seed(args.seed)
    dqn = build_agent(env.action_space.n, args.dueling)
    if args.save:  # dqn_atari.py --mode train, shortened
        dqn.fit(env, nb_steps=args.train_steps, log_interval=10000, verbose=0)
        dqn.save_weights(args.save, overwrite=True)
        print(f"STOCK_SAVED file={args.save}", flush=True)
        return 0
    failed = 0
    for path in args.weights:
        try:
            dqn.load_weights(path)
            if args.q_values:
                np.save(args.q_values[1], dqn.compute_batch_q_values(np.load(args.q_values[0])))
            history = dqn.test(env, nb_episodes=1, visualize=False, nb_max_episode_steps=args.max_steps, verbose=0)
        except Exception as exc:  # report every file, then fail
            failed += 1
            print(f"STOCK_FAILED file={path} {type(exc).__name__}: {exc}", flush=True)
            continue
        total = sum(float(np.abs(w).astype(np.float64).sum()) for w in dqn.model.get_weights())
        print(f"STOCK_OK file={path} weight_abs_sum={total:.6f} reward={history.history['episode_reward'][0]:g} "
              f"steps={history.history['nb_steps'][0]}", flush=True)
    env.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
