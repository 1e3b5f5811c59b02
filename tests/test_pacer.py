"""The replay-ratio arithmetic of the driver, without Ray: distributed.pacer.Pacer."""

from __future__ import annotations

from config import Config
from distributed.pacer import Pacer


def _cfg(**kw) -> Config:
    base = dict(num_actors=2, envs_per_actor=4, total_env_steps=10_000, learning_starts=1_000, replay_capacity=5_000,
                samples_per_insert=8.0, batch_size=32, weight_sync_every=100, updates_per_call=10)
    return Config(**{**base, **kw})


def test_no_update_before_learning_starts_then_one_batch_per_four_steps() -> None:
    pacer = Pacer(_cfg())
    pacer.explorer_ran(999)
    assert pacer.updates_allowed() == 0 and pacer.issue_learner_call() == 0
    pacer.explorer_ran(1 + 400)  # 400 steps past learning_starts at 8 samples per insert, 32 per batch
    assert pacer.updates_allowed() == 100
    assert [pacer.issue_learner_call() for _ in range(11)] == [10] * 10 + [0]  # never more than allowed
    pacer.learner_called(asked=10, updates=10)
    assert pacer.updates_done == 10 and pacer.updates_issued == 100


def test_a_call_cut_short_gives_its_missing_updates_back() -> None:
    pacer = Pacer(_cfg())
    pacer.explorer_ran(1_040)  # 10 updates allowed
    assert pacer.issue_learner_call() == 10
    pacer.learner_called(asked=10, updates=3)  # the replay was lost mid-call
    assert (pacer.updates_done, pacer.updates_issued) == (3, 3)
    assert pacer.issue_learner_call() == 7


def test_explorer_runs_are_whole_emulator_steps_and_stop_at_the_budget() -> None:
    pacer = Pacer(_cfg(weight_sync_every=102, total_env_steps=1_050))
    assert pacer.issue_explorer_run() == 104  # rounded up to 4 emulators' worth
    pacer.env_steps_issued = 1_000
    assert pacer.issue_explorer_run() == 52  # the 50 left, rounded up
    assert not pacer.actor_may_run()
    pacer.explorer_lost(52)  # a failed run's steps are issued again
    assert pacer.actor_may_run() and pacer.env_steps_issued == 1_000


def test_explorers_run_ahead_of_the_learner_by_a_bounded_slack() -> None:
    cfg = _cfg(total_env_steps=100_000)
    pacer = Pacer(cfg)
    slack = 2 * cfg.num_actors * cfg.weight_sync_every + 2 * cfg.updates_per_call * cfg.batch_size / 8
    pacer.env_steps_issued = int(cfg.learning_starts + slack) - 1
    assert pacer.actor_may_run()
    pacer.env_steps_issued += 1
    assert not pacer.actor_may_run()  # waits for the learner
    pacer.learner_called(asked=10, updates=10)  # 10 updates cover 40 more agent steps
    assert pacer.actor_may_run()


def test_an_emptied_replay_pauses_learning_until_it_is_refilled() -> None:
    pacer = Pacer(_cfg(), env_steps=5_000, updates_done=500)
    pacer.refill()
    assert pacer.updates_allowed() == 500  # nothing more until learning_starts new transitions
    pacer.explorer_ran(1_000 + 40)
    assert pacer.updates_allowed() == 510


def test_a_learner_restarted_from_an_older_checkpoint_resumes_its_counters() -> None:
    pacer = Pacer(_cfg(), env_steps=5_000, updates_done=500)
    pacer.refill()
    pacer.learner_restarted(200)
    assert (pacer.updates_done, pacer.updates_issued, pacer.refill_from) == (200, 200, (5_000, 200))


def test_a_restarted_learner_does_not_redo_its_lost_updates_back_to_back() -> None:
    """300 updates were lost with the learner (done since its checkpoint): the ratio goes on from
    the restored step, so the backlog the learner may issue is what it was before the loss (it
    used to be 300 more, done at once on a replay that had not changed)."""
    pacer = Pacer(_cfg(), env_steps=1_000, updates_done=0)
    pacer.explorer_ran(2_000)  # 500 updates allowed
    for _ in range(46):
        pacer.learner_called(asked=pacer.issue_learner_call(), updates=10)
    assert (pacer.updates_done, pacer.updates_allowed()) == (460, 500)
    assert pacer.learner_restarted(160) == 300
    assert (pacer.updates_done, pacer.updates_issued, pacer.updates_allowed()) == (160, 160, 200)
    pacer.explorer_ran(40)
    assert pacer.updates_allowed() == 210


def test_a_resume_with_the_saved_replay_goes_on_from_the_checkpoints_baseline() -> None:
    """A refill and a learner restart moved the baseline before the checkpoint; a pacer restored at
    the checkpoint's counters with that baseline (the saved replay came back) allows what the
    first would have, and holds the explorers as it would (from zero it allowed 755 more updates
    at once: the refill's skipped ones and the restart's lost ones)."""
    cfg = _cfg(total_env_steps=100_000)
    first = Pacer(cfg)
    first.explorer_ran(3_000)
    first.learner_called(asked=first.issue_learner_call(), updates=10)
    first.refill()
    first.explorer_ran(1_000 + 200)
    first.learner_called(asked=first.issue_learner_call(), updates=10)
    first.learner_restarted(5)
    resumed = Pacer(cfg, env_steps=first.env_steps, updates_done=first.updates_done)
    assert resumed.updates_allowed() - first.updates_allowed() == 755
    resumed.replay_restored(first.refill_from)
    assert resumed.updates_allowed() == first.updates_allowed() == 45
    assert resumed.actor_may_run() == first.actor_may_run()
    resumed.explorer_ran(80)
    assert resumed.updates_allowed() == 65
