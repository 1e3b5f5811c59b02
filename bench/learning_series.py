"""A learning series that can decide between configurations: K seeds of one named configuration
(an "arm": a name plus extra launch.py flags), each run alone for a wall-clock budget and scored at
fixed minutes under one protocol, one CSV row per (arm, seed, point), resumable across sessions.

    ./dqn python bench/learning_series.py --arm defaults --seeds 3 --minutes 20
    ./dqn python bench/learning_series.py --arm spi2 --launch-args "--samples-per-insert 2" --seeds 3
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
wall clock is equal CPU only on one machine, so --report compares arms only within a machine.
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
import textwrap
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402
from bench.end_to_end import run_for  # noqa: E402
from config import parse_minutes  # noqa: E402

EVAL_EPSILON = 0.05
STANDARD_POINTS = (5.0, 10.0, 20.0, 40.0, 60.0)
RUN_COLUMNS = ("arm", "launch_flags", "seed", "budget_minutes", "point_minutes", "wall_seconds", "env_steps",
               "learner_steps", "eval_mean", "eval_min", "eval_max", "eval_games", "eval_epsilon", "load_before",
               "load_after", "date", "commit", "machine", "run_dir")
FLOOR_COLUMNS = ("seed", "eval_mean", "eval_min", "eval_max", "eval_games", "eval_epsilon", "date", "commit",
                 "machine")
MIN_SEEDS = 3  # fewer seeds than this make a screen, not a verdict (issue 21)
OWN_FLAGS = ("--seed", "--snapshot-minutes", "--run-dir", "--eval-every", "--resume")  # the series sets these
PALETTE = [f"C{i}" for i in range(10) if i != 7]  # matplotlib's cycle without its grey, the baseline's colour
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


def by_machine(rows: list[dict]) -> dict[str, list[dict]]:
    """The rows of each machine, machines in the order first seen."""
    out: dict[str, list[dict]] = {}
    for r in rows:
        out.setdefault(r["machine"], []).append(r)
    return out


def machine_slug(machine: str) -> str:
    """A file-name part for a machine label: '2-core Intel(R) Xeon(R) Processor, 23.5 GiB' ->
    '2-core-intel-xeon-23-5-gib'."""
    plain = re.sub(r"\((r|tm)\)|\bprocessor\b", "", machine.lower())
    return re.sub(r"[^a-z0-9]+", "-", plain).strip("-") or "unknown"


def default_points(budget: float) -> tuple[float, ...]:
    """5,10,20 for 20 minutes, 5,10,20,40,60 for 60: the standard points within the budget, and the budget."""
    points = [p for p in STANDARD_POINTS if p < budget]
    return (*points, budget)


def _stats(values: list[float]) -> dict:
    return {"n": len(values), "mean": sum(values) / len(values), "min": min(values), "max": max(values)}


def summarise(rows: list[dict]) -> list[dict]:
    """Per (arm, budget, point), in the order first seen: the seeds' eval means (mean, min, max, n),
    and the mean agent steps, learner updates, wall seconds and loads."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["arm"], r["budget_minutes"], float(r["point_minutes"])), []).append(r)
    out = []
    for (arm, budget, point), members in groups.items():
        stat = _stats([float(r["eval_mean"]) for r in members])

        def avg(key: str, members: list[dict] = members) -> float:
            return sum(float(r[key]) for r in members) / len(members)

        out.append({"arm": arm, "budget": float(budget), "point": point, "flags": members[0]["launch_flags"],
                    **stat, "seeds": sorted(int(r["seed"]) for r in members), "env_steps": avg("env_steps"),
                    "learner_steps": avg("learner_steps"), "wall_seconds": avg("wall_seconds"),
                    "load_before": avg("load_before"), "load_after": avg("load_after")})
    return sorted(out, key=lambda g: (list(dict.fromkeys(r["arm"] for r in rows)).index(g["arm"]), g["budget"],
                                      g["point"]))


def floor_stats(rows: list[dict]) -> dict | None:
    return _stats([float(r["eval_mean"]) for r in rows]) if rows else None


