"""Command-line flags from dataclass fields: one config object per program, validated once.

Every field declared with :func:`flag` becomes ``--field-name`` with its default and help text
in ``--help``; ranges are checked before any work starts and a bad value is a one-line error.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar, TypeVar

T = TypeVar("T")
PRECISIONS = ("auto", "float32", "bfloat16")  # of the networks' arithmetic (core.network)
PRIORITIES = ("idle", "low", "normal")  # CPU priority of explorers and the evaluator (actors.cpu_priority)


def flag(
    default: Any,
    help: str,
    *,
    low: float | None = None,
    high: float | None = None,
    choices: Sequence[Any] | None = None,
    positional: bool = False,
) -> Any:
    """A dataclass field that is also a command-line flag; ``low``/``high`` are inclusive.
    ``positional``: an optional argument without a flag name (``play.py RUN_DIR``)."""
    meta = {"help": help, "low": low, "high": high, "choices": choices, "positional": positional}
    return dataclasses.field(default=default, metadata=meta)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, not the whole usage block
        sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def _bool(text: str) -> bool:
    low = text.lower()
    if low in ("1", "true", "yes", "on"):
        return True
    if low in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_TYPES = {"int": int, "float": float, "str": str, "bool": _bool}


def _base_type(f: dataclasses.Field) -> str:
    """``int``, ``float``, ``str`` or ``bool`` from a field's annotation (``int | None`` -> int)."""
    name = f.type if isinstance(f.type, str) else f.type.__name__
    return name.replace("| None", "").replace("None |", "").strip()


def _describe(f: dataclasses.Field) -> str:
    meta = f.metadata
    text = meta["help"]
    if meta["low"] is not None and meta["high"] is not None:
        text += f" [{meta['low']}..{meta['high']}]"
    elif meta["low"] is not None:
        text += f" [>= {meta['low']}]"
    return text if "(default" in meta["help"] else text + " (default: %(default)s)"


