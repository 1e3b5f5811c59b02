"""The keras-rl side of the project: its Atari processor and ``DQNAgent`` assembly.

Used by ``train.py`` (training), ``play.py`` (playing) and the benchmarks' baseline, which
trains exactly what train.py trains through :func:`classic_training`. Importing
this module is safe anywhere; :func:`make_dqn_agent` imports ``rl.agents`` and so switches
the calling process to graph mode (see ``kerasrl_compat``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import kerasrl_compat
from core.network import build_q_network

kerasrl_compat.prepare_rl()
from rl.core import Processor  # noqa: E402


class AtariProcessor(Processor):
    """keras-rl's Atari example processor, minus the work our env already does.

    Frames arrive as 84x84 uint8 (``core.atari``) and training envs already clip rewards,
    so what is left is scaling stacked states to [0, 1] just before the network.
    """

    def process_observation(self, observation: np.ndarray) -> np.ndarray:
        return observation

    def process_state_batch(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(batch, dtype=np.float32) / 255.0

    def process_reward(self, reward: float) -> float:
        return reward


def make_dqn_agent(
    n_actions: int,
    *,
    policy: Any,
    memory: Any,
    test_policy: Any = None,
    warmup: int = 50_000,
    target_update: int = 10_000,
    train_interval: int = 4,
    gamma: float = 0.99,
    batch_size: int = 32,
    delta_clip: float = 1.0,
    learning_rate: float = 2.5e-4,
    enable_dueling: bool = False,
    enable_double_dqn: bool = False,
    fast_state_batch: bool = True,
) -> Any:
    """A compiled keras-rl ``DQNAgent`` on the project's Q-network, as ``dqn_atari.py`` builds it.

    ``enable_dueling`` lets keras-rl add its dueling head (``dueling_type='avg'``) to the plain
    network: ``build_q_network(n_actions, dueling=True)`` is that same network, weight for
    weight. Double DQN is off by default, as in keras-rl and ``dqn_atari.py``.
    """
    dqn_agent = kerasrl_compat.dqn_agent_class(fast_state_batch=fast_state_batch)
    agent = dqn_agent(
        model=build_q_network(n_actions),
        nb_actions=n_actions,
        policy=policy,
        test_policy=test_policy,
        memory=memory,
        processor=AtariProcessor(),
        nb_steps_warmup=warmup,
        gamma=gamma,
        target_model_update=target_update,
        train_interval=train_interval,
        batch_size=batch_size,
        delta_clip=delta_clip,
        enable_dueling_network=enable_dueling,
        dueling_type="avg",
        enable_double_dqn=enable_double_dqn,
    )
    agent.compile(kerasrl_compat.graph_mode_adam(learning_rate), metrics=["mae"])
    return agent


def kerasrl_train_steps(agent: Any) -> int:
    """Gradient updates keras-rl's ``DQNAgent`` has made so far: its optimizer's counter.

    Not ``(step - warmup) // train_interval``: ``fit`` trains when ``step > warmup`` and
    ``step % train_interval == 0`` with ``step`` counted from 0, and calls ``backward`` once more
    after every episode end, which trains again when that step count qualifies.
    """
    from tensorflow.keras import backend

    return int(backend.get_value(agent.trainable_model.optimizer.iterations))


def classic_training(
    game: str,
    *,
    seed: int,
    memory_limit: int,
    eps_start: float = 1.0,
    eps_end: float = 0.1,
    eps_steps: int = 1_000_000,
    **agent_options: Any,
) -> tuple[Any, Any]:
    """``(env, agent)`` for keras-rl's ``examples/dqn_atari.py`` run on ``game``: what train.py trains
    and bench/baseline.py times, built in one place. Seeds Python, NumPy and TensorFlow with ``seed``;
    the training env (clipped rewards, episodic life) sits behind the old-gym adapter keras-rl needs;
    ``SequentialMemory`` with a 4-frame window; epsilon annealed linearly over ``eps_steps``.
    ``agent_options`` go to :func:`make_dqn_agent` (``target_update`` in agent steps, as keras-rl counts)."""
    import random

    from rl.memory import SequentialMemory
    from rl.policy import EpsGreedyQPolicy, LinearAnnealedPolicy

    from core.atari import make_env
    from core.frames import WINDOW

    tf = kerasrl_compat.load_tensorflow()
    random.seed(seed)
    np.random.seed(seed)
    tf.random.set_seed(seed)
    env = kerasrl_compat.OldGymAPI(make_env(game, training=True, seed=seed))
    policy = LinearAnnealedPolicy(EpsGreedyQPolicy(), attr="eps", value_max=eps_start, value_min=eps_end,
                                  value_test=0.05, nb_steps=eps_steps)
    memory = SequentialMemory(limit=memory_limit, window_length=WINDOW)
    return env, make_dqn_agent(env.action_space.n, policy=policy, memory=memory, **agent_options)
