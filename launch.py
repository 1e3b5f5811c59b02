"""Distributed DQN on Ray: explorer actors, a replay-memory actor and a learner, wired by one driver.

    python launch.py                                   # a fresh local Ray on this machine
    python launch.py --num-actors 64 --address auto    # a running Ray cluster

Data flows one way: explorers -> replay -> learner; only weights flow back (through Ray's object
store). The driver (this process) keeps the replay ratio, shows progress, logs, and writes
``policy.h5`` in keras-rl's format into the run directory.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import signal
import sys
import time
import uuid
from collections import deque
from pathlib import Path
from typing import Any

import kerasrl_compat
from config import Config, apply_preset, check_ranges, check_run_dir, given_flags, hms, parse, preset_table
from core.atomic import write_atomically
from learner.checkpoint import CHECKPOINT

EPILOG = """run directory (--run-dir):
  policy.h5        newest Q-network, keras-rl DQNAgent format (every --export-every learner steps, and at the end)
  checkpoint.npz   networks, optimizer and counters for --resume (every --checkpoint-every learner steps, at the end)
  replay.npz       the replay memory, with --save-replay
  config.json      every setting of this run
  metrics.jsonl    one record per progress line (the same scalars as TensorBoard)
  episodes.csv     raw score of every finished game: env step, stream, epsilon, score
  evaluations.csv  every evaluation (--eval-every): env and learner step, mean/min/max raw score
  best-policy.h5   the network with the best evaluation so far (keras-rl DQNAgent format)
  snapshots/       with --snapshot-every: policy-<agent step>.h5 copies, listed in snapshots.csv
  tb/              TensorBoard: tensorboard --logdir RUN_DIR/tb

presets (--preset; flags given beside it win):
{presets}

examples:
  python launch.py --total-env-steps 3000 --learning-starts 500 --replay-capacity 5000 --run-dir runs/try
  python play.py --weights runs/try/policy.h5
