"""The learner's update: n-step double-DQN targets, importance weights, priorities back to the replay."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from config import Config
from replay.memory import PackedBatch

B = 8


def _batch(rng: np.random.Generator, n: int) -> PackedBatch:
    return PackedBatch(
        frames=rng.integers(0, 255, (B, 4 + n, 84, 84), dtype=np.uint8),
        action=rng.integers(0, 4, B),
        reward=rng.normal(size=B).astype(np.float32),
        terminal=rng.random(B) < 0.3,
        indices=np.arange(B),
        horizon=rng.integers(1, n + 1, B).astype(np.int32),
        weight=rng.uniform(0.2, 1.0, B).astype(np.float32),
        keys=np.arange(B),
    )


@pytest.mark.parametrize("double", [True, False])
def test_update_uses_n_step_targets_and_importance_weights(double: bool) -> None:
    from learner.learner import Learner

    cfg = Config(batch_size=B, double_dqn=double, gamma=0.9, huber_delta=1.0, dueling=True,
                 learner_precision="float32")
    learner = Learner(cfg, n_actions=4)
    rng = np.random.default_rng(1)
    batch = _batch(rng, 3)
    s0 = batch.frames[:, :4].astype(np.float32) / 255
    s1 = np.stack([f[m:m + 4] for f, m in zip(batch.frames, batch.horizon, strict=True)]).astype(np.float32) / 255
    q0 = learner.online.predict(s0, verbose=0)
    q1_online = learner.online.predict(s1, verbose=0)
    # make the target network differ from the online one so that double DQN is visible: noise,
    # and an advantage bias (last bias, column 1 + a) of +1 on an action the online network
    # does not pick for row 0 (random initial weights alone do not guarantee a difference)
    weights = [w + rng.normal(0, 0.01, w.shape).astype(np.float32) for w in learner.online.get_weights()]
    weights[-1][1 + (q1_online[0].argmax() + 1) % 4] += 1.0
    learner.target.set_weights(weights)
    q1_target = learner.target.predict(s1, verbose=0)
    assert (q1_online.argmax(1) != q1_target.argmax(1)).any(), "the test needs rows where double DQN differs"
    best = q1_online.argmax(1) if double else q1_target.argmax(1)
    y = batch.reward + 0.9 ** batch.horizon * (1 - batch.terminal) * q1_target[np.arange(B), best]
    td_ref = y - q0[np.arange(B), batch.action]
    huber = np.where(np.abs(td_ref) <= 1, 0.5 * td_ref**2, np.abs(td_ref) - 0.5)
    loss, _, td = learner.update(batch)
    np.testing.assert_allclose(td, td_ref, rtol=1e-4, atol=1e-4)
    assert loss == pytest.approx(float(np.mean(batch.weight * huber)), rel=1e-4)


def test_prioritized_learner_sends_new_priorities_to_the_replay(ray_session) -> None:
    """After train(), the sampled transitions' priorities in the replay are their |td|."""
    from distributed.topology import replay_actor
    from learner.learner import Learner

    ray = ray_session
    rng = np.random.default_rng(2)
    replay = replay_actor(400, 1, seed=0, n_step=3, priority_alpha=1.0)  # as launch.py makes it
    n = 300
    terminals = rng.random(n) < 0.02
    ray.get(replay.add_chunks.remote([{
        "stream": 0, "frames": rng.integers(0, 255, (n, 84, 84), dtype=np.uint8),
        "actions": rng.integers(0, 4, n).astype(np.uint8), "rewards": rng.random(n).astype(np.float32),
        "terminals": terminals, "priorities": np.full(n, 1000.0, np.float32), "new_segment": True}]))
    cfg = Config(batch_size=16, n_step=3, prioritized=True, priority_alpha=1.0)
    learner = Learner(cfg, n_actions=4, replay=replay)
    try:
        before = ray.get(replay.priorities.remote(np.arange(n)))
        result = learner.train(8)
        assert result["updates"] == 8
        ray.get(replay.size.remote())  # calls from one caller run in order: the updates have landed
        after = ray.get(replay.priorities.remote(np.arange(n)))
    finally:
        ray.kill(replay)
    # transitions started at 1000; the ones the learner trained on now hold |td| (small: an untrained net)
    changed = after != before
    assert 16 <= changed.sum() <= 8 * 16
    assert (before[changed] > 999).all() and (after[changed] < 100).all()


