"""The learning series' report (``bench/learning_series.py --report``): per machine, the seeds'
mean, min and max of each arm at each point, each arm against the baseline of its own machine (a
win or loss only beyond the seeds' spread, and at equal agent steps), and one picture per machine.
Pure functions of the series CSV's rows: the tests feed them synthetic rows."""

from __future__ import annotations

import math
import re
import textwrap
from pathlib import Path

import numpy as np

MIN_SEEDS = 3  # fewer seeds than this make a screen, not a verdict (issue 21)
PALETTE = [f"C{i}" for i in range(10) if i != 7]  # matplotlib's cycle without its grey, the baseline's colour


def write(rows: list[dict], floor_rows: list[dict], folder: Path, baseline: str, sources: str) -> list[Path]:
    """summary.md and one curves-MACHINE.png per machine in ``folder``; the paths written."""
    machines = by_machine(rows)
    pictures = {machine: f"curves-{machine_slug(machine)}.png" for machine in machines}
    for machine, mine in machines.items():
        plot(mine, floor_rows, folder / pictures[machine], baseline, machine)
    summary = folder / "summary.md"
    summary.write_text(summary_markdown(rows, floor_rows, baseline, sources, pictures))
    return [summary, *(folder / p for p in pictures.values())]


def epsilon_text(rows: list[dict]) -> str:
    """The evaluation epsilon(s) the rows were scored at."""
    return "/".join(sorted({f"{float(r['eval_epsilon']):g}" for r in rows}))


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
    arms = list(dict.fromkeys(r["arm"] for r in rows))
    return sorted(out, key=lambda g: (arms.index(g["arm"]), g["budget"], g["point"]))


def floor_stats(rows: list[dict]) -> dict | None:
    return _stats([float(r["eval_mean"]) for r in rows]) if rows else None


def counted(n: int, noun: str) -> str:
    """'1 seed', '3 seeds'."""
    return f"{n} {noun}{'s' if n != 1 else ''}"


def verdict(group: dict, base: dict | None) -> str:
    """Against the baseline arm at the same budget and point: a win or loss only beyond the seeds' spread."""
    if base is None:
        return ""
    if base is group:
        return "(baseline)"
    ratio = f"{group['mean'] / base['mean']:.2f}x" if base["mean"] > 0 else "n/a"
    n = group.get("n", MIN_SEEDS)
    screen = "" if n >= MIN_SEEDS else f" (a screen: {counted(n, 'seed')}, not a verdict)"
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
            + f" (baseline {level:.1f}, {counted(len(levels), 'run')})")


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
        f"{counted(len(machines), 'machine')}).",
        f"Protocol: each timed snapshot plays {'/'.join(games)} games at epsilon {epsilon_text(rows)} on the "
        "evaluator's default game seeds (the same games for every arm), raw scores; mean, min and max are over "
        "seeds of the per-seed mean score. Runs went one at a time; load = the 1-minute load before / after each run. "
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

    groups, floor, epsilon = summarise(rows), floor_stats(floor_rows), epsilon_text(rows)
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
                        label=f"{key[0]}{minutes} ({counted(n, 'seed')})")
        if band:
            ax.fill_between(xs, [g["min"] for g in mine], [g["max"] for g in mine], color=line.get_color(), alpha=0.2)

    for ax, (arm, budget) in zip(flat, arms, strict=False):  # flat has a panel more than arms
        if arm != baseline and (baseline, budget) in curves:
            draw(ax, (baseline, budget), "point", 1.0, "grey")
        draw(ax, (arm, budget), "point", 1.0, "C0" if arm != baseline else "grey")
        ax.set_title(textwrap.fill(f"{arm}: `{curves[(arm, budget)][0]['flags'] or 'defaults'}`", 60), fontsize=9)
        ax.set(xlabel=f"minutes from launch.py's start ({budget:g}-min runs)",
               ylabel=f"score (eps {epsilon})")
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
