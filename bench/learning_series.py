"""A learning series that can decide between configurations: K seeds of one named configuration
(an "arm": a name plus extra launch.py flags), each run alone for a wall-clock budget and scored at
fixed minutes under one protocol, one CSV row per (arm, seed, point), resumable across sessions.

    ./dqn python bench/learning_series.py --arm defaults --launch-args "--preset apex" --seeds 3 --minutes 20
    ./dqn python bench/learning_series.py --arm spi2 --launch-args "--preset apex --samples-per-insert 2" --seeds 3
    ./dqn python bench/learning_series.py --floor --seeds 3      # untrained networks, same protocol
    ./dqn python bench/learning_series.py --report               # summary.md, curves-MACHINE.png

Each run is launch.py with --seed K, --snapshot-minutes at the points (5,10,20 for a 20-minute
budget, 5,10,20,40,60 for 60), --eval-every 0 (nothing but training takes CPU while it runs) and
the arm's flags; it gets SIGTERM once its last point's snapshot is written (at most --grace seconds
past the budget). Runs go strictly one at a time: before each, the 1-minute load must fall to
--max-load (waiting up to --settle seconds), else the series stops with a one-line error (--force
runs anyway); the load is recorded before and after. Only after the run, each timed snapshot plays
--games games at epsilon 0.05 with actors.evaluator.evaluate_policy_file and its default game
seeds (seed 0: the same games for every arm). Rows are appended to --csv as each run finishes;
an (arm, seed, budget) already there from this machine is skipped, so a later session continues the
series. Each machine (CPU model, cores, RAM, as every row records it) is a series of its own: equal
wall clock is equal CPU only on one machine, so --report compares arms only within a machine. The
series' baseline arm, `defaults`, is launch.py's defaults before the tuned preset (2026-12-06), so
every arm spells `--preset apex` first: its flags then mean the same on any commit.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import os
import re
import shlex
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common, series_report  # noqa: E402
from bench.end_to_end import run_for  # noqa: E402
from flags import parse_minutes  # noqa: E402

EVAL_EPSILON = 0.05
STANDARD_POINTS = (5.0, 10.0, 20.0, 40.0, 60.0)
RUN_COLUMNS = ("arm", "launch_flags", "seed", "budget_minutes", "point_minutes", "wall_seconds", "env_steps",
               "learner_steps", "eval_mean", "eval_min", "eval_max", "eval_games", "eval_epsilon", "load_before",
               "load_after", "date", "commit", "machine", "run_dir")
FLOOR_COLUMNS = ("seed", "eval_mean", "eval_min", "eval_max", "eval_games", "eval_epsilon", "date", "commit",
                 "machine")
OWN_FLAGS = ("--seed", "--snapshot-minutes", "--run-dir", "--eval-every", "--resume")  # the series sets these
ARM_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class SeriesError(Exception):
    """Bad input or a state the series cannot go on from: one line for the user, exit 2."""


# --- the CSVs: pure functions ------------------------------------------------------------------
def read_rows(path: Path, columns: Sequence[str]) -> list[dict]:
    """The rows of a series CSV (none when it does not exist); a file without ``columns`` is an error."""
    if not path.exists():
        return []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or [])]
        if missing:
            raise SeriesError(f"{path} is not a series CSV (no column {', '.join(missing)}); give another path")
        return list(reader)


def append_rows(path: Path, rows: Iterable[dict], columns: Sequence[str]) -> None:
    """Append ``rows`` (header first in a new file), flushed to disk: a later session sees them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)
        f.flush()
        os.fsync(f.fileno())


def minutes_text(minutes: float) -> str:
    return f"{minutes:g}"


def seeds_to_run(rows: list[dict], arm: str, flags: str, seeds: Iterable[int], budget: float,
                 machine: str) -> list[int]:
    """The seeds of ``arm`` with no row yet at this budget on ``machine`` (another machine's runs are
    another series). An arm name already used with other flags, on any machine, is an error: its
    rows would mix two configurations."""
    other = {r["launch_flags"] for r in rows if r["arm"] == arm} - {flags}
    if other:
        raise SeriesError(f"arm {arm!r} was run with launch flags {sorted(other)[0]!r}, not {flags!r}; "
                          f"give this configuration another --arm name")
    done = {int(r["seed"]) for r in rows if r["arm"] == arm and r["budget_minutes"] == minutes_text(budget)
            and r["machine"] == machine}
    return [s for s in seeds if s not in done]