def test_a_restored_learner_continues_exactly() -> None:
    """get_state/set_state carry both networks and Adam's step and moments: the next update of a
    restored learner equals the original's, weight for weight."""
    from learner.learner import Learner

    cfg = Config(batch_size=B, target_update=3)
    rng = np.random.default_rng(3)
    batches = [_batch(rng, 3) for _ in range(4)]
    first = Learner(cfg, n_actions=4)
    for b in batches[:2]:
        first.update(b)
    second = Learner(Config(batch_size=B, target_update=3, seed=99), n_actions=4)
    second.set_state(first.get_state())
    assert second.steps == 2
    for b in batches[2:]:
        first.update(b)
        second.update(b)
    for a, b in zip(first.get_state()["optimizer"], second.get_state()["optimizer"], strict=True):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first.online.get_weights() + first.target.get_weights(),
                    second.online.get_weights() + second.target.get_weights(), strict=True):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_with_an_older_adam_layout_restores_the_networks_and_says_so() -> None:
    from learner.learner import Learner

    learner = Learner(Config(batch_size=B), n_actions=4)
    state = learner.get_state()
    # the unfused tf_keras Adam saved [iterations, m0, v0, m1, v1, ...]: same arrays, another order
    moments = state["optimizer"][1:]
    half = len(moments) // 2
    state["optimizer"] = [state["optimizer"][0]] + [x for pair in zip(moments[:half], moments[half:],
                                                                        strict=True) for x in pair]
    state["online"] = [w + 1 for w in state["online"]]
    other = Learner(Config(batch_size=B), n_actions=4)
    assert other.set_state(state) is False
    for a, b in zip(other.online.get_weights(), state["online"], strict=True):
        np.testing.assert_array_equal(a, b)
    assert other.set_state(learner.get_state()) is True


def test_bfloat16_learner_tracks_the_float32_update() -> None:
    """From the same state and batch, a bf16 learner's TD errors and weight steps are close to the
    float32 learner's, and its weights stay float32 (the exports do not change)."""
    from learner.learner import Learner

    exact = Learner(Config(batch_size=B, learner_precision="float32"), n_actions=4)
    fast = Learner(Config(batch_size=B, learner_precision="bfloat16"), n_actions=4)
    assert (exact.arithmetic(), fast.arithmetic()) == ("float32", "bfloat16")
    fast.set_state(exact.get_state())
    before = exact.online.get_weights()
    batch = _batch(np.random.default_rng(4), 3)
    _, _, td32 = exact.update(batch)
    _, _, td16 = fast.update(batch)
    assert td16.dtype == np.float32 and not np.array_equal(td16, td32)
    np.testing.assert_allclose(td16, td32, atol=0.03 * np.abs(td32).max())
    step32 = np.concatenate([(a - w).ravel() for a, w in zip(exact.online.get_weights(), before, strict=True)])
    step16 = np.concatenate([(a - w).ravel() for a, w in zip(fast.online.get_weights(), before, strict=True)])
    assert all(w.dtype == np.float32 for w in fast.online.get_weights())
    assert np.corrcoef(step32, step16)[0, 1] > 0.9


