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
from collections import deque
from pathlib import Path
from typing import Any

import kerasrl_compat
from config import Config, parse

EPILOG = """run directory (--run-dir):
  policy.h5        newest Q-network, keras-rl DQNAgent format (every --export-every learner steps, and at the end)
  config.json      every setting of this run
  metrics.jsonl    one record per progress line (the same scalars as TensorBoard)
  episodes.csv     raw score of every finished game: env step, stream, epsilon, score
  tb/              TensorBoard: tensorboard --logdir RUN_DIR/tb

examples:
  python launch.py --total-env-steps 3000 --learning-starts 500 --replay-capacity 5000 --run-dir runs/try
  python play.py --weights runs/try/policy.h5
"""


class Stop(Exception):
    """Raised from a signal handler to end the run cleanly."""


def _on_signal(signum: int, frame: Any) -> None:
    raise Stop(signal.Signals(signum).name)


def _hms(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "--:--:--"
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


class RunLog:
    """Progress lines, TensorBoard scalars, metrics.jsonl and episodes.csv of one run."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
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
        self.scores: deque[float] = deque(maxlen=100)
        self.start = time.monotonic()
        self.last = (self.start, 0, 0)
        self.games = 0

    def games_done(self, env_steps: int, games: list[dict]) -> None:
        wall = round(time.monotonic() - self.start, 1)
        with self.writer.as_default():
            for g in games:
                self.games += 1
                self.scores.append(g["score"])
                self.episodes.writerow([env_steps, g["stream"], f"{g['eps']:.5f}", g["score"], wall])
                self.tf.summary.scalar("episodic_return", g["score"], step=env_steps)
        self.episodes_file.flush()

    def progress(self, env_steps: int, learner_steps: int, replay_size: int, learner: dict,
                 epsilon: float, last_export: float | None, explorer_failures: int = 0) -> None:
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
            "explorer_restarts": explorer_failures,
        }
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        with self.writer.as_default():
            for key in ("env_steps_per_s", "learner_steps_per_s", "replay_size", "epsilon", "td_loss", "mean_q"):
                if record[key] is not None and not (isinstance(record[key], float) and math.isnan(record[key])):
                    self.tf.summary.scalar(key, record[key], step=env_steps)
        self.writer.flush()
        eta = (self.cfg.total_env_steps - env_steps) / env_rate if env_rate > 0 else math.inf
        export = f"{_hms(now - last_export)} ago" if last_export else "none yet"
        loss = learner.get("loss", float("nan"))
        print(
            f"env {env_steps:>10,}/{self.cfg.total_env_steps:,} ({100 * env_steps / self.cfg.total_env_steps:4.1f}%)"
            f" | {env_rate:6.0f} env/s | {upd_rate:5.1f} upd/s | replay {replay_size:,} | "
            f"score(last {len(self.scores)}) {mean:6.2f} | loss {loss:.4f} | export {export} | eta {_hms(eta)}"
            + (f" | explorer restarts {explorer_failures}" if explorer_failures else ""),
            flush=True,
        )

    def close(self) -> None:
        self.metrics.close()
        self.episodes_file.close()
        self.writer.close()


class Driver:
    """Builds the actors, keeps the replay ratio and runs the loop until the step budget is spent."""

    def __init__(self, cfg: Config, run_dir: Path) -> None:
        import ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        from actors.atari import make_env
        from actors.explorer import Explorer
        from learner.learner import Learner
        from learner.network import build_q_network
        from replay.server import ReplayServer

        self.cfg, self.run_dir, self.ray = cfg, run_dir, ray
        probe = make_env(cfg.game, training=False)
        self.n_actions = int(probe.action_space.n)
        probe.close()
        self.export_model = build_q_network(self.n_actions)
        # The replay and the learner stay on the driver's node (the head of a cluster) unless the
        # learner asks for a GPU; explorers go wherever CPUs (or --explorer-resource) are free.
        here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=True)
        self.replay = ray.remote(ReplayServer).options(num_cpus=0, scheduling_strategy=here).remote(
            cfg.replay_capacity, cfg.num_streams, seed=cfg.seed
        )
        learner_options: dict[str, Any] = {"num_cpus": 1, "num_gpus": cfg.learner_gpus}
        if not cfg.learner_gpus:
            learner_options["scheduling_strategy"] = here
        self.learner = ray.remote(Learner).options(**learner_options).remote(cfg, self.n_actions, self.replay)
        explorer_options: dict[str, Any] = {
            "num_cpus": cfg.explorer_cpus or self.explorer_cpus(),
            "max_restarts": -1,  # a crashed explorer (or its lost node) comes back and plays on
            "max_task_retries": 0,  # ...but the run() it was in is lost: the driver just starts another
        }
        if cfg.explorer_resource:
            explorer_options["resources"] = {cfg.explorer_resource: 1}
        explorer = ray.remote(Explorer).options(**explorer_options)
        self.explorers = [explorer.remote(cfg, i, self.replay) for i in range(cfg.num_actors)]
        self.explorer_failures = 0
        self._issued: dict[Any, int] = {}  # explorer run futures -> the steps they were asked for
        self.weights = self.learner.get_weights.remote()
        self.env_steps = 0
        self.env_steps_issued = 0
        self.updates_done = 0
        self.updates_issued = 0
        self.learner_metrics: dict = {}
        self.epsilons: dict[int, list[float]] = {}
        self.last_export_time: float | None = None
        self.last_export_step = 0
        self.log = RunLog(cfg, run_dir)

    def explorer_cpus(self) -> float:
        """One CPU per explorer, or an even share of what Ray has beside the learner's CPU,
        so that every explorer is placed even when there are more explorers than cores."""
        total = self.ray.cluster_resources().get("CPU", 1.0)
        return min(1.0, max(0.01, (total - 1.0) / self.cfg.num_actors))

    # --- the replay ratio -------------------------------------------------------------------
    def updates_allowed(self) -> int:
        over = self.env_steps - self.cfg.learning_starts
        if over < 0:
            return 0
        return int(over * self.cfg.samples_per_insert / self.cfg.batch_size)

    def actor_may_run(self) -> bool:
        """Explorers may run ahead of the learner by a bounded slack, then wait for it."""
        cfg = self.cfg
        if self.env_steps_issued >= cfg.total_env_steps:
            return False
        covered = cfg.learning_starts + self.updates_done * cfg.batch_size / cfg.samples_per_insert
        slack = 2 * cfg.num_actors * cfg.weight_sync_every + 2 * cfg.updates_per_call * cfg.batch_size
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
        replay_size = 0
        while True:
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
                    result = ray.get(ref)
                    learner_future = None
                    self.updates_done += result["updates"]
                    self.learner_metrics = result
                    self.weights = self.learner.get_weights.remote()
                    if result["learner_steps"] - self.last_export_step >= cfg.export_every:
                        self.export()
                else:
                    i = running.pop(ref)
                    idle.add(i)
                    try:
                        result = ray.get(ref)
                    except ray.exceptions.RayActorError as exc:
                        # Ray restarts the explorer (max_restarts=-1); its lost steps are re-issued.
                        self.explorer_failures += 1
                        self.env_steps_issued -= self._issued.pop(ref)
                        print(f"explorer {i} failed ({type(exc).__name__}); it restarts and plays on "
                              f"({self.explorer_failures} failure(s) so far)", flush=True)
                        continue
                    self._issued.pop(ref)
                    self.env_steps += result["steps"]
                    self.epsilons[i] = result["epsilons"]
                    self.log.games_done(self.env_steps, result["games"])
            now = time.monotonic()
            if now - last_print >= cfg.log_every:
                last_print = now
                replay_size = ray.get(self.replay.size.remote())
                self.print_progress(replay_size)
        # let the last pushes land; an explorer that is restarting has nothing left to flush
        ray.wait([e.flush.remote() for e in self.explorers], num_returns=len(self.explorers), timeout=30)

    def print_progress(self, replay_size: int) -> None:
        eps = [e for v in self.epsilons.values() for e in v]
        mean_eps = sum(eps) / len(eps) if eps else float("nan")
        self.log.progress(self.env_steps, self.updates_done, replay_size, self.learner_metrics, mean_eps,
                          self.last_export_time, self.explorer_failures)

    def export(self) -> Path:
        """Write RUN_DIR/policy.h5 from the learner's newest weights, atomically."""
        from learner.export import save_policy

        version, weights = self.ray.get(self.learner.get_weights.remote())
        self.export_model.set_weights(weights)
        path = save_policy(self.export_model, self.run_dir / "policy.h5")
        self.last_export_time = time.monotonic()
        self.last_export_step = self.updates_done
        return path

    def close(self) -> None:
        self.log.close()
        for handle in [*self.explorers, self.learner, self.replay]:
            self.ray.kill(handle)


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
    else:
        ray.init(address=cfg.address, runtime_env=env, logging_level="error", log_to_driver=False)
    return True


def launch(cfg: Config) -> Path:
    """Run a whole distributed training; return the run directory."""
    import ray

    run_dir = Path(cfg.run_dir or time.strftime(f"runs/{cfg.game.lower()}-%Y%m%d-%H%M%S"))
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    owns_ray = _init_ray(cfg)
    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    driver = None
    try:
        print(
            f"{cfg.game}: {cfg.num_actors} explorer(s) x {cfg.envs_per_actor} emulators, "
            f"replay {cfg.replay_capacity:,}, {cfg.total_env_steps:,} agent steps; run dir {run_dir}/ "
            f"(Ctrl-C stops and exports)",
            flush=True,
        )
        driver = Driver(cfg, run_dir)
        try:
            driver.run()
            stopped = None
        except Stop as why:
            stopped = str(why)
        for s in previous:  # a second Ctrl-C during the final export must not cut it
            signal.signal(s, signal.SIG_IGN)
        path = driver.export()
        driver.print_progress(ray.get(driver.replay.size.remote()))
        print(f"{'stopped by ' + stopped if stopped else 'done'}: {driver.env_steps:,} agent steps, "
              f"{driver.updates_done:,} learner steps; network saved to {path}", flush=True)
    finally:
        if driver is not None:
            driver.close()
        if owns_ray:
            ray.shutdown()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return run_dir


def main(argv: list[str] | None = None) -> int:
    cfg = parse(Config, argv, __doc__, EPILOG)
    from actors.atari import UnknownGameError, rom_id

    try:
        rom_id(cfg.game)
    except UnknownGameError as exc:
        print(f"launch.py: error: {exc}", file=sys.stderr)
        return 2
    launch(cfg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