def build_parser(
    cls: type, description: str, epilog: str | None = None, prog: str | None = None
) -> argparse.ArgumentParser:
    parser = _Parser(
        prog=prog,
        allow_abbrev=False,  # a typo like --num-actor must not silently mean --num-actors
        description=description,
        epilog=epilog,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    groups = {title: parser.add_argument_group(title) for title in getattr(cls, "GROUPS", {})}
    group_of = {name: groups[title] for title, names in getattr(cls, "GROUPS", {}).items() for name in names}
    for f in dataclasses.fields(cls):
        if "help" not in f.metadata:
            continue
        where = group_of.get(f.name, parser)
        name = "--" + f.name.replace("_", "-")
        kind = _TYPES[_base_type(f)]
        if f.metadata.get("positional"):
            parser.add_argument(f.name, type=kind, nargs="?", default=f.default, metavar=f.name.upper(),
                                help=f.metadata["help"])
        elif kind is _bool:
            # a bare --flag means true, as users expect of a switch; --flag false still works
            where.add_argument(name, type=_bool, nargs="?", const=True, default=f.default, metavar="{true,false}",
                               help=_describe(f))
        else:
            where.add_argument(
                name, type=kind, default=f.default, choices=f.metadata["choices"], help=_describe(f)
            )
    return parser


def check_ranges(cfg: Any) -> None:
    """Raise ValueError naming the first field outside its declared range."""
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        low, high = f.metadata.get("low"), f.metadata.get("high")
        if value is None:
            continue
        flag_name = "--" + f.name.replace("_", "-")
        if isinstance(value, float) and not math.isfinite(value):  # nan passes every comparison
            raise ValueError(f"{flag_name} must be a finite number, got {value}")
        if low is not None and value < low:
            raise ValueError(f"{flag_name} must be >= {low}, got {value}")
        if high is not None and value > high:
            raise ValueError(f"{flag_name} must be <= {high}, got {value}")


def check_writable_folder(folder: Path, what: str) -> None:
    """Raise ValueError unless ``folder`` exists or can be made, and takes a file. Leaves no
    trace: folders it made for the probe are removed (the run makes them for real later)."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{what} {folder} is a file; give a folder")
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / ".write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        raise ValueError(f"cannot write to {what} {folder} ({exc.strerror}); choose a writable folder") from None
    finally:
        for made in missing:  # deepest first
            with contextlib.suppress(OSError):
                made.rmdir()


def check_run_dir(run_dir: Path, holds: Sequence[str], hint: str) -> None:
    """A run directory must take files and must not hold another run's ``holds`` (nothing is overwritten)."""
    if run_dir.is_dir() and any((run_dir / name).exists() for name in holds):
        raise ValueError(f"{run_dir} already holds a run; {hint}")
    check_writable_folder(run_dir, "--run-dir")


def parse(
    cls: type[T], argv: Sequence[str] | None, description: str, epilog: str | None = None, prog: str | None = None
) -> T:
    """Parse ``argv`` into ``cls``; exit 2 with a one-line message on any bad value.

    ``cls`` may define ``validate(self)`` raising ValueError for checks across fields.
    """
    parser = build_parser(cls, description, epilog, prog)
    args = parser.parse_args(argv)
    cfg = cls(**{k: v for k, v in vars(args).items()})
    try:
        check_ranges(cfg)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except ValueError as exc:
        parser.error(str(exc))
    return cfg


def parse_minutes(text: str | None, name: str) -> tuple[float, ...]:
    """``"5,10,20"`` -> (5.0, 10.0, 20.0): points in minutes, each > 0, strictly increasing (``None``
    or ``""``: none). Raises ValueError with a one-line message naming ``name``."""
    if not text or not text.strip():
        return ()
    try:
        points = tuple(float(p) for p in text.split(","))
    except ValueError:
        points = ()
    if (not points or not all(math.isfinite(p) and p > 0 for p in points)
            or any(b <= a for a, b in zip(points, points[1:], strict=False))):
        raise ValueError(f"{name} takes minutes > 0 in increasing order, comma-separated (e.g. 5,10,20), "
                         f"not {text!r}")
    return points


def hms(seconds: float) -> str:
    """``H:MM:SS`` for the progress lines of train.py and launch.py (``--:--:--`` when unknown)."""
    if not math.isfinite(seconds):
        return "--:--:--"
    s = int(seconds)
    return f"{s // 3600:d}:{s // 60 % 60:02d}:{s % 60:02d}"


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
            "preset", "game", "total_env_steps", "learning_starts", "seed",
        ),
        "algorithm: acting": (
            "num_actors", "envs_per_actor", "exploration", "ladder_base", "ladder_alpha", "epsilon", "eps_start",
            "eps_end", "eps_anneal_steps", "weight_sync_every",
        ),
        "algorithm: replay": (
            "replay_capacity", "samples_per_insert", "prioritized", "priority_alpha", "priority_beta", "n_step",
        ),
        "algorithm: learning": (
            "batch_size", "learning_rate", "learning_rate_end", "adam_epsilon", "gamma", "huber_delta",
            "grad_clip_norm", "double_dqn", "dueling", "target_update", "adam_reset", "updates_per_call",
            "init_weights",
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
                       "16, 4 samples per insert, Adam 2.5e-4, 10,000 steps of warm-up; docs/learning.md), apex "
                       "(Ape-X: n-step 3, prioritized replay, double DQN, epsilon ladder, scaled to --num-actors) or "
                       "classic (keras-rl dqn_atari.py: 1-step, uniform replay, annealed epsilon); values at the end "
                       "of --help",
                       choices=("tuned", "apex", "classic"))
    game: str = flag("Breakout", "ALE game name (Breakout, Pong, SpaceInvaders, ...)")
    total_env_steps: int = flag(10_000_000, "stop after this many agent steps over all emulators", low=1)
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
                                "over the run's learner steps", low=0.0, high=1.0)
    n_step: int = flag(3, "n-step returns, computed by the explorers (1: plain one-step DQN)", low=1, high=10)
    # --- algorithm: learning
    batch_size: int = flag(16, "transitions per learner update (tuned: 16 below 8 explorers; apex: 32 per 4 "
                           "explorers, 512 at most)", low=1, high=8192)
    learning_rate: float = flag(2.5e-4, "Adam learning rate", low=0.0, high=1.0)
    learning_rate_end: float | None = flag(None, "anneal the rate linearly from --learning-rate to this at the run's "
                                           "last learner step, as beta (set by --total-env-steps; a --resume goes "
                                           "on from the rate it reached); unset: constant", low=0.0, high=1.0)
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

    @property
    def total_learner_steps(self) -> int:
        """Learner steps the replay ratio allows over the whole run (anneals beta)."""
        spent = max(0, self.total_env_steps - self.learning_starts)
        return max(1, int(spent * self.samples_per_insert / self.batch_size))

    def beta(self, learner_steps: int) -> float:
        """Importance-sampling exponent: --priority-beta at the start, 1 at the end of the run."""
        frac = min(1.0, learner_steps / self.total_learner_steps)
        return self.priority_beta + frac * (1.0 - self.priority_beta)

    def validate(self, merged: bool = False) -> None:
        """Checks across flags. A ``--resume`` is checked by distributed.preflight once merged with the saved
        run's config (``merged=True``)."""
        if self.resume and not merged:
            return
        self.snapshot_points  # noqa: B018 (raises on a malformed list)
        for name, value in (("total-env-steps", self.total_env_steps), ("replay-capacity", self.replay_capacity)):
            if self.learning_starts > value:
                raise ValueError(f"--learning-starts ({self.learning_starts}) exceeds --{name} ({value})")
        per_stream = max(10, 4 + self.n_step + 1)  # a stack, its n-step horizon and one more
        if self.replay_capacity < per_stream * self.num_streams:
            raise ValueError(
                f"--replay-capacity must hold at least {per_stream} transitions per emulator stream "
                f"({self.num_streams} streams): use at least {per_stream * self.num_streams}"
            )