"""


REPLAY_FILE = "replay.npz"


class Stop(Exception):
    """Ends the run cleanly (final export and checkpoint) after SIGINT or SIGTERM."""


_stop_requested: list[str] = []


def _on_signal(signum: int, frame: Any) -> None:
    # Only note it: raising inside Ray's C++ wait would surface as a SystemError. The loop
    # checks at least twice a second.
    _stop_requested.append(signal.Signals(signum).name)




class RunLog:
    """Progress lines, TensorBoard scalars, metrics.jsonl and episodes.csv of one run."""

    def __init__(self, cfg: Config, run_dir: Path, games: int = 0) -> None:
        tf = kerasrl_compat.load_tensorflow()

        self.cfg = cfg
        self.tf = tf
        self.writer = tf.summary.create_file_writer(str(run_dir / "tb"))
        self.metrics = open(run_dir / "metrics.jsonl", "a")
        new_csv = not (run_dir / "episodes.csv").exists()
        self.episodes_file = open(run_dir / "episodes.csv", "a", newline="")
        self.episodes = csv.writer(self.episodes_file)
        if new_csv:
            self.episodes.writerow(["env_step", "stream", "epsilon", "score", "wall_seconds"])
        new_eval = not (run_dir / "evaluations.csv").exists()
        self.evals_file = open(run_dir / "evaluations.csv", "a", newline="")
        self.evals = csv.writer(self.evals_file)
        if new_eval:
            self.evals.writerow(["env_step", "learner_step", "wall_seconds", "mean", "min", "max", "episodes",
                                 "truncated", "weights_version"])
        self.last_eval: float | None = None
        self.last_eval_version: int | None = None
        self.scores: deque[float] = deque(maxlen=100)
        self.start = time.monotonic()
        self.last = (self.start, 0, 0)
        self.games = games

    def games_done(self, env_steps: int, games: list[dict]) -> None:
        wall = round(time.monotonic() - self.start, 1)
        with self.writer.as_default():
            for g in games:
                self.games += 1
                self.scores.append(g["score"])
                self.episodes.writerow([env_steps, g["stream"], f"{g['eps']:.5f}", g["score"], wall])
                self.tf.summary.scalar("episodic_return", g["score"], step=env_steps)
        self.episodes_file.flush()

    def evaluation(self, env_steps: int, learner_steps: int, version: int, result: dict) -> None:
        """One finished evaluation: evaluations.csv, TensorBoard and the progress line."""
        self.last_eval = result["mean"]
        self.last_eval_version = version
        self.evals.writerow([env_steps, learner_steps, round(time.monotonic() - self.start, 1),
                             round(result["mean"], 3), result["min"], result["max"], len(result["scores"]),
                             result.get("truncated", 0), version])
        self.evals_file.flush()
        with self.writer.as_default():
            self.tf.summary.scalar("eval/mean_score", result["mean"], step=env_steps)
            self.tf.summary.scalar("eval/max_score", result["max"], step=env_steps)
        self.writer.flush()

    def progress(self, env_steps: int, learner_steps: int, replay_size: int, learner: dict,
                 epsilon: float, last_export: float | None, restarts: dict[str, int] | None = None) -> None:
        now = time.monotonic()
        t, e, u = self.last
        dt = max(now - t, 1e-9)
        env_rate, upd_rate = (env_steps - e) / dt, (learner_steps - u) / dt
        self.last = (now, env_steps, learner_steps)
        mean = sum(self.scores) / len(self.scores) if self.scores else float("nan")
        record = {
            "wall_seconds": round(now - self.start, 1),
            "env_steps": env_steps,
            "learner_steps": learner_steps,
            "env_steps_per_s": round(env_rate, 1),
            "learner_steps_per_s": round(upd_rate, 2),
            "replay_size": replay_size,
            "games": self.games,
            "mean_score_100": mean if self.scores else None,
            "td_loss": learner.get("loss"),
            "mean_q": learner.get("mean_q"),
            "epsilon": epsilon,
            "target_syncs": learner.get("target_syncs", 0),
            "eval_mean_score": self.last_eval,
            **{f"{role}_restarts": n for role, n in (restarts or {}).items()},
        }
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        with self.writer.as_default():
            for key in ("env_steps_per_s", "learner_steps_per_s", "replay_size", "epsilon", "td_loss", "mean_q"):
                if record[key] is not None and not (isinstance(record[key], float) and math.isnan(record[key])):
                    self.tf.summary.scalar(key, record[key], step=env_steps)
        self.writer.flush()
        eta = (self.cfg.total_env_steps - env_steps) / env_rate if env_rate > 0 else math.inf
        export = f"{hms(now - last_export)} ago" if last_export else "none yet"
        loss = learner.get("loss", float("nan"))
        print(
            f"env {env_steps:>10,}/{self.cfg.total_env_steps:,} ({100 * env_steps / self.cfg.total_env_steps:4.1f}%)"
            f" | {env_rate:6.0f} env/s | {upd_rate:5.1f} upd/s | replay {replay_size:,} | "
            f"score(last {len(self.scores)}) {mean:6.2f}"
            + (f" | eval {self.last_eval:6.2f}" if self.last_eval is not None else "")
            + f" | loss {loss:.4f} | export {export} | eta {hms(eta)}"
            + "".join(f" | {role} restarts {n}" for role, n in (restarts or {}).items() if n),
            flush=True,
        )

    def close(self) -> None:
        self.evals_file.close()
        self.metrics.close()
        self.episodes_file.close()
        self.writer.close()


def best_evaluation(run_dir: Path) -> float:
    """The best mean score in RUN_DIR/evaluations.csv (-inf when none): the score of best-policy.h5."""
    try:
        with open(run_dir / "evaluations.csv", newline="") as f:
            return max((float(row["mean"]) for row in csv.DictReader(f)), default=-math.inf)
    except (OSError, KeyError, ValueError):
        return -math.inf


class Driver:
    """Builds the actors, keeps the replay ratio and runs the loop until the step budget is spent."""

    def __init__(self, cfg: Config, run_dir: Path, resume: tuple[dict, dict] | None = None) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from actors.evaluator import Evaluator
        from actors.explorer import Explorer
        from core.atari import make_env
        from core.network import build_q_network
        from core.policy_file import SnapshotWriter
        from learner.learner import Learner
        from replay.server import ReplayServer

        self.cfg, self.run_dir, self.ray = cfg, run_dir, ray
        probe = make_env(cfg.game, training=False)
        self.n_actions = int(probe.action_space.n)
        probe.close()
        self.export_model = build_q_network(self.n_actions, dueling=cfg.dueling)
        # The replay and the learner stay on the driver's node (the head of a cluster) unless the
        # learner asks for a GPU; explorers go wherever CPUs (or --explorer-resource) are free.
        node = ray.get_runtime_context().get_node_id()
        here = NodeAffinitySchedulingStrategy(node, soft=True)
        # The replay needs no CPU, so it always fits here: pin it hard (Ray 2.60 spreads 0-CPU
        # actors with a soft affinity over a cluster's nodes, where losing a worker would lose it).
        pinned = NodeAffinitySchedulingStrategy(node, soft=False)
        learner_state, state = resume if resume else (None, {})
        self.generation = state.get("generation", -1) + 1  # new emulator seeds on every resume
        # Explorers and the learner find the replay by name, so they can be restarted from their
        # constructor arguments alone (an actor handle argument would pin it in the object store).
        replay_name = f"replay-{uuid.uuid4().hex[:12]}"
        self.replay = ray.remote(ReplayServer).options(
            name=replay_name, num_cpus=0, scheduling_strategy=pinned, max_restarts=-1  # restarts empty: refill
        ).remote(cfg.replay_capacity, cfg.num_streams, seed=cfg.seed + 7919 * self.generation, n_step=cfg.n_step,
                 priority_alpha=cfg.priority_alpha if cfg.prioritized else None)
        explorer_cpus = cfg.explorer_cpus or self.explorer_cpus()
        self.learner_threads = cfg.learner_threads or self.spare_cpus(explorer_cpus)
        learner_options: dict[str, Any] = {
            "num_cpus": 1, "num_gpus": cfg.learner_gpus, "max_restarts": -1,
            "runtime_env": {"env_vars": {"TF_NUM_INTRAOP_THREADS": str(self.learner_threads)}},
        }
        if not cfg.learner_gpus:
            learner_options["scheduling_strategy"] = here
        self.learner = ray.remote(Learner).options(**learner_options).remote(cfg, self.n_actions, replay_name)
        explorer_options: dict[str, Any] = {
            "num_cpus": explorer_cpus,
            "max_restarts": -1,  # a crashed explorer (or its lost node) comes back and plays on
            "max_task_retries": 0,  # ...but the run() it was in is lost: the driver just starts another
            # one TensorFlow thread each: explorers scale by processes and leave cores to the learner
            "runtime_env": {"env_vars": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}},
        }
        if cfg.explorer_resource:
            explorer_options["resources"] = {cfg.explorer_resource: 1}
        explorer = ray.remote(Explorer).options(**explorer_options)
        self.explorers = [explorer.remote(cfg, i, replay_name, self.generation) for i in range(cfg.num_actors)]
        # The evaluator reserves no CPU: it plays a few games now and then, beside the others.
        self.evaluator = ray.remote(Evaluator).options(
            num_cpus=0, max_restarts=-1, scheduling_strategy=here, runtime_env=explorer_options["runtime_env"]
        ).remote(cfg.game, self.n_actions, dueling=cfg.dueling, epsilon=cfg.eval_epsilon,
                 max_steps=cfg.eval_max_steps, seed=cfg.seed + 104_729 * (self.generation + 1),
                 priority=cfg.explorer_priority
                 ) if cfg.eval_every else None
        self.eval_future: Any = None  # (future, weights version, weights, env steps, learner steps)
        self.next_eval = state.get("next_eval", cfg.eval_every)
        self.best_eval = best_evaluation(run_dir)  # best-policy.h5's score, even if newer than the checkpoint
        self.snapshots = SnapshotWriter(run_dir) if cfg.snapshot_every else None
        self.next_snapshot = state.get("next_snapshot", cfg.snapshot_every)
        self._issued: dict[Any, int] = {}  # explorer run futures -> the steps they were asked for
        self.env_steps = state.get("env_steps", 0)
        self.env_steps_issued = self.env_steps
        self.updates_done = self.updates_issued = int(learner_state["steps"]) if learner_state else 0
        self.explorer_failures = state.get("explorer_failures", 0)
        self.replay_failures = state.get("replay_failures", 0)
        self.learner_failures = state.get("learner_failures", 0)
        self.replay_instance: str | None = None
        self.last_export_step = self.last_checkpoint_step = self.updates_done
        self.learner_metrics: dict = {}
        self.epsilons: dict[int, list[float]] = {}
        self.last_export_time: float | None = None
        self.log = RunLog(cfg, run_dir, games=state.get("games", 0))
        self.refill_from = (0, 0)  # (env steps, learner steps) when the replay last started empty
        if learner_state is not None:
            self.restore_learner(learner_state)
            self.restore_replay()
        self.weights = self.learner.get_weights.remote()

    def spare_cpus(self, explorer_cpus: float) -> int:
        """The learner's TensorFlow threads by default: the CPUs the explorers (``explorer_cpus``
        each) leave free, at most one node's worth, at least 1. More threads than that compete with
        the explorers for cores, and the learner's thread barriers wait for preempted threads: on
        2 cores with 1 explorer, 1 thread gave 1.03x to 1.12x the updates of 2 end to end
        (docs/benchmarks.md)."""
        spare = self.ray.cluster_resources().get("CPU", 1.0) - self.cfg.num_actors * explorer_cpus
        largest = max((node["Resources"].get("CPU", 1.0) for node in self.ray.nodes() if node["Alive"]),
                      default=1.0)
        return int(max(1, min(spare, largest)))

    def explorer_cpus(self) -> float:
        """One CPU per explorer, or an even share of what Ray has beside the learner's CPU,
        so that every explorer is placed even when there are more explorers than cores."""
        total = self.ray.cluster_resources().get("CPU", 1.0)
        return min(1.0, max(0.01, (total - 1.0) / self.cfg.num_actors))

    # --- the replay ratio -------------------------------------------------------------------
    def updates_allowed(self) -> int:
        """Learner steps the replay ratio allows so far. After the replay starts empty (a fresh
        run, a resume without a saved replay, a restarted replay actor) learning pauses until
        --learning-starts new transitions are in, then goes on at --samples-per-insert."""
        env_base, updates_base = self.refill_from
        over = self.env_steps - env_base - self.cfg.learning_starts
        if over < 0:
            return updates_base
        return updates_base + int(over * self.cfg.samples_per_insert / self.cfg.batch_size)

    def replay_emptied(self) -> None:
        """The replay actor died and came back empty: refill before learning again."""
        self.replay_failures += 1
        self.refill_from = (self.env_steps, self.updates_done)
        print(f"the replay memory was lost ({self.replay_failures} time(s)); it restarts empty and learning "
              f"resumes after {self.cfg.learning_starts:,} new transitions", flush=True)

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

    # --- the loop ---------------------------------------------------------------------------
    def _start_actor(self, i: int) -> Any:
        steps = min(self.cfg.weight_sync_every, self.cfg.total_env_steps - self.env_steps_issued)
        k = self.cfg.envs_per_actor
        steps = max(k, -(-steps // k) * k)
        self.env_steps_issued += steps
        ref = self.explorers[i].run.remote(self.weights, steps, self.env_steps)
        self._issued[ref] = steps
        return ref

    def _start_learner(self) -> Any | None:
        n = min(self.cfg.updates_per_call, self.updates_allowed() - self.updates_issued)
        if n <= 0:
            return None
        self.updates_issued += n
        return self.learner.train.remote(n)

    def run(self) -> None:
        ray, cfg = self.ray, self.cfg
        running: dict[Any, int] = {}  # actor futures -> actor index
        idle = set(range(cfg.num_actors))
        learner_future = None
        last_print = time.monotonic()
        while True:
            if _stop_requested:
                raise Stop(_stop_requested[0])
            for i in sorted(idle):
                if self.actor_may_run():
                    running[self._start_actor(i)] = i
                    idle.discard(i)
            if learner_future is None:
                learner_future = self._start_learner()
            if not running and learner_future is None:
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
            self.poll_evaluation()
            now = time.monotonic()
            if now - last_print >= cfg.log_every:
                last_print = now
                self.print_progress(self.replay_size())
        # let the last pushes land; an explorer that is restarting has nothing left to flush
        ray.wait([e.flush.remote() for e in self.explorers], num_returns=len(self.explorers), timeout=30)

    def _learner_done(self, ref: Any) -> None:
        ray, cfg = self.ray, self.cfg
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError:
            self.learner_lost()
            return
        self.updates_issued -= result["asked"] - result["updates"]  # a lost replay cut the call short
        self.updates_done += result["updates"]
        self.learner_metrics = result
        self.weights = self.learner.get_weights.remote()
        if result["replay_lost"]:
            self.replay_size()  # notices the new replay instance and starts the refill
        if self.updates_done - self.last_export_step >= cfg.export_every:
            self.export()
        if self.updates_done - self.last_checkpoint_step >= cfg.checkpoint_every:
            self.checkpoint()

    def _explorer_done(self, i: int, ref: Any) -> None:
        ray = self.ray
        steps = self._issued.pop(ref)
        try:
            result = ray.get(ref)
        except ray.exceptions.RayActorError as exc:
            # Ray restarts the explorer (max_restarts=-1); its lost steps are re-issued.
            self.explorer_failures += 1
            self.env_steps_issued -= steps
            print(f"explorer {i} failed ({type(exc).__name__}); it restarts and plays on "
                  f"({self.explorer_failures} failure(s) so far)", flush=True)
            return
        self.env_steps += result["steps"]
        self.epsilons[i] = result["epsilons"]
        self.log.games_done(self.env_steps, result["games"])
        if self.snapshots is not None and self.env_steps >= self.next_snapshot:
            try:
                version, weights = ray.get(self.weights)
            except ray.exceptions.RayActorError:
                return  # the learner died: _learner_done restarts it; the snapshot comes next time
            self.export_model.set_weights(weights)
            self.snapshots.write(self.export_model, self.env_steps, self.updates_done)
            self.next_snapshot = (self.env_steps // self.cfg.snapshot_every + 1) * self.cfg.snapshot_every

    # --- evaluation -------------------------------------------------------------------------
    def poll_evaluation(self) -> None:
        """Collect a finished evaluation; start the next one when its agent step has come."""
        cfg = self.cfg
        if self.eval_future is not None and self.ray.wait([self.eval_future[0]], timeout=0)[0]:
            self._evaluation_done()
        due = self.next_eval <= self.env_steps < cfg.total_env_steps  # the final one comes after the loop
        if self.eval_future is None and cfg.eval_every and due:
            self.start_evaluation()
            self.next_eval = (self.env_steps // cfg.eval_every + 1) * cfg.eval_every

    def start_evaluation(self) -> None:
        try:
            version, weights = self.ray.get(self.weights)
        except self.ray.exceptions.RayActorError:
            return  # the learner died: _learner_done restarts it; evaluate next time
        future = self.evaluator.evaluate.remote(weights, self.cfg.eval_episodes)
        self.eval_future = (future, version, weights, self.env_steps, self.updates_done)

    def _evaluation_done(self) -> None:
        """Log an evaluation; a new best network also goes to RUN_DIR/best-policy.h5."""
        from core.policy_file import save_policy

        future, version, weights, env_steps, learner_steps = self.eval_future
        self.eval_future = None
        try:
            result = self.ray.get(future)
        except self.ray.exceptions.RayError as exc:  # a failed evaluation must not end the training
            why = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            print(f"an evaluation failed ({why}); the next one starts at the next --eval-every", flush=True)
            return
        self.log.evaluation(env_steps, learner_steps, version, result)
        if result["mean"] > self.best_eval:
            self.best_eval = result["mean"]
            self.export_model.set_weights(weights)
            save_policy(self.export_model, self.run_dir / "best-policy.h5")

    def final_evaluation(self) -> None:
        """At the end of a finished run: evaluate the final network (unless that was just done).
        Ctrl-C skips it."""
        if not self.cfg.eval_every or _stop_requested:
            return
        for final in (False, True):
            if final and self.log.last_eval_version != self.ray.get(self.weights)[0]:
                print(f"final evaluation: {self.cfg.eval_episodes} games (Ctrl-C skips it)...", flush=True)
                self.start_evaluation()
            while self.eval_future is not None:
                if _stop_requested:
                    return
                if self.ray.wait([self.eval_future[0]], timeout=0.5)[0]:
                    self._evaluation_done()

    def replay_size(self) -> int:
        """The replay's size; notices a restarted (empty) replay actor and starts the refill."""
        for attempt in range(600):  # a restarting replay answers within seconds; give it a minute
            try:
                instance, size = self.ray.get(self.replay.status.remote())
                break
            except (self.ray.exceptions.ActorUnavailableError, self.ray.exceptions.RayActorError):
                if attempt == 599:
                    raise
                time.sleep(0.1)
        if self.replay_instance is not None and instance != self.replay_instance:
            self.replay_emptied()
        self.replay_instance = instance
        return size

    def learner_lost(self) -> None:
        """The learner died: Ray restarts it; continue from the last checkpoint's networks."""
        from learner.checkpoint import CheckpointError, load_checkpoint

        self.learner_failures += 1
        try:
            learner_state, _ = load_checkpoint(self.run_dir)
        except CheckpointError:
            learner_state = None
        if learner_state is not None:
            self.restore_learner(learner_state)
            self.updates_done = self.updates_issued = int(learner_state["steps"])
        else:
            self.updates_done = self.updates_issued = 0
        self.refill_from = (self.refill_from[0], min(self.refill_from[1], self.updates_done))
        self.weights = self.learner.get_weights.remote()
        print(f"the learner failed ({self.learner_failures} time(s)); restarted from "
              f"{'the last checkpoint' if learner_state else 'scratch (no checkpoint yet)'} at learner step "
              f"{self.updates_done:,}", flush=True)

    def restore_learner(self, learner_state: dict) -> None:
        if not self.ray.get(self.learner.set_state.remote(learner_state)):
            print("the checkpoint's Adam state is from an older version of this program: the networks and "
                  "counters are restored, Adam's moments start afresh", flush=True)

    def driver_state(self) -> dict:
        return {
            "env_steps": self.env_steps,
            "updates_done": self.updates_done,
            "explorer_failures": self.explorer_failures,
            "replay_failures": self.replay_failures,
            "learner_failures": self.learner_failures,
            "games": self.log.games,
            "generation": self.generation,
            "next_eval": self.next_eval,
            "next_snapshot": self.next_snapshot,
            "n_actions": self.n_actions,
            "game": self.cfg.game,
        }

    def checkpoint(self) -> Path:
        """Write RUN_DIR/checkpoint.npz (and with --save-replay RUN_DIR/replay.npz), atomically."""
        from learner.checkpoint import save_checkpoint

        if self.cfg.save_replay:
            self.ray.get(self.replay.save.remote(str(self.run_dir / REPLAY_FILE)))
        learner_state = self.ray.get(self.learner.get_state.remote())
        driver_state = dict(self.driver_state(), updates_done=learner_state["steps"])  # a call may be in flight
        path = save_checkpoint(self.run_dir, learner_state, driver_state)
        self.last_checkpoint_step = self.updates_done
        return path

    def restore_replay(self) -> None:
        """On resume: reload the saved replay if there is one, else refill before learning."""
        saved = self.run_dir / REPLAY_FILE
        if self.cfg.save_replay and saved.exists():
            size = self.ray.get(self.replay.load.remote(str(saved)))
            print(f"replay memory restored: {size:,} transitions", flush=True)
        else:
            self.refill_from = (self.env_steps, self.updates_done)

    def print_progress(self, replay_size: int) -> None:
        eps = [e for v in self.epsilons.values() for e in v]
        mean_eps = sum(eps) / len(eps) if eps else float("nan")
        self.log.progress(self.env_steps, self.updates_done, replay_size, self.learner_metrics, mean_eps,
                          self.last_export_time, {"explorer": self.explorer_failures,
                                                  "replay": self.replay_failures, "learner": self.learner_failures})

    def export(self) -> Path:
        """Write RUN_DIR/policy.h5 from the learner's newest weights, atomically."""
        from core.policy_file import save_policy

        version, weights = self.ray.get(self.learner.get_weights.remote())
        self.export_model.set_weights(weights)
        path = save_policy(self.export_model, self.run_dir / "policy.h5")
        self.last_export_time = time.monotonic()
        self.last_export_step = self.updates_done
        return path

    def close(self) -> None:
        self.log.close()
        for handle in [*self.explorers, self.learner, self.replay, *([self.evaluator] if self.evaluator else [])]:
            self.ray.kill(handle)