def test_adam_reset_zeroes_the_moments_and_step_at_each_target_sync_and_off_changes_nothing() -> None:
    """--adam-reset true: Adam's step count and moments are zero right after each sync, nonzero
    before it. Off (the default): the sync leaves Adam alone, so the updates are those of the learner
    without the flag, weight for weight, past several syncs."""
    from learner.learner import Learner

    rng = np.random.default_rng(4)
    batches = [_batch(rng, 3) for _ in range(7)]
    reset = Learner(Config(batch_size=B, target_update=3, adam_reset=True), n_actions=4)
    start = reset.online.get_weights()  # one process initialises each network afresh: start all three alike
    off = Learner(Config(batch_size=B, target_update=3, adam_reset=False), n_actions=4, initial_weights=start)
    default = Learner(Config(batch_size=B, target_update=3), n_actions=4, initial_weights=start)
    assert default.cfg.adam_reset is False
    for step, b in enumerate(batches, 1):
        for learner in (reset, off, default):
            learner.update(b)
        iterations, *moments = reset.optimizer.get_weights()
        if step % 3 == 0:
            assert iterations == 0 and not any(m.any() for m in moments), f"Adam not reset at sync {step}"
        else:
            assert iterations == step % 3 and all(m.any() for m in moments), f"Adam empty at step {step}"
        off_iterations, *off_moments = off.optimizer.get_weights()
        assert off_iterations == step and all(m.any() for m in off_moments)
        same = all(np.array_equal(a, c) for a, c in zip(reset.online.get_weights(), off.online.get_weights(),
                                                        strict=True))
        assert same == (step <= 3), f"reset and off differ only after the first sync (step {step})"
    assert reset.target_syncs == off.target_syncs == 2
    for a, c in zip(off.get_state()["optimizer"] + off.online.get_weights() + off.target.get_weights(),
                    default.get_state()["optimizer"] + default.online.get_weights() + default.target.get_weights(),
                    strict=True):
        np.testing.assert_array_equal(a, c)


def test_learning_rate_end_anneals_the_rate_the_compiled_step_uses_and_a_restore_goes_on_from_it() -> None:
    """--learning-rate-end: the rate falls linearly over the run's learner steps (here 10) and then
    holds; the update at step 6 is, weight for weight, a constant-rate learner's at that step's rate
    from the same state; a restored learner with a longer run anneals on from the rate it reached;
    unset, the rate never moves."""
    from learner.learner import Learner

    cfg = Config(batch_size=B, samples_per_insert=1.0, total_env_steps=100, learning_starts=20,
                 learning_rate=1e-3, learning_rate_end=1e-4)
    assert cfg.total_learner_steps == 10
    rng = np.random.default_rng(5)
    batches = [_batch(rng, 3) for _ in range(13)]
    annealed = Learner(cfg, n_actions=4)
    for step, b in enumerate(batches[:6]):
        annealed.update(b)
        expected = 1e-3 + step / 10 * (1e-4 - 1e-3)  # the rate of the step just taken
        assert float(annealed.optimizer.learning_rate.numpy()) == pytest.approx(expected, rel=1e-6)
    rate6 = 1e-3 + 6 / 10 * (1e-4 - 1e-3)
    assert annealed.learning_rate == pytest.approx(rate6)
    state = annealed.get_state()
    assert state["learning_rate"] == pytest.approx(rate6)
    constant = Learner(Config(batch_size=B, learning_rate=rate6, learning_rate_end=None,
                              learning_rate_anneal_steps=None), n_actions=4)
    longer = Learner(dataclasses.replace(cfg, total_env_steps=180), n_actions=4)  # 20 learner steps
    for other in (constant, longer):
        other.set_state(state)
    for learner in (annealed, constant):
        learner.update(batches[6])
    for a, c in zip(annealed.online.get_weights(), constant.online.get_weights(), strict=True):
        np.testing.assert_array_equal(a, c)
    for b in batches[7:]:
        annealed.update(b)
    assert annealed.learning_rate == pytest.approx(1e-4) and annealed.steps == 13
    assert longer.learning_rate == pytest.approx(rate6)  # goes on from it: 14 steps to the end
    for b in batches[6:13]:
        longer.update(b)
    assert longer.learning_rate == pytest.approx(rate6 + 7 / 14 * (1e-4 - rate6))
    for b in batches[:3]:
        constant.update(b)
    assert float(constant.optimizer.learning_rate.numpy()) == pytest.approx(rate6, rel=1e-6)
    assert constant.learning_rate == rate6 and constant.get_state()["learning_rate"] == rate6