def _apex(cfg: Config) -> dict[str, Any]:
    """Ape-X (Horgan et al. 2018) on Adam, scaled to the fleet: batches of 512 and a 2M replay at Ape-X's
    scale, 32 per 4 explorers and 1M on one machine. No dueling head: keras-rl's sits on the linear
    Dense(n_actions) layer of this network (no added capacity), and every keras-rl Atari agent loads the plain one."""
    return {
        "exploration": "ladder", "ladder_base": 0.4, "ladder_alpha": 7.0, "weight_sync_every": 400,
        "n_step": 3, "prioritized": True, "priority_alpha": 0.6, "priority_beta": 0.4,
        "double_dqn": True, "dueling": False, "gamma": 0.99, "huber_delta": 1.0, "grad_clip_norm": 40.0,
        "learning_rate": 1e-4, "adam_epsilon": 1.5e-4, "target_update": 2_500, "samples_per_insert": 8.0,
        "learning_starts": 50_000,
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
        "replay_capacity": 1_000_000,
    }


def _tuned(cfg: Config) -> dict[str, Any]:
    """Apex with the learner settings the learning series chose where one CPU learner sets the pace
    (docs/learning.md); apex itself from 8 explorers on, where its batch grows and no run measured."""
    values = _apex(cfg)
    if cfg.num_actors < 8:
        values.update(batch_size=16, samples_per_insert=4.0, learning_rate=2.5e-4, learning_starts=10_000)
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
    cells = {name: {k: f"{a.get(k, '-')}" if a.get(k) == b.get(k) else f"{a[k]} / {b[k]}" for k in names}
             for name, (a, b) in columns.items()}
    rows = [f"  {'flag':<22} {'tuned (1 / 64 explorers)':<26} {'apex (1 / 64 explorers)':<26} classic"]
    rows += [f"  --{k.replace('_', '-'):<20} {cells['tuned'][k]:<26} {cells['apex'][k]:<26} {cells['classic'][k]}"
             for k in names]
    return "\n".join(rows)


def given_flags(cls: type, argv: Sequence[str] | None) -> set[str]:
    """Names of the fields whose flags appear in ``argv`` (to let them override a saved config)."""
    parser = build_parser(cls, "")
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    return set(vars(parser.parse_args(argv)))
