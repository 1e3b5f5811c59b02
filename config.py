"""launch.py's one config object: every setting of a distributed run, its flags (flags.py) and presets."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, ClassVar

from flags import flag, parse_minutes

PRECISIONS = ("auto", "float32", "bfloat16")  # of the networks' arithmetic (core.network)
PRIORITIES = ("idle", "low", "normal")  # CPU priority of explorers and the evaluator (actors.cpu_priority)


def default_num_actors() -> int:
    """One explorer per core beyond the one the learner needs (at least one)."""
    import os

    return max(1, (os.cpu_count() or 2) - 1)


@dataclasses.dataclass
class Config:
    """Every setting of a distributed run: built once from the command line by ``launch.py``
    and handed, unchanged, to the replay, learner and explorer actors.

    Its fields come in two kinds, declared apart and shown apart in ``--help`` (:attr:`GROUPS`):
    algorithm settings (what is learned, and how) and deployment settings (where the run executes
    and where its files go: cluster address, placement, threads, run folder). Deployment settings
    change throughput, never what a given stream of experience teaches the network."""

    #: ``--help`` sections, in order: title -> the fields shown under it
    GROUPS: ClassVar[dict[str, tuple[str, ...]]] = {
        "algorithm: what to play, for how long": (
            "preset", "game", "total_env_steps", "max_minutes", "learning_starts", "seed",
        ),
        "algorithm: acting": (
            "num_actors", "envs_per_actor", "exploration", "ladder_base", "ladder_alpha", "epsilon", "eps_start",
            "eps_end", "eps_anneal_steps", "weight_sync_every",
        ),
        "algorithm: replay": (
            "replay_capacity", "samples_per_insert", "prioritized", "priority_alpha", "priority_beta",
            "priority_beta_anneal_steps", "n_step",
        ),
        "algorithm: learning": (
            "batch_size", "learning_rate", "learning_rate_end", "learning_rate_anneal_steps", "adam_epsilon",
            "gamma", "huber_delta", "grad_clip_norm", "double_dqn", "dueling", "target_update", "adam_reset",
            "updates_per_call", "init_weights",
        ),
        "algorithm: evaluation": (
            "eval_every", "eval_episodes", "eval_epsilon", "eval_max_steps",
        ),
        "deployment: run folder and outputs": (
            "run_dir", "resume", "export_every", "checkpoint_every", "save_replay", "snapshot_every",
            "snapshot_minutes", "log_every",
        ),
        "deployment: cluster, placement, threads, arithmetic": (
            "address", "num_cpus", "explorer_cpus", "explorer_resource", "explorer_priority", "learner_gpus",
            "learner_threads", "learner_precision", "actor_precision",
        ),
    }

    # ===== ALGORITHM: what is learned, and how =====
    # --- algorithm: what to play, for how long
    preset: str = flag("tuned", "hyperparameter set: tuned (apex, but below 8 explorers the learning series' batch "
                       "16, 4 samples per insert, Adam 2.5e-4 annealed to 5e-5 and beta to 1 over the first 1M "
                       "agent steps, 10,000 steps of warm-up; docs/learning.md), apex "
                       "(Ape-X: n-step 3, prioritized replay, double DQN, epsilon ladder, scaled to --num-actors) or "
                       "classic (keras-rl dqn_atari.py: 1-step, uniform replay, annealed epsilon); values at the end "
                       "of --help",
                       choices=("tuned", "apex", "classic"))
    game: str = flag("Breakout", "ALE game name (Breakout, Pong, SpaceInvaders, ...)")
    total_env_steps: int = flag(10_000_000, "stop after this many agent steps over all emulators", low=1)
    max_minutes: float | None = flag(None, "also stop after this many minutes of wall clock, counted from the "
                                     "launch.py process start (a --resume goes on from the wall clock its checkpoint "
                                     "had run), whichever of this and --total-env-steps comes first; without "
                                     "--learning-rate-anneal-steps (apex, classic) the anneal of --learning-rate-end "
                                     "ends there too, so it fits a time budget; the anneals fixed in agent steps "
                                     "(tuned's) and beta's keep to the steps (unset: steps only)", low=0.01)
    learning_starts: int = flag(10_000, "agent steps collected before the learner starts", low=1)
    seed: int = flag(0, "random seed (emulators, exploration, network init, replay sampling)", low=0)
    # --- algorithm: acting
    num_actors: int = flag(default_num_actors(), "explorer actors (default: CPU cores - 1)", low=1, high=4096)
    envs_per_actor: int = flag(8, "emulators per explorer, stepped together with one batched forward pass",
                               low=1, high=256)
    exploration: str = flag("ladder", "epsilon per emulator stream: ladder (Ape-X: eps_i = base^(1 + alpha i/(N-1))"
                            " over all N streams), fixed (--epsilon) or anneal (--eps-start -> --eps-end)",
                            choices=("ladder", "fixed", "anneal"))
    ladder_base: float = flag(0.4, "Ape-X ladder base", low=0.0, high=1.0)
    ladder_alpha: float = flag(7.0, "Ape-X ladder exponent spread", low=0.0)
    epsilon: float = flag(0.01, "epsilon for --exploration fixed", low=0.0, high=1.0)
    eps_start: float = flag(1.0, "epsilon at step 0 for --exploration anneal", low=0.0, high=1.0)
    eps_end: float = flag(0.1, "epsilon after --eps-anneal-steps for --exploration anneal", low=0.0, high=1.0)
    eps_anneal_steps: int = flag(1_000_000, "agent steps (all actors together) of the linear anneal", low=1)
    weight_sync_every: int = flag(400, "agent steps per explorer between weight refreshes; experience is pushed "
                                  "to the replay at the same cadence", low=1)
    # --- algorithm: replay
    replay_capacity: int = flag(1_000_000, "replay memory size in transitions (about 7 KB each); on a local run "
                                "the default shrinks to what this machine's free memory holds (down to 100,000)",
                                low=100)
    samples_per_insert: float = flag(4.0, "replay ratio: transitions sampled per transition inserted (4: a batch "
                                     "of 16 every 4 agent steps; DQN's 8: 32 every 4)", low=0.01)
    prioritized: bool = flag(True, "proportional prioritized replay (Schaul et al.); false: uniform")
    priority_alpha: float = flag(0.6, "priority exponent: P(i) ~ |td_i| ** alpha", low=0.0, high=1.0)
    priority_beta: float = flag(0.4, "importance-sampling exponent at the first update, annealed linearly to 1 "
                                "over the learner steps of --total-env-steps (not over --max-minutes) or of "
                                "--priority-beta-anneal-steps, whichever comes first", low=0.0, high=1.0)
    priority_beta_anneal_steps: int | None = flag(1_000_000, "bring beta to 1 after this many agent steps and "
                                                  "hold it there, so its schedule does not depend on the run's "
                                                  "length (tuned: 1,000,000 below 8 explorers; apex, classic: unset, "
                                                  "at --total-env-steps)", low=1)
    n_step: int = flag(3, "n-step returns, computed by the explorers (1: plain one-step DQN)", low=1, high=10)
    # --- algorithm: learning
    batch_size: int = flag(16, "transitions per learner update (tuned: 16 below 8 explorers; apex: 32 per 4 "
                           "explorers, 512 at most)", low=1, high=8192)
    learning_rate: float = flag(2.5e-4, "Adam learning rate", low=0.0, high=1.0)
    learning_rate_end: float | None = flag(5e-5, "anneal the rate linearly from --learning-rate to this at the run's "
                                           "end (its last learner step by --total-env-steps, or "
                                           "--learning-rate-anneal-steps if sooner, or without that flag "
                                           "--max-minutes if sooner; a --resume goes on from the rate it "
                                           "reached); tuned: 5e-05 below 8 "
                                           "explorers (give it --learning-rate's value for a constant rate); "
                                           "apex, classic: unset, a constant rate", low=0.0, high=1.0)
    learning_rate_anneal_steps: int | None = flag(1_000_000, "end --learning-rate-end's anneal after this many "
                                                  "agent steps (or at --total-env-steps if sooner) and hold that "
                                                  "rate after, so neither the run's length nor --max-minutes moves "
                                                  "the schedule (tuned: 1,000,000 below 8 explorers; "
                                                  "apex, classic: unset, at the run's end)", low=1)
    adam_epsilon: float = flag(1.5e-4, "Adam epsilon", low=0.0)
    gamma: float = flag(0.99, "discount factor", low=0.0, high=1.0)
    huber_delta: float = flag(1.0, "Huber loss delta", low=0.0)
    grad_clip_norm: float = flag(40.0, "clip gradients to this global norm (0: off)", low=0.0)
    double_dqn: bool = flag(True, "double DQN targets (online network picks, target network evaluates)")
    dueling: bool = flag(False, "keras-rl's dueling variant (enable_dueling_network=True, dueling_type='avg'): "
                         "on the Atari network it adds no capacity (V and A sit on the linear head) and policy.h5 "
                         "loads only into keras-rl's dueling agent (docs/learning.md); off: what every keras-rl "
                         "Atari agent loads")
    target_update: int = flag(2_500, "copy the online network to the target every N learner steps (updates, "
                              "not agent steps as in train.py: 2,500 updates = DQN's 10,000 agent steps at 4 steps "
                              "per update)", low=1)
    adam_reset: bool = flag(False, "zero Adam's moments and step count whenever the target network is synced "
                            "(Asadi et al. 2023, 'Resetting the optimizer in deep RL'); default off: Adam runs on")
    updates_per_call: int = flag(20, "learner updates per learner call (batches are prefetched meanwhile)",
                                 low=1, high=10_000)
    init_weights: str | None = flag(None, "start the online and target networks from this keras-rl policy.h5 "
                                    "(ours, or what keras-rl's dqn_atari.py saved) of the same network and game; "
                                    "new runs only")
    # --- algorithm: evaluation
    eval_every: int = flag(100_000, "agent steps between evaluations of the newest network (0: off); the best "
                           "one is also written as RUN_DIR/best-policy.h5", low=0)
    eval_episodes: int = flag(8, "games per evaluation, played at once under the evaluation protocol (CleanRL's "
                              "dqn_atari evaluation, docs/learning.md): the training env, so a lost life starts a "
                              "new frame stack and the env serves (1 no-op, FIRE); each game's raw score over all "
                              "its lives; up to 30 no-op starts", low=1, high=256)
    eval_epsilon: float = flag(0.05, "epsilon during evaluation games (the protocol's 0.05)", low=0.0, high=1.0)
    eval_max_steps: int = flag(27_000, "agent-step cap of an evaluation game, over all its lives (27,000 = 108,000 "
                               "frames)", low=1)
    # ===== DEPLOYMENT: where the run executes and where its files go =====
    # --- deployment: run folder and outputs
    run_dir: str | None = flag(None, "folder for policy.h5, logs and TensorBoard (default: runs/<game>-<time>)")
    resume: str | None = flag(None, "continue the run in this run directory from its checkpoint, with its "
                              "config.json; flags given beside it override (e.g. a larger --total-env-steps)")
    export_every: int = flag(10_000, "write RUN_DIR/policy.h5 every N learner steps (and at the end)", low=1)
    checkpoint_every: int = flag(10_000, "write RUN_DIR/checkpoint.npz every N learner steps (and at the end)",
                                 low=1)
    save_replay: bool = flag(False, "also save the replay memory with every checkpoint (RUN_DIR/replay.npz, "
                             "about 7 KB per transition) so --resume continues with it instead of refilling")
    snapshot_every: int = flag(0, "keep a copy of the network every N agent steps in RUN_DIR/snapshots/ with "
                               "RUN_DIR/snapshots.csv (0: off)", low=0)
    snapshot_minutes: str | None = flag(None, "also keep a copy of the network at these minutes of wall clock, "
                                        "counted from the launch.py process start (a --resume goes on from the wall "
                                        "clock its checkpoint had run; points before it were kept then): "
                                        "comma-separated, increasing, > 0, e.g. 5,10,20,40,60; the first moment "
                                        "past each point, in RUN_DIR/snapshots/ with a row in RUN_DIR/snapshots.csv "
                                        "whose point_minutes names the point (unset: off)")
    log_every: float = flag(10.0, "seconds between progress lines", low=0.1)
    # --- deployment: cluster, placement, threads, arithmetic
    address: str | None = flag(None, "Ray to use: unset = a fresh local Ray on this machine; 'auto' or "
                               "HOST:PORT = join that running cluster")
    num_cpus: int | None = flag(None, "CPUs of the local Ray (default: this machine's cores)", low=1)
    explorer_cpus: float | None = flag(None, "CPUs each explorer reserves (default: 1 with --explorer-resource; "
                                       "else 1, or an even share when Ray has fewer CPUs than explorers + "
                                       "learner)", low=0.01)
    explorer_resource: str | None = flag(None, "custom Ray resource each explorer needs one unit of: nodes that "
                                         "declare it host explorers, that many each (cluster.yaml gives worker "
                                         "nodes 'explorer')")
    explorer_priority: str = flag("idle", "CPU priority of explorers and the evaluator: idle (Linux SCHED_IDLE: "
                                  "they run on the CPU time the learner, the bottleneck at a fixed replay ratio, "
                                  "leaves), low (nice 19) or normal", choices=PRIORITIES)
    learner_gpus: float = flag(0.0, "GPUs for the learner: 1 puts it on an NVIDIA GPU (needs a GPU node whose "
                               "venv has the CUDA libraries: DQN_GPU=1 ./dqn ..., docs/gpu.md)", low=0.0)
    learner_threads: int = flag(0, "TensorFlow threads for the learner (0: auto, decided for the learner's "
                                "node: its CPUs less those of the explorers that may run there and, on a "
                                "cluster, 1 each for the replay, the driver and the evaluator beside it; at "
                                "least 1)", low=0)
    learner_precision: str = flag("auto", "learner arithmetic: float32; bfloat16 (mixed precision: float32 "
                                  "weights and Q-head, policy.h5 unchanged); auto = float32 on a GPU (TF32 "
                                  "from compute capability 8.0), bfloat16 on CPUs that multiply bf16 natively "
                                  "(AVX-512 BF16/AMX), else float32", choices=PRECISIONS)
    actor_precision: str = flag("auto", "explorers' inference arithmetic: float32, bfloat16 or auto, as "
                                "--learner-precision (1.5x faster forward passes on AVX-512 BF16 CPUs)",
                                choices=PRECISIONS)
    def settings(self, kind: str) -> dict[str, Any]:
        """The ``algorithm`` or ``deployment`` settings (see :attr:`GROUPS`), by field name."""
        names = [n for title, fields in self.GROUPS.items() if title.startswith(kind + ":") for n in fields]
        if not names:
            raise ValueError(f"kind must be algorithm or deployment, not {kind!r}")
        return {n: getattr(self, n) for n in names}

    @property
    def snapshot_points(self) -> tuple[float, ...]:
        """--snapshot-minutes as numbers (empty when unset); raises ValueError on a malformed list."""
        return parse_minutes(self.snapshot_minutes, "--snapshot-minutes")

    @property
    def num_streams(self) -> int:
        return self.num_actors * self.envs_per_actor

    def learner_steps_by(self, env_steps: int) -> int:
        """Learner steps the replay ratio allows by ``env_steps`` agent steps (at least 1)."""
        spent = max(0, env_steps - self.learning_starts)
        return max(1, int(spent * self.samples_per_insert / self.batch_size))

    @property
    def total_learner_steps(self) -> int:
        """Learner steps the replay ratio allows over the whole run (anneals beta)."""
        return self.learner_steps_by(self.total_env_steps)

    @property
    def max_seconds(self) -> float:
        """--max-minutes in seconds; infinite when unset (the steps alone end the run)."""
        return math.inf if self.max_minutes is None else 60 * self.max_minutes

    def progress(self, learner_steps: int, wall_seconds: float = 0.0) -> float:
        """How far the run is, 0 to 1: its learner steps of :attr:`total_learner_steps` or, given the
        clock, its wall clock of --max-minutes, whichever is further (beta's anneal passes no clock;
        --learning-rate-end's reads this through :meth:`rate_progress`)."""
        return min(1.0, max(learner_steps / self.total_learner_steps, wall_seconds / self.max_seconds))

    def _progress_or_steps(self, progress: float, learner_steps: int, anneal_steps: int | None) -> float:
        """``progress``, or the learner steps' share of ``anneal_steps`` agent steps when that is further."""
        by_steps = 0.0 if anneal_steps is None else learner_steps / self.learner_steps_by(anneal_steps)
        return min(1.0, max(progress, by_steps))

    def rate_progress(self, learner_steps: int, wall_seconds: float = 0.0) -> float:
        """How far --learning-rate-end's anneal is, 0 to 1. With --learning-rate-anneal-steps: the learner
        steps' share of them or of the run, whichever is further, and the clock does not count (a time
        budget stops a schedule fixed in steps without changing it, as for beta); without: :meth:`progress`,
        the clock of --max-minutes included."""
        if self.learning_rate_anneal_steps is None:
            return self.progress(learner_steps, wall_seconds)
        return self._progress_or_steps(self.progress(learner_steps), learner_steps, self.learning_rate_anneal_steps)

    def beta_progress(self, learner_steps: int) -> float:
        """How far beta's anneal is, 0 to 1: the steps' :meth:`progress` (not the clock: --max-minutes stops a
        run and leaves the defaults' schedule as it was measured), or their share of
        --priority-beta-anneal-steps when that is further (then beta holds at 1)."""
        return self._progress_or_steps(self.progress(learner_steps), learner_steps, self.priority_beta_anneal_steps)

    def beta(self, learner_steps: int) -> float:
        """Importance-sampling exponent: --priority-beta at the start, 1 at :meth:`beta_progress`'s end."""
        return self.priority_beta + self.beta_progress(learner_steps) * (1.0 - self.priority_beta)

    def validate(self, merged: bool = False) -> None:
        """Checks across flags. A ``--resume`` is checked by distributed.preflight once merged with the saved
        run's config (``merged=True``)."""
        if self.resume and not merged:
            return
        self.snapshot_points  # noqa: B018 (raises on a malformed list)
        for name, value in (("total-env-steps", self.total_env_steps), ("replay-capacity", self.replay_capacity)):
            if self.learning_starts > value:
                raise ValueError(f"--learning-starts ({self.learning_starts}) exceeds --{name} ({value})")
        if self.learning_rate_anneal_steps is not None and self.learning_rate_end is None:
            raise ValueError("--learning-rate-anneal-steps sets the length of --learning-rate-end's anneal: "
                             "give --learning-rate-end too")
        for name, value in (("learning-rate-anneal-steps", self.learning_rate_anneal_steps),
                            ("priority-beta-anneal-steps", self.priority_beta_anneal_steps)):
            if value is not None and value <= self.learning_starts:
                raise ValueError(f"--{name} ({value}) must exceed --learning-starts ({self.learning_starts}): "
                                 "the anneal runs over learner steps; raise it")
        per_stream = max(10, 4 + self.n_step + 1)  # a stack, its n-step horizon and one more
        if self.replay_capacity < per_stream * self.num_streams:
            raise ValueError(
                f"--replay-capacity must hold at least {per_stream} transitions per emulator stream "
                f"({self.num_streams} streams): use at least {per_stream * self.num_streams}"
            )


# a constant rate, and beta annealed over the whole run (--total-env-steps): Ape-X's and dqn_atari.py's schedules,
# and what runs from before the anneal flags existed had
NO_SCHEDULE = {"learning_rate_end": None, "learning_rate_anneal_steps": None, "priority_beta_anneal_steps": None}


def _apex(cfg: Config) -> dict[str, Any]:
    """Ape-X (Horgan et al. 2018) on Adam, scaled to the fleet: batches of 512 and a 2M replay at Ape-X's
    scale, 32 per 4 explorers and 1M on one machine. No dueling head: keras-rl's sits on the linear
    Dense(n_actions) layer of this network (no added capacity), and every keras-rl Atari agent loads the plain one."""
    return {
        "exploration": "ladder", "ladder_base": 0.4, "ladder_alpha": 7.0, "weight_sync_every": 400,
        "n_step": 3, "prioritized": True, "priority_alpha": 0.6, "priority_beta": 0.4,
        "double_dqn": True, "dueling": False, "gamma": 0.99, "huber_delta": 1.0, "grad_clip_norm": 40.0,
        "learning_rate": 1e-4, "adam_epsilon": 1.5e-4, "target_update": 2_500, "samples_per_insert": 8.0,
        "learning_starts": 50_000, **NO_SCHEDULE,
        "batch_size": int(min(512, 32 * max(1, cfg.num_actors // 4))),
        "replay_capacity": 2_000_000 if cfg.num_actors >= 64 else 1_000_000,
    }


def _classic(cfg: Config) -> dict[str, Any]:
    """keras-rl's examples/dqn_atari.py: what train.py runs, on the distributed machinery."""
    return {
        "exploration": "anneal", "eps_start": 1.0, "eps_end": 0.1, "eps_anneal_steps": 1_000_000,
        "n_step": 1, "prioritized": False, "double_dqn": False, "dueling": False, "gamma": 0.99,
        "huber_delta": 1.0, "grad_clip_norm": 0.0, "learning_rate": 2.5e-4, "adam_epsilon": 1e-7,
        "target_update": 2_500, "samples_per_insert": 8.0, "batch_size": 32, "learning_starts": 50_000,
        "replay_capacity": 1_000_000, **NO_SCHEDULE,
    }


def _tuned(cfg: Config) -> dict[str, Any]:
    """Apex with the learner settings the learning series chose where one CPU learner sets the pace
    (docs/learning.md); apex itself from 8 explorers on, where its batch grows and no run measured."""
    values = _apex(cfg)
    if cfg.num_actors < 8:
        values.update(batch_size=16, samples_per_insert=4.0, learning_rate=2.5e-4, learning_starts=10_000,
                      learning_rate_end=5e-5, learning_rate_anneal_steps=1_000_000,
                      priority_beta_anneal_steps=1_000_000)
    return values


PRESETS = {"tuned": _tuned, "apex": _apex, "classic": _classic}


def apply_preset(cfg: Config, given: set[str]) -> Config:
    """``cfg`` with its preset's values, except for the flags the user gave (those win)."""
    values = PRESETS[cfg.preset](cfg)
    return dataclasses.replace(cfg, **{k: v for k, v in values.items() if k not in given})


def preset_table() -> str:
    """Every preset value, for --help and docs (a value that depends on the fleet: 1 / 64 explorers)."""
    names = sorted({k for make in PRESETS.values() for k in make(Config(num_actors=1))})
    columns = {name: (make(Config(num_actors=1)), make(Config(num_actors=64))) for name, make in PRESETS.items()}
    def show(values: dict[str, Any], k: str) -> str:
        return "-" if k not in values else "unset" if values[k] is None else f"{values[k]}"

    cells = {name: {k: show(a, k) if a.get(k) == b.get(k) else f"{show(a, k)} / {show(b, k)}" for k in names}
             for name, (a, b) in columns.items()}
    w = 2 + max(map(len, names))
    rows = [f"  {'flag':<{w + 2}} {'tuned (1 / 64 explorers)':<26} {'apex (1 / 64 explorers)':<26} classic"]
    rows += [f"  --{k.replace('_', '-'):<{w}} {cells['tuned'][k]:<26} {cells['apex'][k]:<26} {cells['classic'][k]}"
             for k in names]
    return "\n".join(rows)