def default_points(budget: float) -> tuple[float, ...]:
    """5,10,20 for 20 minutes, 5,10,20,40,60 for 60: the standard points within the budget, and the budget."""
    points = [p for p in STANDARD_POINTS if p < budget]
    return (*points, budget)


# --- runs ----------------------------------------------------------------------------------------
def provenance() -> dict:
    """Date, commit (+dirty when tracked files differ) and machine, for every row."""
    def git(*a: str) -> str:
        done = subprocess.run(["git", *a], cwd=common.ROOT, capture_output=True, text=True)
        return done.stdout.strip() if done.returncode == 0 else ""

    commit = (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if git("status", "--porcelain",
                                                                                  "--untracked-files=no") else "")
    return {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"), "commit": commit,
            "machine": machine_label()}


def machine_label() -> str:
    """This machine as the rows name it (CPU model, cores, RAM): the key of its own series."""
    m = common.machine()
    return f"{m['cores']}-core {m['cpu']}, {m['ram_gb']:g} GiB"


def quiet_load(max_load: float, settle: float, force: bool) -> float:
    """The 1-minute load once it is at most ``max_load`` (waiting up to ``settle`` s for it to fall)."""
    deadline = time.monotonic() + settle
    load = os.getloadavg()[0]
    while load > max_load and not force and time.monotonic() < deadline:
        time.sleep(min(10.0, max(0.0, deadline - time.monotonic())))
        load = os.getloadavg()[0]
    if load > max_load and not force:
        raise SeriesError(f"the 1-minute load is {load:.2f} (> --max-load {max_load:g}) after {settle:g} s: "
                          f"something else is running; run on a quiet machine, or --force (the figures are "
                          f"then not comparable)")
    return load


def timed_snapshots(run_dir: Path) -> dict[float, dict]:
    """The rows of RUN_DIR/snapshots.csv taken at a --snapshot-minutes point, by point."""
    path = run_dir / "snapshots.csv"
    if not path.exists():
        return {}
    with open(path, newline="") as f:
        return {float(r["point_minutes"]): r for r in csv.DictReader(f) if r.get("point_minutes")}


def evaluate(path: Path, game: str, games: int) -> dict:
    from actors.evaluator import evaluate_policy_file

    ev = evaluate_policy_file(path, game, games, epsilon=EVAL_EPSILON)
    return {"eval_mean": round(ev["mean"], 3), "eval_min": ev["min"], "eval_max": ev["max"],
            "eval_games": len(ev["scores"]), "eval_epsilon": EVAL_EPSILON}


def run_one(args: argparse.Namespace, seed: int, points: tuple[float, ...]) -> list[dict]:
    """One launch.py run of the arm, then its timed snapshots evaluated: the rows to append."""
    load_before = quiet_load(args.max_load, args.settle, args.force)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(args.work) / f"{args.arm}-seed{seed}-{minutes_text(args.minutes)}min-{stamp}"
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    argv = ["launch.py", *shlex.split(args.launch_args), "--seed", str(seed), "--eval-every", "0",
            "--snapshot-minutes", ",".join(minutes_text(p) for p in points), "--run-dir", str(run_dir)]
    print(f"{args.arm} seed {seed}: {args.minutes:g} min, load {load_before:.2f}: {' '.join(argv)}", flush=True)
    log = run_dir.parent / f"{run_dir.name}.log"
    lines = run_for(argv, args.minutes * 60 + args.grace, common.child_env(), log,
                    stop_when=lambda: points[-1] in timed_snapshots(run_dir))
    load_after = os.getloadavg()[0]
    print("\n".join(f"    | {line}" for _, line in lines[-2:]), flush=True)
    taken = timed_snapshots(run_dir)
    missing = [minutes_text(p) for p in points if p not in taken]
    if missing:
        raise SeriesError(f"{args.arm} seed {seed}: the run ended without the snapshot at {','.join(missing)} "
                          f"min (see {log}); nothing recorded for it")
    game = "Breakout"
    if (run_dir / "config.json").exists():
        game = json.loads((run_dir / "config.json").read_text()).get("game", game)
    rows = []
    for p in points:
        snap = taken[p]
        ev = evaluate(run_dir / snap["file"], game, args.games)
        print(f"    {minutes_text(p):>4} min ({float(snap['wall_seconds']):.0f} s): {int(snap['env_steps']):,} agent "
              f"steps, {int(snap['learner_steps']):,} updates: mean {ev['eval_mean']:.2f} "
              f"[{ev['eval_min']:g}..{ev['eval_max']:g}]", flush=True)
        rows.append({"arm": args.arm, "launch_flags": args.launch_args, "seed": seed,
                     "budget_minutes": minutes_text(args.minutes), "point_minutes": minutes_text(p),
                     "wall_seconds": snap["wall_seconds"], "env_steps": snap["env_steps"],
                     "learner_steps": snap["learner_steps"], **ev, "load_before": f"{load_before:.2f}",
                     "load_after": f"{load_after:.2f}", "run_dir": str(run_dir)})
    return rows


