"""The keras-rl side of the project: its Atari processor and ``DQNAgent`` assembly.

Used by ``train.py`` (training), ``play.py`` (playing) and the benchmarks' baseline. Importing
this module is safe anywhere; :func:`make_dqn_agent` imports ``rl.agents`` and so switches
the calling process to graph mode (see ``kerasrl_compat``).
"""

from __future__ import annotations

from typing import Any

import numpy as np

import kerasrl_compat
from learner.network import build_q_network

kerasrl_compat.prepare_rl()
from rl.core import Processor  # noqa: E402


class AtariProcessor(Processor):
    """keras-rl's Atari example processor, minus the work our env already does.

    Frames arrive as 84x84 uint8 (``actors.atari``) and training envs already clip rewards,
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
    fast_state_batch: bool = True,
) -> Any:
    """A compiled keras-rl ``DQNAgent`` on the project's Q-network, as ``dqn_atari.py`` builds it."""
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
    )
    agent.compile(kerasrl_compat.graph_mode_adam(learning_rate), metrics=["mae"])
    return agent
