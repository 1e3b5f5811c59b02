"""Evaluations during a run: when they start, and what their results become.

Every --eval-every agent steps the evaluator plays --eval-episodes games with the newest
weights, beside the training; one at a time, so a slow evaluation delays the next rather than
piling up. Each result goes to evaluations.csv and TensorBoard (through the run log), a new
best network to RUN_DIR/best-policy.h5, and the pictures (the first game's GIF, the learning
curve) through :class:`distributed.views.RunViews`. A failed evaluation never ends the training.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from config import Config
from core.policy_file import save_policy
from distributed import first_line
from distributed.disk import Saved
from distributed.runlog import RunLog, best_evaluation
from distributed.views import RunViews


class Evaluations:
    """Schedules the evaluator's games and records their results."""

    def __init__(self, cfg: Config, evaluator: Any, log: RunLog, export_model: Any, run_dir: Path,
                 next_eval: int, saved: Saved | None = None, best: float | None = None) -> None:
        self.cfg, self.evaluator, self.log = cfg, evaluator, log
        self.export_model, self.run_dir = export_model, run_dir
        self.next_eval = next_eval
        self.saved = saved if saved is not None else Saved(run_dir)  # a failed write is said, not raised
        # best-policy.h5's score, even if newer than the checkpoint (the caller reads it before a resume's trim)
        self.best = best_evaluation(run_dir) if best is None else best
        self.future: Any = None  # (future, weights version, weights, env steps, learner steps)
        self.views = (RunViews(run_dir, evaluator, log, f"{cfg.game}, {run_dir.name}", self.saved) if evaluator
                      else None)

    def poll(self, weights: Any, env_steps: int, learner_steps: int) -> None:
        """Collect a finished evaluation; start the next one when its agent step has come."""
        import ray

        cfg = self.cfg
        if self.future is not None and ray.wait([self.future[0]], timeout=0)[0]:
            self._done()
        due = self.next_eval <= env_steps < cfg.total_env_steps  # the final one comes after the loop
        if self.future is None and cfg.eval_every and due:
            self.start(weights, env_steps, learner_steps)
            self.next_eval = (env_steps // cfg.eval_every + 1) * cfg.eval_every
        if self.views:
            self.views.poll()

    def start(self, weights: Any, env_steps: int, learner_steps: int) -> None:
        """Evaluate the weights behind the ``weights`` future (the learner's newest)."""
        import ray

        try:
            version, values = ray.get(weights)
        except ray.exceptions.RayActorError:
            return  # the learner died: the driver restarts it; evaluate next time
        future = self.evaluator.evaluate.remote(values, self.cfg.eval_episodes, f"step {env_steps:,}")
        self.future = (future, version, values, env_steps, learner_steps)

    def _done(self) -> None:
        """Log an evaluation; a new best network also goes to RUN_DIR/best-policy.h5."""
        import ray

        future, version, weights, env_steps, learner_steps = self.future
        self.future = None
        try:
            result = ray.get(future)
        except ray.exceptions.RayError as exc:  # a failed evaluation must not end the training
            why = first_line(exc)
            print(f"an evaluation failed ({why}); the next one starts at the next --eval-every", flush=True)
            return
        self.log.evaluation(env_steps, learner_steps, version, result)
        best = result["mean"] > self.best
        if best:
            self.best = result["mean"]
            self.export_model.set_weights(weights)
            path = self.run_dir / "best-policy.h5"
            if self.saved.save_or_say(lambda: save_policy(self.export_model, path), path.name):
                self.saved.wrote(path.name, f"evaluation mean {result['mean']:.2f}, learner step {learner_steps:,}")
        self.views.evaluated(env_steps, result, best)

    def final(self, weights: Any, env_steps: int, learner_steps: int, stop: Any) -> None:
        """At the end of a finished run: evaluate the final network (unless that was just done).
        A stop (Ctrl-C) skips it. An evaluator that Ray is still restarting (after a crash) fails the
        call at once: the final evaluation is tried again for up to two minutes."""
        import time

        import ray

        if not self.cfg.eval_every or stop:
            return
        self._wait(stop)  # an evaluation in flight
        version = ray.get(weights)[0]
        deadline = time.monotonic() + 120
        while not stop and self.log.last_eval_version != version and time.monotonic() < deadline:
            print(f"final evaluation: {self.cfg.eval_episodes} games (Ctrl-C skips it)...", flush=True)
            self.start(weights, env_steps, learner_steps)
            self._wait(stop)
            if self.log.last_eval_version != version:
                time.sleep(2)  # the evaluator is coming back

    def _wait(self, stop: Any) -> None:
        """Wait for the evaluation in flight, if any, and log it (a stop leaves it)."""
        import ray

        while self.future is not None and not stop:
            if ray.wait([self.future[0]], timeout=0.5)[0]:
                self._done()

    def finish(self, env_steps: int) -> None:
        """At the end of the run, stopped or not: the learning curve with every game."""
        if self.views:
            self.views.finish(env_steps)