#: The folder the driver imports the project from: with --address it travels to every node.
CODE_ROOT = Path(kerasrl_compat.__file__).resolve().parent
#: What stays behind (Ray also skips .git, .venv, __pycache__ and what .gitignore lists).
CODE_EXCLUDES = [".git", ".venv", "runs", "tests", "bench", "docs", "*.h5", "*.npz", "*.gif"]


def _job_runtime_env() -> dict[str, Any]:
    """The runtime env ``ray job submit`` gave this driver ({} when not run as a Ray job)."""
    return json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}


def cluster_runtime_env() -> dict[str, Any]:
    """Ray runtime environment for joining a cluster.

    The project's code goes to every node as Ray's ``working_dir``, so explorers on any node run
    exactly the driver's code, and a node needs only the pinned packages. A job started with
    ``ray job submit --working-dir`` already ships its code (and maybe env vars): those are kept,
    because Ray refuses a driver runtime env that redefines them.
    """
    job = _job_runtime_env()
    taken = job.get("env_vars") or {}
    env: dict[str, Any] = {"env_vars": {k: v for k, v in kerasrl_compat.PROCESS_ENV.items() if k not in taken}}
    if "working_dir" not in job:
        env.update(working_dir=str(CODE_ROOT), excludes=CODE_EXCLUDES)
    return env