def measure_floor(args: argparse.Namespace, path: Path) -> None:
    """Freshly initialised networks (seeds 0..K-1) under the same protocol, appended to ``path``."""
    import kerasrl_compat
    from core.atari import make_env
    from core.network import build_q_network
    from core.policy_file import save_policy

    done = {int(r["seed"]) for r in read_rows(path, FLOOR_COLUMNS)}
    tf = kerasrl_compat.load_tensorflow()
    probe = make_env("Breakout", training=False)
    n_actions = int(probe.action_space.n)
    probe.close()
    keep = Path(args.work) / "floor"  # the networks stay, for play.py (docs/learning.md, "The untrained floor")
    for seed in (s for s in range(args.seeds) if s not in done):
        tf.keras.utils.set_random_seed(seed)
        weights = save_policy(build_q_network(n_actions), keep / f"untrained-{seed}.h5")
        row = {"seed": seed, **evaluate(weights, "Breakout", args.games), **provenance()}
        append_rows(path, [row], FLOOR_COLUMNS)
        print(f"untrained seed {seed}: mean {row['eval_mean']:.2f} [{row['eval_min']:g}..{row['eval_max']:g}]"
              f" ({weights})", flush=True)


def report(args: argparse.Namespace, runs: Path, floor_path: Path) -> None:
    rows = read_rows(runs, RUN_COLUMNS)
    if not rows:
        raise SeriesError(f"no runs in {runs}: run a series first (--arm NAME)")
    written = series_report.write(rows, read_rows(floor_path, FLOOR_COLUMNS), runs.parent, args.baseline,
                                  f"`{runs.name}` and `{floor_path.name}`")
    print(f"written: {', '.join(str(p) for p in written)}")


