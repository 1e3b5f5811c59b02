"""Train a DQN on an Atari game in one process with keras-rl: the classic path.

keras-rl's ``DQNAgent`` + ``SequentialMemory`` + annealed ``EpsGreedyQPolicy`` with the
settings of keras-rl's ``examples/dqn_atari.py``; the Q-network is saved as ``policy.h5``.
This is also the baseline every benchmark of the distributed path compares against.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import signal
import sys
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flags import check_run_dir, check_writable_folder, flag, hms, parse

EPILOG = """outputs:
  OUTPUT                   the final Q-network (keras-rl DQNAgent.save_weights), also on Ctrl-C
  RUN_DIR/episodes.csv     raw score of every game played: game, env_step, game_score, wall_seconds
                           (launch.py's episodes.csv has other columns: see its --help)
  RUN_DIR/checkpoint-weights.h5
                           the network's weights every --checkpoint-every steps (runs before this
                           name was taken wrote RUN_DIR/checkpoint.h5; it is only weights, unlike
                           launch.py's checkpoint.npz, which --resume continues from)
  RUN_DIR/learning-curve.png  game scores against agent steps and time (every --checkpoint-every, at the end)
  RUN_DIR/snapshots/       policy-<step>.h5 every --snapshot-every steps, listed in
                           RUN_DIR/snapshots.csv (file,env_steps,learner_steps,wall_seconds)
  RUN_DIR/config.json      the settings of this run

example:
  python train.py --steps 2000 --warmup 500 --memory-limit 5000 --output runs/try/policy.h5
"""

#: weights only, every --checkpoint-every steps; not named checkpoint.h5 (as before) beside launch.py's checkpoint.npz
CHECKPOINT = "checkpoint-weights.h5"
OLD_CHECKPOINT = "checkpoint.h5"  # what runs before the rename wrote: such a folder still counts as a run


@dataclass
class TrainConfig:
    game: str = flag("Breakout", "ALE game name (Breakout, Pong, SpaceInvaders, ...)")
    steps: int = flag(1_750_000, "agent steps to train for (4 emulator frames each)", low=1)
    warmup: int = flag(50_000, "steps of random play that fill the memory before learning starts", low=1)
    memory_limit: int = flag(1_000_000, "replay memory size in transitions (SequentialMemory limit)", low=100)
    output: str = flag("policy.h5", "where the trained network is written")
    overwrite: bool = flag(False, "replace OUTPUT if it already exists")
    run_dir: str | None = flag(None, "folder for logs and checkpoints (default: runs/classic-<time>)")
    target_update: float = flag(10_000, "copy the network to the target every N agent steps (keras-rl "
                                "target_model_update; launch.py counts learner steps; < 1: soft update rate)",
                                low=0.0)
    train_interval: int = flag(4, "train on one batch every N agent steps", low=1)
    batch_size: int = flag(32, "transitions per training batch", low=1, high=4096)
    learning_rate: float = flag(2.5e-4, "Adam learning rate", low=0.0)
    gamma: float = flag(0.99, "discount factor", low=0.0, high=1.0)
    delta_clip: float = flag(1.0, "Huber loss delta", low=0.0)
    eps_start: float = flag(1.0, "exploration epsilon at step 0", low=0.0, high=1.0)
    eps_end: float = flag(0.1, "exploration epsilon after --eps-steps", low=0.0, high=1.0)
    eps_steps: int = flag(1_000_000, "steps over which epsilon is annealed linearly", low=1)
    checkpoint_every: int = flag(250_000, "save RUN_DIR/checkpoint-weights.h5 every N steps", low=1)
    snapshot_every: int = flag(
        0, "keep RUN_DIR/snapshots/policy-<step>.h5 every N steps for learning curves (0: off)", low=0
    )
    dueling: bool = flag(False, "keras-rl's dueling variant (enable_dueling_network, dueling_type avg): on this "
                         "network it adds no capacity over the plain head and the file loads only into a dueling "
                         "agent (see docs/learning.md)")
    init_weights: str | None = flag(None, "start from this keras-rl policy.h5 (ours, or what keras-rl's dqn_atari.py "
                                    "saved) of the same network and game: DQNAgent.load_weights, which also sets "
                                    "the target network")
    double_dqn: bool = flag(False, "double DQN targets (keras-rl enable_double_dqn; dqn_atari.py leaves it off)")
    log_every: float = flag(10.0, "seconds between progress lines", low=0.1)
    seed: int = flag(0, "random seed for the emulator, exploration and network init", low=0)

    def validate(self) -> None:
        out = Path(self.output)
        if out.suffix not in (".h5", ".hdf5"):
            raise ValueError(f"--output must end in .h5 (keras-rl's weights format), got {out}")
        if out.exists() and not self.overwrite:
            raise ValueError(f"{out} already exists; pass --overwrite or choose another --output")
        if out.is_dir():
            raise ValueError(f"--output {out} is a folder; give a file path ending in .h5")
        if self.warmup >= self.steps:
            raise ValueError(f"--warmup ({self.warmup:,}) must be below --steps ({self.steps:,}), or no update "
                             "would run; lower --warmup")

    def prepare(self) -> None:
        """Checks that touch the disk, made before any work so that a bad path costs no training:
        the run folder (default name filled in) and the output's folder must take files, and an
        earlier run's folder is never written over."""
        if self.run_dir is None:
            self.run_dir = time.strftime("runs/classic-%Y%m%d-%H%M%S")
        check_run_dir(Path(self.run_dir), ("config.json", "episodes.csv", CHECKPOINT, OLD_CHECKPOINT),
                      "choose another --run-dir")
        check_writable_folder(Path(self.output).resolve().parent, "--output's folder")


def _progress_callback(cfg: TrainConfig, run_dir: Path, agent: Any) -> Any:
    from rl.callbacks import Callback

    from core.atomic import write_atomically
    from core.pictures import CURVE_FILE, learning_curve_png, read_scores
    from core.policy_file import SnapshotWriter
    from learner.classic import kerasrl_train_steps

    class ProgressCallback(Callback):
        """Progress lines, the raw-score CSV and periodic checkpoints (keras-rl calls it every step)."""

        def __init__(self) -> None:
            self.scores: deque[float] = deque(maxlen=20)
            self.games = 0
            self.start = self.last_print = time.monotonic()
            self.last_step = 0
            self.metrics: list[float] = []
            self.aborted = False
            self.csv_file = open(run_dir / "episodes.csv", "w", newline="")
            self.csv = csv.writer(self.csv_file)
            self.csv.writerow(["game", "env_step", "game_score", "wall_seconds"])
            self.snapshots = SnapshotWriter(run_dir, start=self.start)

        def on_step_end(self, step: int, logs: dict) -> None:
            agent_step = int(agent.step) + 1
            if "game_score" in logs["info"]:
                self.games += 1
                score = float(logs["info"]["game_score"])
                self.scores.append(score)
                self.csv.writerow([self.games, agent_step, score, round(time.monotonic() - self.start, 1)])
                self.csv_file.flush()
            if not all(math.isnan(m) for m in logs["metrics"]):  # NaN on steps without training
                self.metrics = logs["metrics"]
            if agent_step % cfg.checkpoint_every == 0:
                write_atomically(run_dir / CHECKPOINT, lambda p: agent.save_weights(p, overwrite=True))
                self.draw_curve()
            if cfg.snapshot_every and agent_step % cfg.snapshot_every == 0:
                self.snapshots.write(agent.model, agent_step, kerasrl_train_steps(agent))
            now = time.monotonic()
            if now - self.last_print >= cfg.log_every:
                self.print_line(agent_step, now)

        def print_line(self, agent_step: int, now: float) -> None:
            rate = (agent_step - self.last_step) / max(now - self.last_print, 1e-9)
            self.last_print, self.last_step = now, agent_step
            eta = (cfg.steps - agent_step) / rate if rate > 0 else math.inf
            named = dict(zip(agent.metrics_names, self.metrics, strict=False))
            mean = sum(self.scores) / len(self.scores) if self.scores else float("nan")
            phase = "warm-up" if agent_step <= cfg.warmup else "training"
            print(
                f"step {agent_step:>9,}/{cfg.steps:,} ({100 * agent_step / cfg.steps:4.1f}%) {phase} | "
                f"{rate:6.1f} steps/s | eta {hms(eta)} | games {self.games} | "
                f"score(last {len(self.scores)}) {mean:6.2f} | eps {named.get('mean_eps', float('nan')):.3f} | "
                f"loss {named.get('loss', float('nan')):.4f} | mean_q {named.get('mean_q', float('nan')):.3f}",
                flush=True,
            )

        def draw_curve(self) -> None:
            """RUN_DIR/learning-curve.png from episodes.csv (about a second: with checkpoints only)."""
            self.csv_file.flush()
            games = read_scores(run_dir / "episodes.csv", "env_step", "game_score")
            png = learning_curve_png(games, title=f"{cfg.game}, {run_dir.name} (train.py)")
            write_atomically(run_dir / CURVE_FILE, lambda tmp: Path(tmp).write_bytes(png))

        def on_train_end(self, logs: dict | None = None) -> None:
            self.aborted = bool((logs or {}).get("did_abort"))
            self.draw_curve()
            self.csv_file.close()

    return ProgressCallback()




def _sigterm_as_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def train(cfg: TrainConfig) -> Path:
    """Run keras-rl's DQN on ``cfg.game``; return the path of the saved network. ``cfg`` has been
    through :meth:`TrainConfig.prepare`."""
    from core.atomic import write_atomically
    from core.policy_file import check_policy_file
    from learner.classic import classic_training

    env, agent = classic_training(
        cfg.game, seed=cfg.seed, memory_limit=cfg.memory_limit, eps_start=cfg.eps_start, eps_end=cfg.eps_end,
        eps_steps=cfg.eps_steps, warmup=cfg.warmup, target_update=cfg.target_update,
        train_interval=cfg.train_interval, batch_size=cfg.batch_size, gamma=cfg.gamma, delta_clip=cfg.delta_clip,
        learning_rate=cfg.learning_rate, enable_dueling=cfg.dueling, enable_double_dqn=cfg.double_dqn,
    )
    n_actions = env.action_space.n
    if cfg.init_weights:  # checked before anything is written: a wrong file leaves no run behind
        check_policy_file(cfg.init_weights, agent.model)
        agent.load_weights(cfg.init_weights)  # keras-rl copies it into the target network too
    run_dir = Path(cfg.run_dir)  # filled in and checked by cfg.prepare(), which main() ran
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(json.dumps(dataclasses.asdict(cfg), indent=2) + "\n")
    variant = ", ".join(name for name, on in (("dueling", cfg.dueling), ("double DQN", cfg.double_dqn)) if on)
    print(
        f"training {cfg.game} ({n_actions} actions) for {cfg.steps:,} steps with keras-rl DQNAgent"
        f"{f' ({variant})' if variant else ''}; "
        f"logs in {run_dir}/, network to {cfg.output}. Ctrl-C stops and saves.",
        flush=True,
    )
    log = _progress_callback(cfg, run_dir, agent)
    previous = signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    try:
        agent.fit(env, nb_steps=cfg.steps, callbacks=[log], verbose=0)
    finally:
        signal.signal(signal.SIGTERM, previous)
    out = write_atomically(cfg.output, lambda tmp: agent.save_weights(tmp, overwrite=True))
    print(f"{'stopped' if log.aborted else 'done'} after {int(agent.step):,} steps; network saved to {out}")
    env.close()
    return out


def main(argv: list[str] | None = None) -> int:
    cfg = parse(TrainConfig, argv, __doc__, EPILOG, prog="train.py")
    from core.atari import UnknownGameError, rom_id
    from core.policy_file import PolicyFileError, read_weight_shapes

    try:
        rom_id(cfg.game)
        if cfg.init_weights:
            read_weight_shapes(cfg.init_weights)  # a missing or broken file, before TensorFlow loads (a
            # PolicyFileError is a ValueError)
        cfg.prepare()
    except (UnknownGameError, ValueError) as exc:
        print(f"train.py: error: {exc}", file=sys.stderr)
        return 2
    try:
        train(cfg)
    except PolicyFileError as exc:  # --init-weights of another network, found once the agent is built
        print(f"train.py: error: --init-weights {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