def _check_cluster(cfg: Config) -> None:
    """Fail fast, in one line, when no Ray cluster answers at ``--address`` (ray.init would
    otherwise retry for a minute and end in a traceback, after the run directory was made)."""
    import socket

    import ray
    from ray._common.network_utils import parse_address
    from ray._private import services

    if "working_dir" in _job_runtime_env() and not Path(cfg.run_dir or "runs").is_absolute():
        raise LaunchError("a job sent with `ray job submit --working-dir` runs in a temporary folder: give an "
                          "absolute --run-dir (e.g. --run-dir /home/ubuntu/runs/breakout) to keep the results")
    if ray.is_initialized():
        return
    address = cfg.address
    hint = "start one with `ray up cluster.yaml` (see docs/cluster.md) or `ray start --head`, or leave out --address"
    target = address
    if address == "auto":
        try:
            target = services.get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise LaunchError(f"--address auto: no running Ray cluster found on this machine; {hint}") from None
    parsed = parse_address(target.removeprefix("ray://"))
    if parsed is None or not parsed[1].isdigit():
        raise LaunchError(f"--address {address}: expected auto or HOST:PORT of the head (port 6379 by default)")
    host, port = parsed
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        found = f" (found {target})" if target != address else ""
        why = exc.strerror or str(exc) or type(exc).__name__
        raise LaunchError(f"--address {address}{found}: no Ray cluster answers there ({why}); {hint}") from None
    if not target.startswith("ray://") and not _is_ray_head(host, int(port)):  # ray.init would hang on it
        raise LaunchError(f"--address {address}: {host}:{port} answers, but not as a Ray head (it does not answer "
                          f"Ray's GetClusterId call); give the head's address, port 6379 unless it "
                          f"was started with another --port, or leave out --address")