# --- the command line ----------------------------------------------------------------------------
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, allow_abbrev=False)
    p.error = lambda message: _fail(f"{message} (see --help)")  # one line, not the usage block
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--arm", help="name of the configuration to run (letters, digits, _.+-), e.g. defaults")
    mode.add_argument("--floor", action="store_true", help="evaluate freshly initialised networks (seeds "
                      "0..K-1) under the same protocol into --floor-csv instead of running")
    mode.add_argument("--report", action="store_true", help="read --csv and --floor-csv, write summary.md and "
                      "curves-MACHINE.png (one per machine: each machine is a series of its own) beside --csv")
    p.add_argument("--launch-args", default="", help="the arm's extra launch.py flags, one string, e.g. "
                   f"'--samples-per-insert 2'; not {', '.join(OWN_FLAGS)} (the series sets them) (default: none)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..K-1 of the arm (or of the floor) [1..100] "
                   "(default: %(default)s)")
    p.add_argument("--minutes", type=float, default=20.0, help="wall-clock budget of each run, from launch.py's "
                   "start [> 0] (default: %(default)s)")
    p.add_argument("--points", default=None, help="minutes at which to keep and score the network, increasing, "
                   "the last at most --minutes (default: 5,10,20 for 20 minutes, 5,10,20,40,60 for 60: the "
                   "standard points within the budget, and the budget)")
    p.add_argument("--games", type=int, default=10, help="evaluation games per snapshot [>= 10 for the published "
                   "series; 1..256] (default: %(default)s)")
    p.add_argument("--max-load", type=float, default=0.5, help="refuse to start a run while the 1-minute load is "
                   "above this [>= 0] (default: %(default)s)")
    p.add_argument("--settle", type=float, default=300.0, help="seconds to wait for the load to fall below "
                   "--max-load before refusing [>= 0] (default: %(default)s)")
    p.add_argument("--force", action="store_true", help="run even on a loaded machine (figures not comparable)")
    p.add_argument("--grace", type=float, default=60.0, help="seconds past the budget to wait for the last "
                   "point's snapshot before SIGTERM [>= 0] (default: %(default)s)")
    p.add_argument("--csv", default="docs/series/runs.csv", help="the runs CSV (appended to; summary.md and "
                   "curves-MACHINE.png are written beside it) (default: %(default)s)")
    p.add_argument("--floor-csv", default=None, help="the floor CSV (default: floor.csv beside --csv)")
    p.add_argument("--work", default="runs/series", help="folder for the runs' directories and logs "
                   "(default: %(default)s)")
    p.add_argument("--baseline", default="defaults", help="--report: the arm the others are compared with at "
                   "each point (default: %(default)s)")
    args = p.parse_args(argv)
    if not (args.arm or args.floor or args.report):
        p.error("say what to do: --arm NAME (run a series), --floor or --report")
    checks = [(1 <= args.seeds <= 100, "--seeds must be in 1..100"),
              (math.isfinite(args.minutes) and args.minutes > 0, "--minutes must be > 0"),
              (1 <= args.games <= 256, "--games must be in 1..256"),
              (args.max_load >= 0 and args.settle >= 0 and args.grace >= 0,
               "--max-load, --settle and --grace must be >= 0"),
              (not args.arm or ARM_NAME.match(args.arm), f"--arm {args.arm!r}: use letters, digits and _.+-")]
    for ok, message in checks:
        if not ok:
            p.error(message)
    try:
        args.point_list = parse_minutes(args.points, "--points") or default_points(args.minutes)
        flags = shlex.split(args.launch_args)
    except ValueError as exc:
        p.error(str(exc))
    if args.point_list[-1] > args.minutes:
        p.error(f"--points: {args.point_list[-1]:g} is past the budget (--minutes {args.minutes:g})")
    own = sorted({f.split("=")[0] for f in flags} & set(OWN_FLAGS))
    if own:
        p.error(f"--launch-args must not set {', '.join(own)}: the series sets it")
    return args


def _fail(message: str) -> None:
    print(f"learning_series.py: error: {message}", file=sys.stderr)
    sys.exit(2)


def check_launch_flags(args: argparse.Namespace) -> None:
    """launch.py's own parser on the arm's flags, so a typo fails now, not after the first run's start-up."""
    from config import Config
    from flags import parse

    try:
        parse(Config, [*shlex.split(args.launch_args), "--seed", "0"], "", prog="launch.py (--launch-args)")
    except SystemExit:
        sys.exit(2)  # launch.py's parser printed the one line


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    runs = Path(args.csv)
    floor_path = Path(args.floor_csv) if args.floor_csv else runs.with_name("floor.csv")
    try:
        if args.report:
            report(args, runs, floor_path)
            return 0
        if args.floor:
            measure_floor(args, floor_path)
            return 0
        check_launch_flags(args)
        machine = machine_label()
        todo = seeds_to_run(read_rows(runs, RUN_COLUMNS), args.arm, args.launch_args, range(args.seeds),
                            args.minutes, machine)
        print(f"{args.arm} on {machine}: {args.minutes:g} min x seeds {todo or 'none (all in ' + str(runs) + ')'}, "
              f"points {','.join(minutes_text(p) for p in args.point_list)} min; rows go to {runs}", flush=True)
        for seed in todo:
            rows = run_one(args, seed, args.point_list)
            stamp = provenance()
            append_rows(runs, [{**r, **stamp} for r in rows], RUN_COLUMNS)
    except SeriesError as exc:
        _fail(str(exc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