def test_learning_rate_anneal_steps_holds_the_end_rate_the_compiled_step_uses_after_them() -> None:
    """--learning-rate-anneal-steps: the rate reaches --learning-rate-end after those agent steps'
    learner steps (here 10 of the run's 122) and the compiled step keeps using it from there on;
    beta keeps to the run's steps."""
    from learner.learner import Learner

    cfg = Config(batch_size=B, samples_per_insert=1.0, total_env_steps=1_000, learning_starts=20,
                 learning_rate=1e-3, learning_rate_end=1e-4, learning_rate_anneal_steps=20 + 10 * B)
    learner = Learner(cfg, n_actions=4)
    rng = np.random.default_rng(7)
    for _ in range(5):
        learner.update(_batch(rng, 3))
    assert learner.learning_rate == pytest.approx(1e-3 + 0.5 * (1e-4 - 1e-3))
    for _ in range(7):
        learner.update(_batch(rng, 3))
    assert float(learner.optimizer.learning_rate.numpy()) == pytest.approx(1e-4, rel=1e-6)  # the 12th step's
    assert learner.learning_rate == pytest.approx(1e-4) and learner.beta == pytest.approx(cfg.beta(12))
    assert cfg.beta(12) < 0.5


def test_priority_beta_anneal_steps_brings_the_sampled_beta_to_one_and_a_restore_holds_it() -> None:
    """--priority-beta-anneal-steps: the beta the learner asks the replay for reaches 1 after those
    agent steps' learner steps (here 10 of the run's 122), holds there and survives a restore."""
    from learner.learner import Learner

    cfg = Config(batch_size=B, samples_per_insert=1.0, total_env_steps=1_000, learning_starts=20,
                 priority_beta=0.4, priority_beta_anneal_steps=20 + 10 * B, learning_rate_end=None,
                 learning_rate_anneal_steps=None)
    learner = Learner(cfg, n_actions=4)
    rng = np.random.default_rng(8)
    for _ in range(5):
        learner.update(_batch(rng, 3))
    assert learner.beta == pytest.approx(0.7) and learner.learning_rate == cfg.learning_rate
    for _ in range(7):
        learner.update(_batch(rng, 3))
    assert learner.beta == 1.0 and learner.get_state()["beta"] == 1.0
    unset = Learner(dataclasses.replace(cfg, priority_beta_anneal_steps=None), n_actions=4)
    unset.set_state(learner.get_state())
    assert unset.beta == 1.0  # a restore goes on from the beta reached, not back to the run's schedule
    fresh = Learner(dataclasses.replace(cfg, priority_beta_anneal_steps=None), n_actions=4)
    fresh.steps = 12
    assert fresh.beta == pytest.approx(cfg.priority_beta + 0.6 * 12 / cfg.total_learner_steps)


def test_max_minutes_anneals_the_rate_over_the_wall_clock_and_a_restore_goes_on_from_it() -> None:
    """With --max-minutes the rate's anneal ends at whichever comes first, the steps or the minutes:
    the clock the driver passes moves the rate, not beta (a stop leaves the defaults' schedule as it
    was measured); a restore with a larger budget goes on from the rate reached."""
    from learner.learner import Learner

    cfg = Config(batch_size=B, samples_per_insert=8.0, total_env_steps=100_020, learning_starts=20,
                 learning_rate=1e-3, learning_rate_end=0.0, learning_rate_anneal_steps=None,
                 max_minutes=1.0)  # 100,000 learner steps
    learner = Learner(cfg, n_actions=4)
    learner.update(_batch(np.random.default_rng(6), 3))
    assert learner.learning_rate == pytest.approx(1e-3 * (1 - 1 / 100_000))  # by steps: the clock is at 0
    learner.wall_seconds = 45.0
    assert learner.learning_rate == pytest.approx(0.25e-3) and learner.beta == pytest.approx(cfg.beta(1))
    longer = Learner(dataclasses.replace(cfg, max_minutes=2.0), n_actions=4)
    longer.set_state(learner.get_state(), wall_seconds=45.0)  # 75 s to go of 120
    assert longer.learning_rate == pytest.approx(0.25e-3)
    longer.wall_seconds = 82.5
    assert longer.learning_rate == pytest.approx(0.25e-3 * 0.5)
    longer.wall_seconds = 200.0
    assert longer.learning_rate == 0.0 and longer.beta == pytest.approx(cfg.beta(1)) and cfg.beta(1) < 0.41