def seeds_text(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def verdict(group: dict, base: dict | None) -> str:
    """Against the baseline arm at the same budget and point: a win or loss only beyond the seeds' spread."""
    if base is None:
        return ""
    if base is group:
        return "(baseline)"
    ratio = f"{group['mean'] / base['mean']:.2f}x" if base["mean"] > 0 else "n/a"
    n = group.get("n", MIN_SEEDS)
    screen = "" if n >= MIN_SEEDS else f" (a screen: {seeds_text(n)}, not a verdict)"
    if group["min"] > base["max"]:
        return f"{ratio}, wins (every seed above the baseline's best){screen}"
    if group["max"] < base["min"]:
        return f"{ratio}, loses (every seed below the baseline's worst){screen}"
    return f"{ratio}, within the spread"


def run_curves(rows: list[dict], arm: str) -> list[list[tuple[float, float]]]:
    """Each run of ``arm`` (one seed at one budget) as its (agent steps, score) points in step order."""
    runs: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for r in rows:
        if r["arm"] == arm:
            runs.setdefault((r["budget_minutes"], str(r["seed"])), []).append((float(r["env_steps"]),
                                                                                float(r["eval_mean"])))
    return [sorted(points) for points in runs.values()]


def at_equal_steps(group: dict, baseline: str, runs: list[list[tuple[float, float]]], floor: dict | None) -> str:
    """The arm's mean against the baseline's at the same agent steps (issue 21's "no worse per agent
    step"): each baseline run's points joined by straight lines from the untrained floor at step 0,
    read at the arm's agent steps, averaged over the runs (of any budget) that got that far. Runs, not
    per-budget means: a 20-minute and a 60-minute run of one arm are the same run for 20 minutes."""
    if not runs:
        return ""
    if group["arm"] == baseline:
        return "(baseline)"
    steps, start = group["env_steps"], floor["mean"] if floor else 0.0
    levels = [float(np.interp(steps, [0.0, *(x for x, _ in run)], [start, *(y for _, y in run)]))
              for run in runs if run[-1][0] >= steps]
    if not levels:
        return f"past the baseline's {max(run[-1][0] for run in runs):,.0f} steps"
    level = sum(levels) / len(levels)
    return ((f"{group['mean'] / level:.2f}x" if level > 0 else "n/a")
            + f" (baseline {level:.1f}, {len(levels)} run{'s' if len(levels) != 1 else ''})")


def summary_markdown(rows: list[dict], floor_rows: list[dict], baseline: str, sources: str,
                     pictures: dict[str, str] | None = None) -> str:
    """docs/series/summary.md: the untrained floor, then per machine one table row per (arm, budget,
    point), each compared with the baseline of that machine only. ``pictures``: machine -> its PNG's name."""
    floor = floor_stats(floor_rows)
    games = sorted({r["eval_games"] for r in rows})
    machines = by_machine(rows)
    lines = [
        "# Learning series: summary", "",
        f"Written by `./dqn python bench/learning_series.py --report` from {sources} ({len(rows)} rows, "
        f"{len(machines)} machine{'s' if len(machines) != 1 else ''}).",
        f"Protocol: each timed snapshot plays {'/'.join(games)} games at epsilon {EVAL_EPSILON} on the evaluator's "
        "default game seeds (the same games for every arm), raw scores; mean, min and max are over seeds of the "
        "per-seed mean score. Runs went one at a time; load = the 1-minute load before / after each run. "
        "Each machine is a series of its own: equal wall clock is equal CPU only on one machine, so arms are "
        "compared only with the baseline run on the same machine.", "",
    ]
    if floor:
        lines.append(f"Untrained floor ({floor['n']} freshly initialised networks, same protocol; a property of the "
                     f"networks, not of the machine): mean {floor['mean']:.2f}, min {floor['min']:.2f}, max "
                     f"{floor['max']:.2f}.")
    else:
        lines.append("Untrained floor: not measured yet (`--floor`).")
    lines += ["", "*vs baseline*: the ratio of means at the same budget and point, a win or loss only when every "
              "seed is beyond the baseline's spread. *at equal agent steps*: the ratio to the baseline's mean at "
              "this point's agent steps: each baseline run's points (any budget) joined by straight lines from the "
              "floor at step 0, averaged over the runs that got that far."]
    for machine, mine in machines.items():
        groups, curves = summarise(mine), run_curves(mine, baseline)
        base = {(g["budget"], g["point"]): g for g in groups if g["arm"] == baseline}
        picture = (pictures or {}).get(machine)
        lines += ["", f"## {machine}", "",
                  f"{len(mine)} rows, baseline arm `{baseline}`" + ("" if base else " (no rows yet on this machine)")
                  + (f"; curves: [{picture}]({picture})" if picture else "") + ".", "",
                  "| arm | budget min | point min | seeds | mean | min | max | floor | agent steps | updates | "
                  "load | vs baseline | at equal agent steps | launch flags |", "|" + "---|" * 14]
        for g in groups:
            cells = [g["arm"], f"{g['budget']:g}", f"{g['point']:g}", str(g["n"]),
                     *(f"{g[k]:.2f}" for k in ("mean", "min", "max")), f"{floor['mean']:.2f}" if floor else "-",
                     f"{g['env_steps']:,.0f}", f"{g['learner_steps']:,.0f}",
                     f"{g['load_before']:.2f} / {g['load_after']:.2f}",
                     verdict(g, base.get((g["budget"], g["point"]))), at_equal_steps(g, baseline, curves, floor),
                     f"`{g['flags'] or '(defaults)'}`"]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def plot(rows: list[dict], floor_rows: list[dict], path: Path, baseline: str = "defaults", machine: str = "") -> None:
    """One machine's series: one panel per arm and budget against the baseline of that budget (mean
    over seeds, band = min..max, floor line), then every arm's mean against agent steps and against
    learner updates (which of the two the score follows is what the series keeps asking)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups, floor = summarise(rows), floor_stats(floor_rows)
    curves: dict[tuple[str, float], list[dict]] = {}
    for g in groups:
        curves.setdefault((g["arm"], g["budget"]), []).append(g)
    # a panel per arm and budget, and one for each budget only the baseline has run (its own curve)
    arms = [key for key in curves if key[0] != baseline or not any(a != baseline and b == key[1] for a, b in curves)]
    budgets = {arm: {b for a, b in curves if a == arm} for arm, _ in curves}
    cols = min(3, len(arms) + 2)
    rows_n = math.ceil((len(arms) + 2) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.6 * cols, 3.6 * rows_n), squeeze=False)
    flat = list(axes.flat)

    def draw(ax, key: tuple[str, float], x: str, scale: float, color: str | None, band: bool = True) -> None:
        mine = curves[key]
        xs = [g[x] * scale for g in mine]
        n = max(g["n"] for g in mine)
        minutes = f" {key[1]:g} min" if len(budgets[key[0]]) > 1 else ""  # which of an arm's budgets
        line, = ax.plot(xs, [g["mean"] for g in mine], "o-" if key[1] <= 20 else "o--", ms=3, color=color,
                        label=f"{key[0]}{minutes} ({seeds_text(n)})")
        if band:
            ax.fill_between(xs, [g["min"] for g in mine], [g["max"] for g in mine], color=line.get_color(), alpha=0.2)

    for ax, (arm, budget) in zip(flat, arms, strict=False):  # flat has a panel more than arms
        if arm != baseline and (baseline, budget) in curves:
            draw(ax, (baseline, budget), "point", 1.0, "grey")
        draw(ax, (arm, budget), "point", 1.0, "C0" if arm != baseline else "grey")
        ax.set_title(textwrap.fill(f"{arm}: `{curves[(arm, budget)][0]['flags'] or 'defaults'}`", 60), fontsize=9)
        ax.set(xlabel=f"minutes from launch.py's start ({budget:g}-min runs)", ylabel=f"score (eps {EVAL_EPSILON})")
    for ax, x, scale, unit in ((flat[len(arms)], "env_steps", 1e-6, "agent steps (millions)"),
                               (flat[len(arms) + 1], "learner_steps", 1e-3, "learner updates (thousands)")):
        for i, key in enumerate(curves):
            draw(ax, key, x, scale, "grey" if key[0] == baseline else PALETTE[i % len(PALETTE)], band=False)
        ax.set(xlabel=f"{unit}, mean over seeds", title=f"every arm against {unit.split(' (')[0]}")
    for ax in flat[: len(arms) + 2]:
        if floor:
            ax.axhline(floor["mean"], color="black", ls=":", lw=1, label=f"untrained ({floor['mean']:.1f})")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in flat[len(arms) + 2:]:
        ax.axis("off")
    fig.suptitle("learning series" + (f" on {machine}" if machine else "") + ": mean evaluation score over seeds, "
                 "band = min..max over seeds", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.99))  # leave the suptitle its own line
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)


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
    floor_rows = read_rows(floor_path, FLOOR_COLUMNS)
    pictures = {machine: f"curves-{machine_slug(machine)}.png" for machine in by_machine(rows)}
    for machine, mine in by_machine(rows).items():
        plot(mine, floor_rows, runs.with_name(pictures[machine]), args.baseline, machine)
    summary = runs.with_name("summary.md")
    summary.write_text(summary_markdown(rows, floor_rows, args.baseline, f"`{runs.name}` and `{floor_path.name}`",
                                        pictures))
    print(f"written: {summary}, {', '.join(str(runs.with_name(p)) for p in pictures.values())}")


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
    from config import Config, parse

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
