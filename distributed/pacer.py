"""The replay ratio as arithmetic: how many learner updates and agent steps may be issued now.

DQN learns from ``--samples-per-insert`` sampled transitions per transition played, after
``--learning-starts`` transitions. The driver keeps that ratio over the whole fleet: it asks
the pacer how many updates the learner may do next, and whether an explorer may play on
or must wait for the learner. Plain Python, no Ray, so it is tested on its own
(tests/test_pacer.py).
"""

from __future__ import annotations

from config import Config


class Pacer:
    """Counts agent steps and learner updates, issued and done, and keeps them at the replay ratio.

    ``refill_from`` is ``(env steps, learner steps)`` when the replay last started empty (a fresh
    run, a resume without a saved replay, a restarted replay actor): learning pauses until
    --learning-starts new transitions are in, then goes on at --samples-per-insert. Refills and
    learner restarts move it, so it is part of the checkpoint: a resume with the saved replay
    passes it back, else the allowed updates would be counted from zero and the learner would
    work through the difference in one burst on a replay that is not changing.
    """

    def __init__(self, cfg: Config, env_steps: int = 0, updates_done: int = 0) -> None:
        self.cfg = cfg
        self.env_steps = self.env_steps_issued = env_steps
        self.updates_done = self.updates_issued = updates_done
        self.refill_from = (0, 0)

    def updates_allowed(self) -> int:
        """Learner steps the replay ratio allows so far."""
        env_base, updates_base = self.refill_from
        over = self.env_steps - env_base - self.cfg.learning_starts
        if over < 0:
            return updates_base
        return updates_base + int(over * self.cfg.samples_per_insert / self.cfg.batch_size)

    def actor_may_run(self) -> bool:
        """Explorers may run ahead of the learner by a bounded slack, then wait for it."""
        cfg = self.cfg
        if self.env_steps_issued >= cfg.total_env_steps:
            return False
        env_base, updates_base = self.refill_from
        learned = (self.updates_done - updates_base) * cfg.batch_size / cfg.samples_per_insert
        covered = env_base + cfg.learning_starts + learned
        learner_call = cfg.updates_per_call * cfg.batch_size / cfg.samples_per_insert  # env steps per call
        slack = 2 * cfg.num_actors * cfg.weight_sync_every + 2 * learner_call
        return self.env_steps_issued < covered + slack

    def issue_explorer_run(self) -> int:
        """Agent steps for the next explorer run: --weight-sync-every (less at the end of the
        budget), rounded up to a whole number of steps of all its emulators."""
        steps = min(self.cfg.weight_sync_every, self.cfg.total_env_steps - self.env_steps_issued)
        k = self.cfg.envs_per_actor
        steps = max(k, -(-steps // k) * k)
        self.env_steps_issued += steps
        return steps

    def explorer_ran(self, steps: int) -> None:
        """An explorer run finished with ``steps`` agent steps played."""
        self.env_steps += steps

    def explorer_lost(self, issued: int) -> None:
        """An explorer run failed: its ``issued`` steps go to another run."""
        self.env_steps_issued -= issued

    def issue_learner_call(self) -> int:
        """Updates for the next learner call (0: the ratio allows none now)."""
        n = min(self.cfg.updates_per_call, self.updates_allowed() - self.updates_issued)
        if n <= 0:
            return 0
        self.updates_issued += n
        return n

    def learner_called(self, asked: int, updates: int) -> None:
        """A learner call asked for ``asked`` updates did ``updates`` (fewer when the replay was lost)."""
        self.updates_issued -= asked - updates
        self.updates_done += updates

    def replay_restored(self, refill_from: tuple[int, int]) -> None:
        """A resume loaded the replay saved with the checkpoint: go on from the checkpoint's
        baseline (``refill_from`` as it was saved), as if the run had never stopped."""
        self.refill_from = (int(refill_from[0]), int(refill_from[1]))

    def refill(self) -> None:
        """The replay starts empty now: learn again after --learning-starts new transitions."""
        self.refill_from = (self.env_steps, self.updates_done)

    def learner_restarted(self, updates_done: int) -> int:
        """The learner came back at ``updates_done`` (its last checkpoint, or 0); return the updates
        lost. The replay ratio goes on from here: the lost updates are not redone back to back on
        the replay as it is now, they are gone (the learner's step counter says so), so the ratio's
        baseline moves back by as many."""
        lost = self.updates_done - updates_done
        self.updates_done = self.updates_issued = updates_done
        self.refill_from = (self.refill_from[0], self.refill_from[1] - lost)
        return lost
