"""The driver: one loop that keeps explorers playing and the learner learning, at the replay ratio.

It issues explorer runs (--weight-sync-every agent steps each, with the newest weights) and
learner calls (--updates-per-call updates each) as the :class:`~distributed.pacer.Pacer`
allows, waits for whichever finishes first, and handles the result: counts, logs, evaluations,
exports (policy.h5) and checkpoints. A lost actor is restarted by Ray; the driver re-issues
its work (explorer), refills the replay (replay), or restores the last checkpoint (learner).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

from config import Config
from core.policy_file import SnapshotWriter, save_policy
from distributed import first_line, placement, topology
from distributed.checkpoint import (
    CHECKPOINT,
    REPLAY_FILE,
    REPLAY_PENDING,
    CheckpointError,
    commit_replay,
    load_checkpoint,
    replay_tag,
    save_checkpoint,
    saved_replay,
)
from distributed.disk import Saved
from distributed.evaluation import Evaluations
from distributed.pacer import Pacer
from distributed.runlog import RunLog, best_evaluation, trim_past
from distributed.views import drop_games_past

_IMPORTED = time.monotonic()


def process_age() -> float:
    """Seconds since this process started (interpreter, imports, Ray start-up included): the origin
    of --snapshot-minutes. From /proc (Linux); elsewhere, since this module was imported."""
    try:
        with open("/proc/self/stat") as f:
            started_ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22, starttime
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return max(0.0, uptime - started_ticks / os.sysconf("SC_CLK_TCK"))
    except (OSError, ValueError, IndexError):
        return time.monotonic() - _IMPORTED


class Stop(Exception):
    """Ends the run cleanly (final export and checkpoint) after SIGINT or SIGTERM."""


class RunFailed(Exception):
    """Ends the run after an error it cannot go on from (final export and checkpoint, exit 1)."""


class StopFlag:
    """Set by the caller (launch.py's SIGINT/SIGTERM handler), read by the loop at least twice a
    second. Only noting it is safe inside a signal handler: raising inside Ray's C++ wait would
    surface as a SystemError."""

    def __init__(self) -> None:
        self.reason: str | None = None

    def set(self, reason: str) -> None:
        if self.reason is None:  # the first signal names the stop
            self.reason = reason

    def __bool__(self) -> bool:
        return self.reason is not None


class Driver:
    """Builds the actors, keeps the replay ratio and runs the loop until the step budget is spent."""

    def __init__(self, cfg: Config, run_dir: Path, resume: tuple[dict, dict] | None = None,
                 stop: StopFlag | None = None) -> None:
        import ray

        from core.atari import make_env
        from core.network import build_q_network

        self.cfg, self.run_dir, self.ray = cfg, run_dir, ray
        self.stop = stop if stop is not None else StopFlag()
        probe = make_env(cfg.game, training=False)
        self.n_actions = int(probe.action_space.n)
        probe.close()
        self.export_model = build_q_network(self.n_actions, dueling=cfg.dueling)
        learner_state, state = resume if resume else (None, {})
        self.generation = state.get("generation", -1) + 1  # new emulator seeds on every resume
        # --init-weights, read here: the learner may run on a node that does not have the file
        initial = self._load(cfg.init_weights) if cfg.init_weights and resume is None else None
        self.actors = topology.build(cfg, self.n_actions, self.generation, initial)
        self.replay, self.learner = self.actors.replay, self.actors.learner
        self.explorers, self.evaluator = self.actors.explorers, self.actors.evaluator
        self.learner_threads = self.actors.learner_threads
        self.placement = placement.ExplorerWatch(cfg, self.explorers, self.actors.learner_plan.explorer_cpus)
        self.pacer = Pacer(cfg, env_steps=state.get("env_steps", 0),
                           updates_done=int(learner_state["steps"]) if learner_state else 0)
        # best-policy.h5's score, even from an evaluation past the checkpoint (read before the trim drops its
        # row) or one a resume before this trimmed (the checkpoint keeps it)
        best = max(best_evaluation(run_dir), state.get("best_eval") or -math.inf)
        if resume:
            self.trim_past_checkpoint(state["env_steps"])
        # wall-clock columns and --snapshot-minutes count from this process's start; a resumed run's from
        # that moved back by the wall clock its checkpoint had run (the stretch past it is played again)
        ran = float(state.get("wall_seconds", 0.0))
        self.origin = self.clock_origin() - ran
        # --max-minutes as a time.monotonic() deadline: nothing new is issued past it
        self.deadline = self.origin + cfg.max_seconds
        self.out_of_time = False
        self.log = RunLog(cfg, run_dir, games=state.get("games", 0), resumed_at=state["env_steps"] if resume else None,
                          updates=int(learner_state["steps"]) if learner_state else 0, start=self.origin)
        self.saved = Saved(run_dir, int(learner_state["steps"]) if learner_state else None)
        self.evaluations = Evaluations(cfg, self.evaluator, self.log, self.export_model, run_dir,
                                       next_eval=state.get("next_eval", cfg.eval_every), saved=self.saved, best=best)
        # --snapshot-minutes as time.monotonic() deadlines, the next first: one float compare per loop;
        # a resumed run's points before its checkpoint were written then
        self.points = [(self.origin + 60 * m, m) for m in cfg.snapshot_points if 60 * m > ran]
        self.snapshots = SnapshotWriter(run_dir, start=self.origin) if cfg.snapshot_every or self.points else None
        self.next_snapshot = state.get("next_snapshot", cfg.snapshot_every)
        self._issued: dict[Any, int] = {}  # explorer run futures -> the steps they were asked for
        self.explorer_failures = state.get("explorer_failures", 0)
        self.replay_failures = state.get("replay_failures", 0)
        self.learner_failures = state.get("learner_failures", 0)
        self.replay_instance: str | None = None
        self.last_export_step = self.last_checkpoint_step = self.updates_done
        self.learner_metrics: dict = {}
        self.epsilons: dict[int, list[float]] = {}
        self.last_export_time: float | None = None
        self.version_seen = 0  # the newest weights version handed out: a restored learner goes past it
        self.learner_asked = 0  # updates asked of the learner call in flight
        if learner_state is not None:
            self.restore_learner(learner_state)
            self.restore_replay(state)
        self.learner_instance = self.ray.get(self.learner.__ray_call__.remote(lambda learner: learner.instance))
        self.weights = self.learner.get_weights.remote()

    @property
    def env_steps(self) -> int:
        return self.pacer.env_steps

    @property
    def updates_done(self) -> int:
        return self.pacer.updates_done

    # --- the loop ---------------------------------------------------------------------------
    def run(self) -> None:
        """Play and learn until --total-env-steps or --max-minutes, whichever comes first; raise
        :class:`Stop` when the stop flag is set."""
        ray, cfg = self.ray, self.cfg
        running: dict[Any, int] = {}  # actor futures -> actor index
        idle = set(range(cfg.num_actors))
        learner_future = None
        last_print = time.monotonic()
        while True:
            if self.stop:
                raise Stop(self.stop.reason)
            self.out_of_time = time.monotonic() >= self.deadline  # what is in flight still lands
            for i in sorted(idle):
                if not self.out_of_time and self.pacer.actor_may_run():
                    steps = self.pacer.issue_explorer_run()
                    ref = self.explorers[i].run.remote(self.weights, steps, self.env_steps)
                    self._issued[ref] = steps
                    running[ref] = i
                    idle.discard(i)
            if learner_future is None and not self.out_of_time:
                n = self.learner_asked = self.pacer.issue_learner_call()
                learner_future = self.learner.train.remote(n, self.replay_instance, self.wall()) if n else None
            if not running and learner_future is None:
                self.placement.poll(now_or_never=True)  # every explorer has played: say so if one waited
                break
            pending = list(running) + ([learner_future] if learner_future is not None else [])
            ready, _ = ray.wait(pending, num_returns=1, timeout=0.5)
            for ref in ready:
                if ref is learner_future:
                    learner_future = None
                    self._learner_done(ref)
                else:
                    i = running.pop(ref)
                    idle.add(i)
                    self._explorer_done(i, ref)
            self.evaluations.poll(self.weights, self.env_steps, self.updates_done)
            self.placement.poll()
            now = time.monotonic()
            if self.points and now >= self.points[0][0]:
                self.timed_snapshots(now)
            if now - last_print >= cfg.log_every:
                last_print = now
                self.print_progress(self.replay_size())
        # let the last pushes land; an explorer that is restarting has nothing left to flush
        ray.wait([e.flush.remote() for e in self.explorers], num_returns=len(self.explorers), timeout=30)
        if self.out_of_time:
            print(f"--max-minutes {cfg.max_minutes:g} reached: {self.env_steps:,} of {cfg.total_env_steps:,} agent "
                  "steps played", flush=True)
            self.timed_snapshots(time.monotonic())  # a point at the budget's end

    def final_evaluation(self) -> None:
        self.evaluations.final(self.weights, self.env_steps, self.updates_done, self.stop)

    def _learner_done(self, ref: Any) -> None:
        ray, cfg = self.ray, self.cfg
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError:
            self.learner_lost()
            return
        except ray.exceptions.RayTaskError as exc:  # raised inside the learner: learning cannot go on
            raise RunFailed(f"the learner stopped: {first_line(exc.cause or exc)}") from None
        self.version_seen = max(self.version_seen, result["weights_version"])
        self.pacer.learner_called(result["asked"], result["updates"])  # a lost replay cuts a call short
        self.learner_metrics = result
        self.weights = self.learner.get_weights.remote()
        if result["replay_lost"]:
            self.replay_size()  # notices the new replay instance and starts the refill
        if self.updates_done - self.last_export_step >= cfg.export_every:
            self.saved.save_or_say(self.export, "policy.h5")
        if self.updates_done - self.last_checkpoint_step >= cfg.checkpoint_every:
            self.saved.save_or_say(self.checkpoint, CHECKPOINT)

    def _explorer_done(self, i: int, ref: Any) -> None:
        ray = self.ray
        steps = self._issued.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            if not isinstance(exc.cause, ray.exceptions.RayActorError):
                raise
            # its weights came from a learner that died meanwhile: the explorer is fine; play again
            self.pacer.explorer_lost(steps)
            return
        except ray.exceptions.RayActorError as exc:
            # Ray restarts the explorer (max_restarts=-1); its lost steps are re-issued.
            self.explorer_failures += 1
            self.pacer.explorer_lost(steps)
            self.placement.watch(i, self.explorers[i])  # its node may be gone, with no other to take it
            print(f"explorer {i} failed ({type(exc).__name__}); it restarts and plays on "
                  f"({self.explorer_failures} failure(s) so far)", flush=True)
            return
        self.pacer.explorer_ran(result["steps"])
        self.epsilons[i] = result["epsilons"]
        self.log.games_done(self.env_steps, result["games"])
        if self.cfg.snapshot_every and self.env_steps >= self.next_snapshot and self._snapshot():
            self.next_snapshot = (self.env_steps // self.cfg.snapshot_every + 1) * self.cfg.snapshot_every

    def clock_origin(self) -> float:
        """The ``time.monotonic()`` at which this process started."""
        return time.monotonic() - process_age()

    def wall(self) -> float:
        """The run's wall clock in seconds (a resumed run's counts on from its checkpoint's)."""
        return time.monotonic() - self.origin

    def timed_snapshots(self, now: float) -> None:
        """One copy of the newest network for each --snapshot-minutes point passed (several when the
        start-up passed more than one), with the counts and wall clock of this moment."""
        wall = now - self.origin
        while self.points and now >= self.points[0][0]:
            if not self._snapshot(wall, self.points[0][1]):
                return  # the learner is restarting: the next loop tries again
            self.points.pop(0)

    def _snapshot(self, wall: float | None = None, point: float | None = None) -> bool:
        """Write the newest weights to snapshots/ (False when the learner died: no weights to write)."""
        try:
            version, weights = self.ray.get(self.weights)
        except self.ray.exceptions.RayActorError:
            return False  # _learner_done restarts it
        self.export_model.set_weights(weights)
        self.saved.save_or_say(lambda: self.snapshots.write(self.export_model, self.env_steps, self.updates_done,
                                                            wall, point), "snapshots/")
        return True

    # --- failures ---------------------------------------------------------------------------
    def replay_size(self) -> int:
        """The replay's size; notices a restarted (empty) replay actor and starts the refill."""
        # a restarting replay answers within seconds; give it a minute
        instance, size = self.when_back(self.replay.status.remote, seconds=60.0,
                                        errors=(self.ray.exceptions.ActorUnavailableError,
                                                self.ray.exceptions.RayActorError))
        if self.replay_instance is not None and instance != self.replay_instance:
            self.replay_emptied()
        self.replay_instance = instance
        return size

    def replay_emptied(self) -> None:
        """The replay actor died and came back empty: refill before learning again."""
        self.replay_failures += 1
        self.pacer.refill()
        print(f"the replay memory was lost ({self.replay_failures} time(s)); it restarts empty and learning "
              f"resumes after {self.cfg.learning_starts:,} new transitions", flush=True)

    def learner_lost(self) -> None:
        """The learner died: Ray restarts it; continue from the last checkpoint's networks (or, with
        none yet, from the networks it starts with: scratch or --init-weights)."""
        instance = self.when_back(lambda: self.learner.__ray_call__.remote(lambda learner: learner.instance))
        if instance == self.learner_instance:  # it was unreachable for a moment, not restarted
            self.pacer.learner_called(self.learner_asked, 0)
            return
        self.learner_instance = instance
        self.learner_failures += 1
        try:
            learner_state, _ = load_checkpoint(self.run_dir)
        except CheckpointError:
            learner_state = None
        if learner_state is not None:
            self.restore_learner(learner_state, self.version_seen + 1)
        else:
            self.ray.get(self.learner.versions_from.remote(self.version_seen + 1))
        lost = self.pacer.learner_restarted(int(learner_state["steps"]) if learner_state is not None else 0)
        self.weights = self.learner.get_weights.remote()
        start = "--init-weights" if self.cfg.init_weights else "scratch"
        print(f"the learner failed ({self.learner_failures} time(s)); restarted from "
              f"{'the last checkpoint' if learner_state else start + ' (no checkpoint yet)'} at learner step "
              f"{self.updates_done:,} ({lost:,} learner steps lost)", flush=True)

    def when_back(self, call: Any, seconds: float = 300.0, errors: tuple[type, ...] | None = None) -> Any:
        """``ray.get(call())``, retried on ``errors`` (default: ActorUnavailableError) for up to
        ``seconds`` while Ray restarts the actor (a learner builds its networks first: calls to it
        fail meanwhile, and a weights ref asked for then would fail for good)."""
        errors = errors or (self.ray.exceptions.ActorUnavailableError,)
        deadline = time.monotonic() + seconds
        while True:
            try:
                return self.ray.get(call())
            except errors:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    # --- state on disk ----------------------------------------------------------------------
    def restore_learner(self, learner_state: dict, min_version: int = 0) -> None:
        if not self.ray.get(self.learner.set_state.remote(learner_state, min_version, self.wall())):
            print("the checkpoint's Adam state is from an older version of this program: the networks and "
                  "counters are restored, Adam's moments start afresh", flush=True)

    def trim_past_checkpoint(self, env_steps: int) -> None:
        """On resume: the crashed run's rows and files past the checkpoint's agent step go (this run
        plays that stretch again, so the curves would show it twice); TensorBoard's go in RunLog."""
        dropped = trim_past(self.run_dir, env_steps)
        if games := drop_games_past(self.run_dir, env_steps):
            dropped["games/"] = games
        if dropped:
            print(f"dropped what was written past the checkpoint's agent step {env_steps:,}: "
                  + ", ".join(f"{name} {n:,}" for name, n in dropped.items()), flush=True)

    def restore_replay(self, state: dict) -> None:
        """On resume: reload the replay saved with this checkpoint, and the replay ratio's baseline
        with it; else (none, another checkpoint's, unreadable) refill before learning."""
        if not self.cfg.save_replay:
            self.pacer.refill()
            return
        path, why = saved_replay(self.run_dir, state.get("replay_tag"))
        if path is not None:
            try:
                size = self.ray.get(self.replay.load.remote(str(path)))
            except self.ray.exceptions.RayTaskError as exc:
                path, why = None, f"{REPLAY_FILE} could not be loaded ({first_line(exc.cause or exc)})"
        if path is None:
            self.pacer.refill()
            print(f"{why}: the replay refills; learning resumes after {self.cfg.learning_starts:,} new transitions",
                  flush=True)
            return
        self.pacer.replay_restored(state.get("refill_from", (0, 0)))
        print(f"replay memory restored: {size:,} transitions, saved with the checkpoint of learner step "
              f"{state['replay_tag']['learner_step']:,}", flush=True)

    def driver_state(self) -> dict:
        return {
            "env_steps": self.env_steps,
            "updates_done": self.updates_done,
            "explorer_failures": self.explorer_failures,
            "replay_failures": self.replay_failures,
            "learner_failures": self.learner_failures,
            "games": self.log.games,
            "generation": self.generation,
            "next_eval": self.evaluations.next_eval,
            "next_snapshot": self.next_snapshot,
            "n_actions": self.n_actions,
            "game": self.cfg.game,
            "refill_from": list(self.pacer.refill_from),
            "wall_seconds": round(self.wall(), 1),
            "best_eval": self.evaluations.best if math.isfinite(self.evaluations.best) else None,
        }

    def checkpoint(self) -> Path:
        """Write RUN_DIR/checkpoint.npz (and with --save-replay RUN_DIR/replay.npz), atomically: the
        replay first under a pending name, tagged with this checkpoint, renamed once the checkpoint
        is written, so that a crash between the writes never pairs a checkpoint with another's replay."""
        self.last_checkpoint_step = self.updates_done  # also when it fails: the next try is a period away
        learner_state = self.ray.get(self.learner.get_state.remote())
        steps = learner_state["steps"]
        driver_state = dict(self.driver_state(), updates_done=steps)  # a call may be in flight
        if self.cfg.save_replay:
            driver_state["replay_tag"] = replay_tag(steps, self.env_steps)
            self.ray.get(self.replay.save.remote(str(self.run_dir / REPLAY_PENDING), driver_state["replay_tag"]))
        path = save_checkpoint(self.run_dir, learner_state, driver_state)
        self.saved.wrote(CHECKPOINT, f"learner step {steps:,}")
        if self.cfg.save_replay:
            commit_replay(self.run_dir)
            self.saved.wrote(REPLAY_FILE, f"learner step {steps:,}")
        return path

    def _load(self, path: str) -> list:
        """The arrays of a policy.h5 that preflight checked fits this network."""
        self.export_model.load_weights(path)
        return self.export_model.get_weights()

    def export(self) -> Path:
        """Write RUN_DIR/policy.h5 from the learner's newest weights, atomically."""
        version, weights = self.ray.get(self.learner.get_weights.remote())
        self.export_model.set_weights(weights)
        self.last_export_step = self.updates_done  # also when it fails: the next try is a period away
        path = save_policy(self.export_model, self.run_dir / "policy.h5")
        self.saved.wrote("policy.h5", f"learner step {self.updates_done:,}")
        self.last_export_time = time.monotonic()
        return path

    def print_progress(self, replay_size: int) -> None:
        eps = [e for v in self.epsilons.values() for e in v]
        mean_eps = sum(eps) / len(eps) if eps else float("nan")
        self.log.progress(self.env_steps, self.updates_done, replay_size, self.learner_metrics, mean_eps,
                          self.last_export_time, {"explorer": self.explorer_failures,
                                                  "replay": self.replay_failures, "learner": self.learner_failures})

    def close(self) -> None:
        self.log.close()
        self.actors.kill()
