"""Learning curves on this machine: train.py (keras-rl) and launch.py (distributed, its default preset)
for the same wall-clock budget, one after the other, then every saved network evaluated alike.

Each trainer keeps a copy of its network every few thousand agent steps (``--snapshot-every``).
After both runs, every snapshot plays ``--eval-episodes`` games with epsilon 0.05, no-op starts
and raw scores (``actors.evaluator``), so neither trainer pays for evaluation while it trains
and both are judged by the same procedure. Wall time is counted from each process's start
(interpreter, TensorFlow and Ray start-up included) to the snapshot file's write.

Targets: at equal wall time, the distributed score >= 2x keras-rl's; at equal env frames, no
worse. "Score at time T" is the mean of the evaluation-score curve (linear between snapshots)
over the last ``--window`` fraction of the time both ran, smoothing over evaluation noise; the
same for frames, up to the frames both reached.

    ./dqn python bench/learning_curve.py                      # 45 + 45 minutes, then the evaluations
    ./dqn python bench/learning_curve.py --minutes 5 --out runs/lc-try   # a quick try

Writes OUT.csv (one row per evaluated snapshot), OUT.png (score against wall time and against
frames) and OUT.json (the summary and the machine).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402
from bench.end_to_end import run_for  # noqa: E402

FRAMES_PER_STEP = 4


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = common.parser(__doc__, allow_abbrev=False)
    p.add_argument("--minutes", type=float, default=45.0, help="wall-clock budget of each trainer (default: 45)")
    p.add_argument("--eval-episodes", type=int, default=8, help="games per snapshot evaluation (default: 8)")
    p.add_argument("--eval-epsilon", type=float, default=0.05, help="epsilon of evaluation games (default: 0.05)")
    p.add_argument("--eval-max-steps", type=int, default=27_000, help="agent-step cap per game (default: 27000)")
    p.add_argument("--snapshots", type=int, default=15, help="about this many snapshots per run (default: 15)")
    p.add_argument("--train-rate", type=float, default=80.0,
                   help="expected train.py agent steps/s, to space its snapshots (default: 80)")
    p.add_argument("--launch-rate", type=float, default=150.0,
                   help="expected launch.py agent steps/s, to space its snapshots (default: 150)")
    p.add_argument("--learning-starts", type=int, default=50_000,
                   help="agent steps before learning, both trainers (default: 50000, train.py's default)")
    p.add_argument("--memory", type=int, default=1_000_000, help="replay size of both (default: 1000000)")
    p.add_argument("--launch-args", default="", help="extra launch.py flags, e.g. '--preset classic'")
    p.add_argument("--train-args", default="", help="extra train.py flags, e.g. '--double-dqn true'")
    p.add_argument("--window", type=float, default=0.2,
                   help="fraction of the common time (or frames) at its end averaged for the ratios (default: 0.2)")
    p.add_argument("--work", default=None, help="folder for the two runs (default: a temporary one, kept)")
    p.add_argument("--out", default="runs/bench/learning_curve",
                   help="output prefix: OUT.csv, OUT.png, OUT.json; docs/learning_curve is the committed one "
                        "(default: %(default)s)")
    p.add_argument("--only", choices=("train", "launch"), default=None,
                   help="run one trainer only (with --baseline-csv: launch.py against an earlier keras-rl run)")
    p.add_argument("--baseline-csv", default=None,
                   help="take keras-rl's rows from this earlier OUT.csv instead of running train.py (with --only "
                        "launch; docs/learning_curve.csv holds one)")
    p.add_argument("--compare-csv", default=None,
                   help="draw the launch.py rows of this earlier OUT.csv beside this run's (e.g. a previous default)")
    p.add_argument("--compare-label", default="launch.py, earlier run",
                   help="legend label of the --compare-csv curve (default: %(default)s)")
    p.add_argument("--evaluate-only", action="store_true", help="skip training; evaluate the runs in --work")
    args = common.parse(p, argv, seed="random seed of both runs", json_path=False)
    if args.minutes <= 0 or args.eval_episodes < 1 or args.snapshots < 2:
        p.error("--minutes must be > 0, --eval-episodes >= 1, --snapshots >= 2")
    if args.evaluate_only and not args.work:
        p.error("--evaluate-only needs --work (the folder of an earlier run)")
    if args.baseline_csv and args.only != "launch":
        p.error("--baseline-csv replaces the train.py run: give it with --only launch")
    for path in (args.baseline_csv, args.compare_csv):
        if path and not Path(path).is_file():
            p.error(f"no such file: {path}")
    return args


def snapshot_every(rate: float, minutes: float, count: int) -> int:
    return max(1_000, int(rate * minutes * 60 / count) // 1_000 * 1_000)


def train_argv(args: argparse.Namespace, run_dir: Path) -> list[str]:
    every = snapshot_every(args.train_rate, args.minutes, args.snapshots)
    return ["train.py", "--steps", "100000000", "--warmup", str(args.learning_starts), "--memory-limit",
            str(args.memory), "--output", str(run_dir / "policy.h5"), "--run-dir", str(run_dir),
            "--snapshot-every", str(every), "--checkpoint-every", "100000000", "--seed", str(args.seed),
            *args.train_args.split()]


def launch_argv(args: argparse.Namespace, run_dir: Path) -> list[str]:
    every = snapshot_every(args.launch_rate, args.minutes, args.snapshots)
    return ["launch.py", "--total-env-steps", "100000000", "--learning-starts", str(args.learning_starts),
            "--replay-capacity", str(args.memory), "--run-dir", str(run_dir), "--snapshot-every", str(every),
            "--eval-every", "0", "--export-every", "100000000", "--checkpoint-every", "100000000",
            "--seed", str(args.seed), *args.launch_args.split()]


def train_one(name: str, argv: list[str], run_dir: Path, seconds: float) -> float:
    """Run one trainer for ``seconds`` (then SIGTERM: it saves and exits); return its start time."""
    print(f"{name}: {seconds / 60:.1f} min: {' '.join(argv)}", flush=True)
    start = time.time()
    (run_dir.parent / f"{name}.start").write_text(f"{start}\n")
    lines = run_for(argv, seconds, common.child_env(), run_dir.parent / f"{name}.log")
    tail = [line for _, line in lines[-3:]]
    print("\n".join(f"    | {line}" for line in tail), flush=True)
    return start


def snapshots_of(run_dir: Path, start: float) -> list[dict]:
    """Rows of RUN_DIR/snapshots.csv with wall seconds counted from the process start."""
    path = run_dir / "snapshots.csv"
    if not path.exists():
        return []
    rows = []
    with open(path) as f:
        for row in csv.DictReader(f):
            file = run_dir / row["file"] if not Path(row["file"]).is_absolute() else Path(row["file"])
            rows.append({"file": str(file), "env_steps": int(row["env_steps"]),
                         "learner_steps": int(row["learner_steps"]),
                         "wall_seconds": round(file.stat().st_mtime - start, 1)})
    return rows


def evaluate_all(args: argparse.Namespace, work: Path) -> list[dict]:
    from actors.evaluator import evaluate_policy_file

    results = []
    for trainer in ("train", "launch"):
        start_file = work / f"{trainer}.start"
        if not start_file.exists():
            continue
        rows = snapshots_of(work / trainer, float(start_file.read_text()))
        print(f"evaluating {len(rows)} {trainer} snapshots x {args.eval_episodes} games", flush=True)
        for row in rows:
            # the same seed for every snapshot of both trainers: the same no-op starts, a paired comparison
            ev = evaluate_policy_file(row["file"], "Breakout", args.eval_episodes, args.eval_epsilon,
                                      seed=args.seed + 1000, max_steps=args.eval_max_steps)
            results.append({"trainer": "keras-rl train.py" if trainer == "train" else "distributed launch.py",
                            **row, "frames": row["env_steps"] * FRAMES_PER_STEP, "mean": ev["mean"],
                            "min": ev["min"], "max": ev["max"], "episodes": len(ev["scores"]),
                            "truncated": ev.get("truncated", 0)})
            print(f"    {trainer} step {row['env_steps']:>9,} at {row['wall_seconds'] / 60:5.1f} min: "
                  f"mean {ev['mean']:6.2f} (min {ev['min']:g}, max {ev['max']:g})", flush=True)
    return results


def earlier_rows(path: str, prefix: str, label: str | None = None) -> list[dict]:
    """Rows of an earlier OUT.csv whose trainer starts with ``prefix`` (renamed ``label`` if given)."""
    with open(path, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["trainer"].startswith(prefix)]
    numeric = ("env_steps", "frames", "learner_steps", "episodes", "truncated")
    return [{**r, **{k: int(r[k]) for k in numeric}, **{k: float(r[k]) for k in ("wall_seconds", "mean", "min", "max")},
             "trainer": label or r["trainer"]} for r in rows]


def tail_mean(rows: list[dict], key: str, end: float, window: float) -> float | None:
    """Mean of the score curve (linear between snapshots) over the last ``window`` fraction of [0, end]."""
    import numpy as np

    points = sorted((r[key], r["mean"]) for r in rows)
    if not points or points[0][0] > end:
        return None
    xs, ys = zip(*points, strict=True)
    grid = np.linspace(end * (1 - window), end, 21)
    return float(np.mean(np.interp(grid, xs, ys)))


def summarise(rows: list[dict], window: float) -> dict:
    kr = [r for r in rows if r["trainer"].startswith("keras-rl")]
    ds = [r for r in rows if r["trainer"].startswith("distributed")]
    out: dict = {"snapshots": {"keras-rl": len(kr), "distributed": len(ds)}}
    if not kr or not ds:
        return out
    t_end = min(max(r["wall_seconds"] for r in kr), max(r["wall_seconds"] for r in ds))
    f_end = min(max(r["frames"] for r in kr), max(r["frames"] for r in ds))
    for name, key, end in (("equal_wall_time", "wall_seconds", t_end), ("equal_frames", "frames", f_end)):
        a, b = tail_mean(ds, key, end, window), tail_mean(kr, key, end, window)
        ratio = a / b if a is not None and b not in (None, 0) else None
        out[name] = {"at": end, "distributed": a, "keras_rl": b, "ratio": ratio}
    for label in sorted({r["trainer"] for r in rows} - {"keras-rl train.py", "distributed launch.py"}):
        other = [r for r in rows if r["trainer"] == label]  # an earlier run drawn beside: same points in time
        out.setdefault("compared", {})[label] = {name: tail_mean(other, key, end, window) for name, key, end in
                                                 (("equal_wall_time", "wall_seconds", t_end),
                                                  ("equal_frames", "frames", f_end))}
    wall, frames = out["equal_wall_time"], out["equal_frames"]
    out["targets"] = {
        "wall_2x": common.verdict(wall["ratio"] is not None and wall["ratio"] >= 2.0),
        "frames_no_worse": common.verdict(frames["distributed"] is not None and frames["keras_rl"] is not None
                                          and frames["distributed"] >= frames["keras_rl"]),
    }
    return out


def plot(rows: list[dict], path: Path, minutes: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    compared = sorted({r["trainer"] for r in rows} - {"keras-rl train.py", "distributed launch.py"})
    styles = [("keras-rl train.py", "o-"), ("distributed launch.py", "s-"), *((c, "^--") for c in compared)]
    for trainer, style in styles:
        mine = sorted((r for r in rows if r["trainer"] == trainer), key=lambda r: r["env_steps"])
        if not mine:
            continue
        left.plot([r["wall_seconds"] / 60 for r in mine], [r["mean"] for r in mine], style, label=trainer, ms=4)
        right.plot([r["frames"] / 1e6 for r in mine], [r["mean"] for r in mine], style, label=trainer, ms=4)
    left.set(xlabel="wall-clock minutes (from process start)", ylabel="evaluation score (raw, eps 0.05)",
             title=f"Breakout, 2 cores, {minutes:g} min each")
    right.set(xlabel="emulator frames (millions)", title="same runs against frames")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    machine = common.machine()
    common.print_machine(machine)
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="learning-curve-"))
    work.mkdir(parents=True, exist_ok=True)
    seconds = args.minutes * 60
    if not args.evaluate_only:
        if args.only in (None, "train"):
            train_one("train", train_argv(args, work / "train"), work / "train", seconds)
        if args.only in (None, "launch"):
            train_one("launch", launch_argv(args, work / "launch"), work / "launch", seconds)
    rows = evaluate_all(args, work)
    if args.baseline_csv:
        rows = earlier_rows(args.baseline_csv, "keras-rl") + rows
    if args.compare_csv:
        rows += earlier_rows(args.compare_csv, "distributed", args.compare_label)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.with_suffix(".csv"), "w", newline="") as f:
        fields = ["trainer", "env_steps", "frames", "learner_steps", "wall_seconds", "mean", "min", "max",
                  "episodes", "truncated", "file"]
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, out.with_suffix(".png"), args.minutes)
    summary = summarise(rows, args.window)
    result = {"machine": machine, "args": vars(args), "work": str(work), "summary": summary,
              "command": "./dqn python bench/learning_curve.py " + " ".join(argv or sys.argv[1:])}
    common.write_json(str(out.with_suffix(".json")), result)
    for name in ("equal_wall_time", "equal_frames"):
        s = summary.get(name)
        if s:
            ratio = f"{s['ratio']:.2f}x" if s["ratio"] is not None else "n/a"
            print(f"{name}: distributed {s['distributed']}, keras-rl {s['keras_rl']}, ratio {ratio}")
    if "targets" in summary:
        print(f"targets: 2x at equal wall time {summary['targets']['wall_2x']}; no worse at equal frames "
              f"{summary['targets']['frames_no_worse']}")
    print(json.dumps(summary, indent=2))
    return result


if __name__ == "__main__":
    main()
