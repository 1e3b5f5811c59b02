"""n-step returns and initial priorities, computed by the explorer that played the steps (Ape-X).

Why at the explorer: it already has the rewards in order and the Q-values of every state it
acted on, so the replay stores finished targets and the actor's own |TD error| as the first
priority, and the learner never has to walk a stream.

Entries follow the replay's keras-rl layout (``replay.memory``): entry ``j`` holds the state at
which action ``j`` was chosen, its 1-step reward and whether that step ended the episode; after
a terminal step comes one extra entry holding the terminal observation. For entry ``j``::

    G_j = sum_{k < m} gamma^k r_{j+k}     m = n, or fewer when the episode ends (done) or the
                                              stream is cut (a step limit) within n steps
    target_j = G_j + (1 - done_j) gamma^m max_a Q(s_{j+m}, a)

``s_{j+m}`` is the stacked state at entry ``j + m``; the replay rebuilds it from its frames.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class NStep(NamedTuple):
    returns: np.ndarray  # float32 [L]: G_j
    horizons: np.ndarray  # uint8 [L]: m_j >= 1 (the bootstrap state is entry j + m_j)
    dones: np.ndarray  # bool [L]: the episode ended within the horizon: no bootstrap
    priorities: np.ndarray  # float32 [L]: |target_j - Q(s_j, a_j)| from the actor's network
    complete: int  # entries 0 .. complete-1 are final; the rest wait for steps not yet played


def nstep_targets(
    rewards: np.ndarray,
    terminals: np.ndarray,
    q_taken: np.ndarray,
    q_max: np.ndarray,
    n: int,
    gamma: float,
    cut: bool = False,
    is_obs: np.ndarray | None = None,
) -> NStep:
    """n-step targets of a stream's buffered entries ``0 .. L-1``.

    ``q_taken[j]`` = Q(s_j, a_j) and ``q_max[j]`` = max_a Q(s_j, a) as the explorer computed
    them; ``q_max`` has ``L + 1`` values, the last for the state after the buffer (the state the
    stream is in now). Normally an entry whose n steps have not all been played yet is not
    complete: the caller keeps it for the next push. ``cut=True`` (the stream ends here, cut by
    a step limit; entry ``L-1`` is then the final observation and ``q_max[L-1]`` its value):
    horizons shrink to reach at most entry ``L-1`` and every entry is complete. ``is_obs`` marks
    terminal-observation entries: never transitions, so never waiting, and priority 0.
    """
    rewards = np.asarray(rewards, np.float64)
    terminals = np.asarray(terminals, bool)
    size = len(rewards)
    end = size - 1 if cut else size  # the last entry a horizon may reach
    j = np.arange(size)
    returns = np.zeros(size)
    horizons = np.zeros(size, np.int64)
    dones = np.zeros(size, bool)
    alive = np.ones(size, bool)
    for k in range(n):
        idx = j + k
        step = alive & (idx < end)
        at = np.minimum(idx, size - 1)
        returns[step] += gamma**k * rewards[at][step]
        horizons[step] = k + 1
        ended = step & terminals[at]
        dones |= ended
        alive = step & ~ended
    obs = np.zeros(size, bool) if is_obs is None else np.asarray(is_obs, bool)
    ready = dones | (horizons == n) | obs
    if cut:
        ready[:] = True
    horizons = np.maximum(horizons, 1)  # an entry with no step left (the final observation) is never sampled
    q_max = np.asarray(q_max, np.float64)
    boot = q_max[np.minimum(j + horizons, len(q_max) - 1)]
    target = returns + np.where(dones, 0.0, gamma**horizons * boot)
    priorities = np.where(obs, 0.0, np.abs(target - np.asarray(q_taken, np.float64)))
    complete = size if ready.all() else int(np.argmin(ready))
    return NStep(returns.astype(np.float32), horizons.astype(np.uint8), dones,
                 priorities.astype(np.float32), complete)
