"""n-step returns at the explorer (actors/nstep.py) against a brute-force walk over the episodes."""

from __future__ import annotations

import numpy as np
import pytest

from actors.nstep import nstep_targets

GAMMA = 0.9


def _stream(rng: np.random.Generator, steps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Entries in the replay's keras-rl layout: after each terminal step, a terminal-observation
    entry (reward 0, not terminal). Returns rewards, terminals, is_obs."""
    rewards, terminals, is_obs = [], [], []
    while len(rewards) < steps:
        r = float(rng.choice([0.0, 0.0, 1.0, 4.0]))
        t = bool(rng.random() < 0.15)
        rewards.append(r)
        terminals.append(t)
        is_obs.append(False)
        if t:
            rewards.append(0.0)
            terminals.append(False)
            is_obs.append(True)
    return np.array(rewards), np.array(terminals), np.array(is_obs)


def _brute(rewards, terminals, is_obs, q_max, j, n, end):
    """Walk forward from entry j: (G, m, done), or None when the n steps are not all played yet."""
    g, m = 0.0, 0
    for k in range(n):
        if j + k >= end:
            return None
        g += GAMMA**k * rewards[j + k]
        m = k + 1
        if terminals[j + k]:
            return g, m, True
    return g, m, False


@pytest.mark.parametrize("n", [1, 3, 5])
def test_returns_horizons_and_dones_match_a_brute_force_walk(n: int) -> None:
    rng = np.random.default_rng(n)
    rewards, terminals, is_obs = _stream(rng, 300)
    size = len(rewards)
    q_taken = rng.normal(size=size)
    q_max = rng.normal(size=size + 1)
    out = nstep_targets(rewards, terminals, q_taken, q_max, n, GAMMA, is_obs=is_obs)
    assert (out.priorities[is_obs] == 0).all()
    checked = 0
    for j in range(size):
        if is_obs[j]:
            continue  # never a transition; its values are unused
        ref = _brute(rewards, terminals, is_obs, q_max, j, n, size)
        if ref is None:
            assert j >= out.complete, f"entry {j} lacks steps but was called complete"
            continue
        g, m, done = ref
        assert out.returns[j] == pytest.approx(g, rel=1e-6)
        assert out.horizons[j] == m and out.dones[j] == done
        boot = 0.0 if done else GAMMA**m * q_max[j + m]
        assert out.priorities[j] == pytest.approx(abs(g + boot - q_taken[j]), rel=1e-5, abs=1e-5)
        checked += 1
    assert checked > 200
    # exactly the newest entries without all their steps wait: never more than n - 1 plus what follows them
    assert size - out.complete <= n - 1 + 1


def test_entries_of_a_finished_episode_never_wait() -> None:
    # a whole episode ending in a terminal, then its terminal observation: all complete for any n
    rewards = np.array([1.0, 0.0, 1.0, 0.0])
    terminals = np.array([False, False, True, False])
    is_obs = np.array([False, False, False, True])
    assert nstep_targets(rewards, terminals, np.zeros(4), np.zeros(5), 5, GAMMA).complete == 3, \
        "unmarked, the terminal observation looks like a step of a new episode"
    out = nstep_targets(rewards, terminals, np.zeros(4), np.zeros(5), 5, GAMMA, is_obs=is_obs)
    assert out.complete == 4 and out.priorities[3] == 0
    assert out.dones[:3].all()
    assert out.returns[0] == pytest.approx(1 + GAMMA**2)
    assert list(out.horizons[:3]) == [3, 2, 1]


def test_a_running_episode_keeps_its_newest_entries_for_the_next_push() -> None:
    rewards = np.ones(6)
    terminals = np.zeros(6, bool)
    out = nstep_targets(rewards, terminals, np.zeros(6), np.full(7, 2.0), 3, GAMMA)
    assert out.complete == 4  # entries 4 and 5 need steps 6 and 7
    assert out.horizons[3] == 3  # entry 3 bootstraps from the state after the buffer
    assert out.priorities[3] == pytest.approx(1 + GAMMA + GAMMA**2 + GAMMA**3 * 2.0)


def test_a_cut_stream_bootstraps_from_its_final_observation() -> None:
    # a step limit cut the episode: entries 0..3 are steps, entry 4 holds the final observation
    rewards = np.array([1.0, 1.0, 1.0, 1.0, 0.0])
    terminals = np.zeros(5, bool)
    q_max = np.array([0.0, 0.0, 0.0, 0.0, 10.0, 99.0])  # q_max[4]: the final observation's value
    out = nstep_targets(rewards, terminals, np.zeros(5), q_max, 3, GAMMA, cut=True)
    assert out.complete == 5
    assert list(out.horizons[:4]) == [3, 3, 2, 1]
    assert not out.dones.any()
    assert out.priorities[2] == pytest.approx(1 + GAMMA + GAMMA**2 * 10.0)
    assert out.priorities[3] == pytest.approx(1 + GAMMA * 10.0)