GCS_PROBE_SECONDS = 10.0


def _is_ray_head(host: str, port: int) -> bool:
    """Whether host:port serves Ray's GCS: its GetClusterId call (empty request) is answered. A web
    server or a database never answers it, and ray.init would wait on them for minutes. True
    without probing when Ray uses TLS, which a plain probe cannot speak."""
    import grpc

    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return True
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")
        try:
            call(b"", timeout=GCS_PROBE_SECONDS)
        except grpc.RpcError as exc:  # a GCS that refuses us (token authentication) is still Ray's
            return exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    return True


def _init_ray(cfg: Config) -> bool:
    """Start or join Ray as ``--address`` says; False when Ray was already up (tests, notebooks)."""
    import ray

    if ray.is_initialized():
        return False
    env = {"env_vars": dict(kerasrl_compat.PROCESS_ENV)}
    if cfg.address is None:
        cpus = cfg.num_cpus or os.cpu_count() or 2
        ray.init(
            address="local",
            num_cpus=max(cpus, cfg.num_actors + 1),
            include_dashboard=False,
            runtime_env=env,
            logging_level="error",
            log_to_driver=False,  # workers' output goes to Ray's session logs, not the console
        )
    else:  # a cluster: the code travels with the job (see cluster_runtime_env)
        if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
            os.environ["RAY_AUTH_MODE"] = "token"  # clusters started with a token (ours are) need it
        try:
            ray.init(address=cfg.address, runtime_env=cluster_runtime_env(), logging_level="error",
                     log_to_driver=False)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise LaunchError(f"--address {cfg.address}: could not join the cluster ({first}); with token "
                              f"authentication, put the cluster's token in ~/.ray/auth_token") from None
    return True


