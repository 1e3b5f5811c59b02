"""Distributed DQN on Ray: explorer actors, a replay-memory actor and a learner, wired by one driver.

    python launch.py                                   # a fresh local Ray on this machine
    # a Ray cluster (cluster.yaml: an AMX head, one 16-vCPU worker):
    python launch.py --address auto --explorer-resource explorer --num-actors 16 --samples-per-insert 1 --batch-size 512

On that cluster the head's learner sets the pace: ratio 1 and batch 512 keep its 16 explorers busy
(docs/scaling.md). On one machine the default preset, tuned, is apex with the learner settings the
learning series chose there (docs/learning.md): a batch of 16 at 4 samples per insert.

Data flows one way: explorers -> replay -> learner; only weights flow back (through Ray's object
store). The driver (this process) keeps the replay ratio, shows progress, logs, and writes
``policy.h5`` in keras-rl's format into the run directory.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from config import Config, preset_table
from core.atomic import write_atomically
from distributed import LaunchError
from distributed.disk import SaveFailed
from distributed.preflight import prepare
from flags import parse

EPILOG = """run directory (--run-dir):
  policy.h5        newest Q-network, keras-rl DQNAgent format (every --export-every learner steps, and at the end)
  checkpoint.npz   networks, optimizer and counters for --resume (every --checkpoint-every learner steps, at the end)
  replay.npz       the replay memory, with --save-replay
  config.json      every setting of this run
  metrics.jsonl    one record per progress line (the same scalars as TensorBoard)
  episodes.csv     raw score of every finished game: env_step, stream, epsilon, score, wall_seconds
                   (train.py's episodes.csv has other columns: game, env_step, game_score, wall_seconds)
  evaluations.csv  every evaluation (--eval-every): env and learner step, mean/min/max raw game score under
                   the evaluation protocol (lost life: new frame stack, the env serves; see --eval-episodes)
  best-policy.h5   the network with the best evaluation so far (keras-rl DQNAgent format)
  best-game.gif    the first game of that evaluation, captioned with its agent step and score
  games/           each evaluation's first game: step-<agent step>-score-<score>.gif
  learning-curve.png  evaluation and training scores against agent steps and time (after every evaluation)
  snapshots/       with --snapshot-every / --snapshot-minutes: copies of the network, listed in snapshots.csv
  tb/              TensorBoard: ./dqn python -m tensorboard.main --logdir RUN_DIR/tb (scalars; the curve
                   and the games as images)

presets (--preset; flags given beside it win):
{presets}

examples:
  python launch.py --total-env-steps 3000 --learning-starts 500 --replay-capacity 5000 --run-dir runs/try
  python play.py --weights runs/try/policy.h5
"""


def launch(cfg: Config, resume: tuple[dict, dict] | None = None, driver_class: type | None = None) -> Path:
    """Run a whole distributed training (or continue one); return the run directory.

    ``cfg`` has been through :func:`distributed.preflight.prepare`. SIGINT and SIGTERM stop the
    run cleanly: the network is exported and checkpointed before it ends."""
    import ray

    from distributed.checkpoint import CHECKPOINT
    from distributed.driver import Driver, RunFailed, Stop, StopFlag
    from distributed.placement import local_ray_cpus, node_of
    from distributed.preflight import check_gpus, check_node_memory
    from distributed.raystart import start_ray

    run_dir = Path(cfg.run_dir)
    cpus = local_ray_cpus(cfg, os.cpu_count() or 2)
    owns_ray = start_ray(cfg.address, num_cpus=cpus if cfg.address is None else None)
    try:
        check_gpus(cfg)
        if cfg.address is not None:
            check_node_memory(cfg)
    except LaunchError:
        if owns_ray:
            ray.shutdown()
        raise
    run_dir.mkdir(parents=True, exist_ok=True)
    stop = StopFlag()

    def on_signal(signum: int, frame: Any) -> None:
        stop.set(signal.Signals(signum).name)

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    driver = None
    try:
        what = f"resuming {run_dir} at" if resume else "starting"
        budget = f" or {cfg.max_minutes:g} minutes, whichever comes first" if cfg.max_minutes is not None else ""
        print(
            f"{cfg.game}: {what} {resume[1]['env_steps'] if resume else 0:,} of {cfg.total_env_steps:,} agent steps"
            f"{budget}; {cfg.num_actors} explorer(s) x {cfg.envs_per_actor} emulators, replay {cfg.replay_capacity:,};"
            f" run dir {run_dir}/ (Ctrl-C stops, exports and checkpoints)",
            flush=True,
        )
        driver = (driver_class or Driver)(cfg, run_dir, resume, stop)
        yields = "" if cfg.explorer_priority == "normal" else (
            f"; explorers yield it the CPU (--explorer-priority {cfg.explorer_priority})")
        if cfg.learner_gpus and not ray.get(driver.learner.gpu.remote()):
            raise LaunchError(f"--learner-gpus {cfg.learner_gpus:g}: TensorFlow in the learner sees no GPU (no CUDA "
                              "libraries?); install them with `DQN_GPU=1 ./dqn launch ...` (docs/gpu.md)")
        plan = driver.actors.learner_plan
        actual = ray.get(driver.learner.__ray_call__.remote(node_of))
        moved = "" if actual == plan.node.node_id else f"; Ray placed it on node {actual[:8]} instead (no room there)"
        print(f"learner: {ray.get(driver.learner.arithmetic.remote())}, {plan.describe()}{moved}{yields}", flush=True)
        # written once the actors stand (a resume that fails to start leaves the run's settings as they were)
        write_atomically(run_dir / "config.json",
                         lambda tmp: Path(tmp).write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n"))
        failed = None
        try:
            driver.run()
            driver.final_evaluation()
            stopped = stop.reason
        except Stop as why:
            stopped = str(why)
        except RunFailed as why:
            stopped = failed = str(why)
        for s in previous:  # a second Ctrl-C during the final export must not cut it
            signal.signal(s, signal.SIG_IGN)
        saved = driver.saved  # both final writes are tried, even if the first fails (a full disk)
        final = ((driver.export, "policy.h5"), (driver.checkpoint, CHECKPOINT))
        # write_error names the file that failed (replay.npz, when the checkpoint's replay failed)
        unsaved = [saved.write_error[0] for save, name in final if not saved.save_or_say(save, name, final=True)]
        driver.evaluations.finish(driver.env_steps)
        driver.print_progress(driver.replay_size())
        if failed or unsaved:
            line = saved.failure(" and ".join(unsaved), saved.write_error[1], final=True) if unsaved else ""
            raise SaveFailed("; ".join(x for x in (failed, line) if x))
        done = f"done at --max-minutes {cfg.max_minutes:g}" if driver.out_of_time else "done"
        print(f"{'stopped by ' + stopped if stopped else done}: {driver.env_steps:,} agent steps, "
              f"{driver.updates_done:,} learner steps; network saved to {run_dir / 'policy.h5'}, checkpoint in "
              f"{run_dir}/", flush=True)
    finally:
        if driver is not None:
            driver.close()
        if owns_ray:
            ray.shutdown()
        for s, handler in previous.items():
            signal.signal(s, handler)
    return run_dir


def main(argv: list[str] | None = None, driver_class: type | None = None) -> int:
    """``python launch.py [flags]``: 0 when the run ends (or is stopped), 2 on bad input, 1 when
    the run failed or its final files could not be written (the line says what is whole on disk).
    ``driver_class`` lets tests watch the driver (a subclass of distributed.driver.Driver)."""
    cfg = parse(Config, argv, __doc__, EPILOG.replace("{presets}", preset_table()), prog="launch.py")
    try:
        cfg, resume = prepare(cfg, argv)
        launch(cfg, resume, driver_class)
    except LaunchError as exc:
        print(f"launch.py: error: {exc}", file=sys.stderr)
        return 2
    except SaveFailed as exc:  # the run happened; what it could not save is said, with what is whole
        print(f"launch.py: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