class LaunchError(Exception):
    """Bad input found before any work starts: one line for the user, exit status 2."""


MIN_AUTO_CAPACITY = 100_000  # the smallest replay a default is shrunk to (DQN still learns Breakout with it)


def _available_memory() -> int | None:
    """Bytes the kernel says new processes can use without swapping (``MemAvailable``); None off Linux."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def _fit_memory(cfg: Config, chosen: bool) -> Config:
    """Make the replay fit this machine's available memory, checked before allocating it.

    A capacity the user chose (or a resumed run's) that does not fit is refused. The default
    shrinks to what fits, with a note, so that ``launch.py`` with no flags also runs on a laptop.
    """
    from replay.memory import ReplayMemory

    available = _available_memory()
    if available is None:
        return cfg
    need = ReplayMemory.estimate_nbytes(cfg.replay_capacity, cfg.num_streams, prioritized=cfg.prioritized)
    headroom = 1.5e9 + 0.8e9 * (cfg.num_actors + 1)  # TensorFlow in the learner and every explorer
    if need + headroom <= available:
        return cfg
    per_transition = ReplayMemory.bytes_per_transition(prioritized=cfg.prioritized)
    fits = max(0, int((available - headroom) / per_transition))
    what = (f"--replay-capacity {cfg.replay_capacity:,} needs about {need / 1e9:.1f} GB but this machine has "
            f"{available / 1e9:.1f} GB available (with {headroom / 1e9:.1f} GB kept for the actors)")
    capacity = fits // 10_000 * 10_000
    if chosen or capacity < MIN_AUTO_CAPACITY:
        hint = "" if chosen else " or fewer --num-actors"
        raise LaunchError(f"{what}; use at most about {fits:,}{hint}")
    cfg = dataclasses.replace(cfg, replay_capacity=capacity)
    try:
        cfg.validate()
    except ValueError as exc:
        raise LaunchError(f"with the replay shrunk to fit memory ({capacity:,}): {exc}") from None
    print(f"note: the default {what}: using --replay-capacity {capacity:,} (give the flag to choose)", flush=True)
    return cfg


def _resume_config(cfg: Config, argv: list[str] | None) -> tuple[Config, tuple[dict, dict]]:
    """The saved run's config with the flags given now on top, and its checkpoint."""
    from learner.checkpoint import CheckpointError, load_checkpoint

    run_dir = Path(cfg.resume)
    if not run_dir.is_dir():
        raise LaunchError(f"--resume {run_dir}: no such folder; give the run directory of an earlier launch.py run")
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise LaunchError(f"--resume {run_dir}: no readable config.json, so not a launch.py run directory") from None
    fields = {f.name for f in dataclasses.fields(Config)}
    if not isinstance(saved, dict) or not {"num_actors", "replay_capacity", "learning_starts"} <= set(saved):
        raise LaunchError(f"--resume {run_dir}: its config.json is from another program, not launch.py")
    # runs from before presets existed trained a plain network on 1-step uniform replay
    merged = {"dueling": False, "n_step": 1, "prioritized": False}
    merged.update({k: v for k, v in saved.items() if k in fields})
    given = given_flags(Config, argv)
    if "preset" in given:
        raise LaunchError(f"--resume {run_dir}: a resumed run keeps its settings; --preset is for new runs "
                          f"(give single flags to change single settings)")
    if "dueling" in given and cfg.dueling != merged["dueling"]:
        raise LaunchError(f"--resume {run_dir}: its checkpoint holds a {'dueling' if merged['dueling'] else 'plain'} "
                          f"network; leave out --dueling (a new network needs a new run)")
    layout = ("replay_capacity", "num_actors", "envs_per_actor", "n_step", "prioritized")
    changed = [k for k in layout if k in given and getattr(cfg, k) != merged.get(k)]
    if merged.get("save_replay") and (run_dir / REPLAY_FILE).exists() and changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise LaunchError(f"--resume {run_dir}: its saved replay ({REPLAY_FILE}) was built for other {flags}; "
                          f"leave them out, or move {REPLAY_FILE} away to refill the replay")
    merged.update({k: getattr(cfg, k) for k in given})
    merged.update(run_dir=str(run_dir), resume=str(run_dir))
    try:
        new = Config(**merged)
        check_ranges(new)
        new.validate(merged=True)
        state = load_checkpoint(run_dir)
    except (ValueError, TypeError) as exc:
        raise LaunchError(f"--resume {run_dir}: {exc}") from None
    except CheckpointError as exc:
        raise LaunchError(str(exc)) from None
    driver = state[1]
    if driver.get("game") not in (None, new.game):
        raise LaunchError(f"--resume {run_dir}: the run plays {driver['game']}, not {new.game}")
    if driver["env_steps"] >= new.total_env_steps:
        raise LaunchError(
            f"{run_dir} already played {driver['env_steps']:,} of --total-env-steps {new.total_env_steps:,}; "
            f"pass a larger --total-env-steps to continue it"
        )
    return new, state


def prepare(cfg: Config, argv: list[str] | None) -> tuple[Config, tuple[dict, dict] | None]:
    """Every check that needs no Ray, done before anything is written."""
    from core.atari import UnknownGameError, rom_id

    resume = None
    given: set[str] = set()
    if cfg.resume:
        cfg, resume = _resume_config(cfg, argv)  # a resumed run keeps its resolved settings
    else:
        given = given_flags(Config, argv)
        cfg = apply_preset(cfg, given)
        try:
            check_ranges(cfg)
            cfg.validate()
        except ValueError as exc:
            raise LaunchError(f"with --preset {cfg.preset}: {exc}") from None
    try:
        rom_id(cfg.game)
    except UnknownGameError as exc:
        raise LaunchError(str(exc)) from None
    if cfg.address is None:
        cfg = _fit_memory(cfg, chosen=resume is not None or "replay_capacity" in given)
    else:
        _check_cluster(cfg)
    if resume is None:
        run_dir = Path(cfg.run_dir or time.strftime(f"runs/{cfg.game.lower()}-%Y%m%d-%H%M%S"))
        try:
            check_run_dir(run_dir, ("config.json", "policy.h5", CHECKPOINT),
                          f"continue it with --resume {run_dir}, or choose another --run-dir")
        except ValueError as exc:
            raise LaunchError(str(exc)) from None
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    return cfg, resume


def launch(cfg: Config, resume: tuple[dict, dict] | None = None) -> Path:
    """Run a whole distributed training (or continue one); return the run directory."""
    import ray

    run_dir = Path(cfg.run_dir)
    owns_ray = _init_ray(cfg)
    gpus = ray.cluster_resources().get("GPU", 0.0)
    if cfg.learner_gpus > gpus:  # the learner would wait for it forever, and every explorer with it
        if owns_ray:
            ray.shutdown()
        raise LaunchError(f"--learner-gpus {cfg.learner_gpus:g}: the cluster has {gpus:g} GPU(s) (see `ray status`); "
                          "leave the flag out, or start the head on a GPU machine (docs/cluster.md)")
    run_dir.mkdir(parents=True, exist_ok=True)
    _stop_requested.clear()
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    driver = None
    try:
        what = f"resuming {run_dir} at" if resume else "starting"
        print(
            f"{cfg.game}: {what} {resume[1]['env_steps'] if resume else 0:,} of {cfg.total_env_steps:,} agent steps;"
            f" {cfg.num_actors} explorer(s) x {cfg.envs_per_actor} emulators, replay {cfg.replay_capacity:,};"
            f" run dir {run_dir}/ (Ctrl-C stops, exports and checkpoints)",
            flush=True,
        )
        driver = Driver(cfg, run_dir, resume)
        yields = "" if cfg.explorer_priority == "normal" else (
            f"; explorers yield it the CPU (--explorer-priority {cfg.explorer_priority})")
        print(f"learner: {ray.get(driver.learner.arithmetic.remote())}, {driver.learner_threads} TensorFlow thread(s)"
              f"{'' if cfg.learner_threads else ' (auto: the CPUs the explorers leave free)'}{yields}", flush=True)
        # written once the actors stand (a resume that fails to start leaves the run's settings as they were)
        write_atomically(run_dir / "config.json",
                         lambda tmp: Path(tmp).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n"))
        try:
            driver.run()
            driver.final_evaluation()
            stopped = _stop_requested[0] if _stop_requested else None
        except Stop as why:
            stopped = str(why)
        for s in previous:  # a second Ctrl-C during the final export must not cut it
            signal.signal(s, signal.SIG_IGN)
        path = driver.export()
        driver.checkpoint()
        driver.print_progress(driver.replay_size())
        print(f"{'stopped by ' + stopped if stopped else 'done'}: {driver.env_steps:,} agent steps, "
              f"{driver.updates_done:,} learner steps; network saved to {path}, checkpoint in {run_dir}/",
              flush=True)
    finally:
        if driver is not None:
            driver.close()
        if owns_ray:
            ray.shutdown()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    cfg = parse(Config, argv, __doc__, EPILOG.replace("{presets}", preset_table()), prog="launch.py")
    try:
        cfg, resume = prepare(cfg, argv)
        launch(cfg, resume)
    except LaunchError as exc:
        print(f"launch.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
