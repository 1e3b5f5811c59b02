"""bench/learning_series.py and bench/series_report.py without training: the CSV's resume/skip logic,
the points, the report on synthetic rows, and its one-line errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest

from bench import learning_series as ls
from bench import series_report as sr


def _rows(arm: str, flags: str, seeds: range, budget: float, points: tuple[float, ...],
          rng: np.random.Generator, machine: str = "2-core test") -> list[dict]:
    rows = []
    for seed in seeds:
        for i, p in enumerate(points):
            rows.append({"arm": arm, "launch_flags": flags, "seed": seed, "budget_minutes": f"{budget:g}",
                         "point_minutes": f"{p:g}", "wall_seconds": round(60 * p + rng.uniform(0, 1), 1),
                         "env_steps": int(12_000 * p * (1 + rng.uniform(-0.1, 0.1))),
                         "learner_steps": int(3_000 * p), "eval_mean": round(float(rng.uniform(0, 5) * (i + 1)), 3),
                         "eval_min": 0, "eval_max": 9, "eval_games": 10, "eval_epsilon": 0.05,
                         "load_before": f"{rng.uniform(0, 0.5):.2f}", "load_after": "1.90", "date": "2026-12-05",
                         "commit": "abc1234", "machine": machine, "run_dir": f"runs/{arm}-{seed}"})
    return rows


def test_a_series_continues_where_the_csv_ends(tmp_path: Path) -> None:
    """Rows written by one session are skipped by the next, per (arm, seed, budget, machine); header once."""
    path = tmp_path / "series" / "runs.csv"
    rng = np.random.default_rng(0)
    assert ls.read_rows(path, ls.RUN_COLUMNS) == []
    here, other = "2-core test", "2-core other CPU"
    assert ls.seeds_to_run([], "defaults", "", range(3), 20, here) == [0, 1, 2]
    ls.append_rows(path, _rows("defaults", "", range(1), 20, (5, 10, 20), rng), ls.RUN_COLUMNS)
    ls.append_rows(path, _rows("defaults", "", range(2, 3), 20, (5, 10, 20), rng), ls.RUN_COLUMNS)
    ls.append_rows(path, _rows("spi2", "--samples-per-insert 2", range(1), 20, (5, 10, 20), rng, other),
                   ls.RUN_COLUMNS)
    rows = ls.read_rows(path, ls.RUN_COLUMNS)
    assert len(rows) == 9 and path.read_text().count("arm,launch_flags") == 1
    assert ls.seeds_to_run(rows, "defaults", "", range(3), 20, here) == [1]
    assert ls.seeds_to_run(rows, "defaults", "", range(5), 20.0, here) == [1, 3, 4]
    assert ls.seeds_to_run(rows, "defaults", "", range(3), 60, here) == [0, 1, 2], "another budget is another run"
    assert ls.seeds_to_run(rows, "defaults", "", range(3), 20, other) == [0, 1, 2], "another machine: another series"
    assert ls.seeds_to_run(rows, "spi2", "--samples-per-insert 2", range(2), 20, here) == [0, 1]
    assert ls.seeds_to_run(rows, "spi2", "--samples-per-insert 2", range(2), 20, other) == [1]
    with pytest.raises(ls.SeriesError, match="arm 'defaults' was run with launch flags ''"):
        ls.seeds_to_run(rows, "defaults", "--batch-size 64", range(3), 20, here)
    with pytest.raises(ls.SeriesError, match="arm 'spi2' was run with launch flags '--samples-per-insert 2'"):
        ls.seeds_to_run(rows, "spi2", "--samples-per-insert 4", range(3), 20, here), "a name is one config everywhere"


def test_a_csv_of_something_else_is_refused(tmp_path: Path) -> None:
    other = tmp_path / "other.csv"
    other.write_text("file,env_steps\nx,1\n")
    with pytest.raises(ls.SeriesError, match=r"other.csv is not a series CSV \(no column arm, launch_flags"):
        ls.read_rows(other, ls.RUN_COLUMNS)


def test_default_points_are_the_standard_ones_within_the_budget_and_the_budget() -> None:
    assert ls.default_points(20) == (5, 10, 20)
    assert ls.default_points(60) == (5, 10, 20, 40, 60)
    assert ls.default_points(30) == (5, 10, 20, 30)
    assert ls.default_points(1.5) == (1.5,)


def test_the_report_summarises_each_arm_and_point_over_seeds(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    base = _rows("defaults", "", range(3), 20, (5, 10, 20), rng)
    other = _rows("spi2", "--samples-per-insert 2", range(3), 20, (5, 10, 20), rng)
    for r in other:  # every seed of spi2 beats every seed of the baseline at 20 min: a decided win
        if r["point_minutes"] == "20":
            r["eval_mean"] = 100 + r["seed"]
    floor = [{"seed": s, "eval_mean": m, "eval_min": 0, "eval_max": 2, "eval_games": 10, "eval_epsilon": 0.05,
              "date": "", "commit": "", "machine": ""} for s, m in enumerate(rng.uniform(0, 1, 3).round(3))]
    runs = tmp_path / "runs.csv"
    ls.append_rows(runs, base + other, ls.RUN_COLUMNS)
    ls.append_rows(tmp_path / "floor.csv", floor, ls.FLOOR_COLUMNS)
    groups = sr.summarise(ls.read_rows(runs, ls.RUN_COLUMNS))
    assert [(g["arm"], g["point"]) for g in groups] == [(a, p) for a in ("defaults", "spi2") for p in (5, 10, 20)]
    for g in groups:
        mine = [r for r in base + other if r["arm"] == g["arm"] and float(r["point_minutes"]) == g["point"]]
        scores = [float(r["eval_mean"]) for r in mine]
        assert g["n"] == 3 and g["seeds"] == [0, 1, 2]
        assert g["mean"] == pytest.approx(np.mean(scores)) and (g["min"], g["max"]) == (min(scores), max(scores))
        assert g["env_steps"] == pytest.approx(np.mean([r["env_steps"] for r in mine]))
    assert ls.main(["--report", "--csv", str(runs)]) == 0
    md = (tmp_path / "summary.md").read_text()
    floor_mean = np.mean([r["eval_mean"] for r in floor])
    assert f"mean {floor_mean:.2f}" in md
    spi2_20 = next(line for line in md.splitlines() if line.startswith("| spi2 | 20 | 20 |"))
    assert "wins (every seed above the baseline's best)" in spi2_20 and "`--samples-per-insert 2`" in spi2_20
    assert f"| {np.mean([100, 101, 102]):.2f} | 100.00 | 102.00 | {floor_mean:.2f} |" in spi2_20
    assert "## 2-core test" in md and "curves: [curves-2-core-test.png](curves-2-core-test.png)" in md
    assert (tmp_path / "curves-2-core-test.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_each_machine_is_a_series_of_its_own(tmp_path: Path) -> None:
    """An arm run on a second machine is compared with that machine's baseline, never with the first's,
    and each machine gets its own picture."""
    rng = np.random.default_rng(3)
    fast, slow = "2-core Intel(R) Xeon(R) Processor, 23.5 GiB", "2-core AMD EPYC, 23.5 GiB"
    rows = _rows("defaults", "", range(3), 20, (5, 10, 20), rng, fast)
    rows += _rows("defaults", "", range(3), 20, (5, 10, 20), rng, slow)
    rows += _rows("lr2", "--learning-rate 0.0002", range(3), 20, (5, 10, 20), rng, slow)
    for r in rows:  # the fast machine's baseline scores 50+, the slow one's 10+, the arm (slow) 30+ at 20 min
        if r["point_minutes"] == "20":
            r["eval_mean"] = {("defaults", fast): 50, ("defaults", slow): 10, ("lr2", slow): 30}[
                (r["arm"], r["machine"])] + r["seed"]
    runs = tmp_path / "runs.csv"
    ls.append_rows(runs, rows, ls.RUN_COLUMNS)
    assert ls.main(["--report", "--csv", str(runs)]) == 0
    md = (tmp_path / "summary.md").read_text()
    assert "2 machines" in md
    fast_part, slow_part = md.split(f"## {fast}")[1].split(f"## {slow}")
    assert "| lr2 |" not in fast_part
    lr2_20 = next(line for line in slow_part.splitlines() if line.startswith("| lr2 | 20 | 20 |"))
    assert "2.82x, wins (every seed above the baseline's best)" in lr2_20, "31 against the slow machine's 11"
    assert "| defaults | 20 | 20 | 3 | 51.00 |" in fast_part and "| defaults | 20 | 20 | 3 | 11.00 |" in slow_part
    for name in ("curves-2-core-intel-xeon-23-5-gib.png", "curves-2-core-amd-epyc-23-5-gib.png"):
        assert (tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"[{name}]({name})" in md


def test_equal_agent_steps_reads_each_baseline_run_from_the_floor_and_averages_those_that_got_there() -> None:
    """Issue 21's "no worse per agent step": every baseline run's curve (from the untrained floor at
    step 0) read at the arm's agent steps, averaged over the runs, of any budget, that reached them."""
    def row(budget: int, seed: int, steps: int, score: float) -> dict:
        return {"arm": "defaults", "budget_minutes": str(budget), "seed": str(seed), "env_steps": str(steps),
                "eval_mean": str(score)}

    rows = [row(20, 0, 100_000, 10.0), row(20, 0, 200_000, 20.0), row(20, 1, 100_000, 20.0),
            row(20, 1, 200_000, 40.0), row(60, 0, 200_000, 30.0), row(60, 0, 600_000, 40.0),
            {**row(20, 0, 1, 99.0), "arm": "spi2"}]
    runs = sr.run_curves(rows, "defaults")
    assert sorted(runs) == [[(100_000.0, 10.0), (200_000.0, 20.0)], [(100_000.0, 20.0), (200_000.0, 40.0)],
                            [(200_000.0, 30.0), (600_000.0, 40.0)]]
    floor = {"mean": 5.0}

    def arm(steps: float, mean: float) -> dict:
        return {"arm": "spi2", "env_steps": steps, "mean": mean}

    # 150k: 15.0, 30.0 and (5 + 25 * 0.75) = 23.75 -> 22.92; 400k: only the 60-minute run, 35.0
    assert sr.at_equal_steps(arm(150_000, 45.833), "defaults", runs, floor) == "2.00x (baseline 22.9, 3 runs)"
    assert sr.at_equal_steps(arm(400_000, 35.0), "defaults", runs, floor) == "1.00x (baseline 35.0, 1 run)"
    assert sr.at_equal_steps(arm(600_001, 50.0), "defaults", runs, floor) == "past the baseline's 600,000 steps"
    assert sr.at_equal_steps(arm(50_000, 3.0), "defaults", runs[:1], None) == "0.60x (baseline 5.0, 1 run)"
    assert sr.at_equal_steps({**arm(1, 1), "arm": "defaults"}, "defaults", runs, floor) == "(baseline)"
    assert sr.at_equal_steps(arm(1, 1), "defaults", [], floor) == ""


def test_verdict_calls_a_win_or_loss_only_beyond_the_seeds_spread() -> None:
    base = {"mean": 10.0, "min": 8.0, "max": 12.0}
    assert sr.verdict({"mean": 20.0, "min": 12.5, "max": 25.0}, base).startswith("2.00x, wins")
    assert sr.verdict({"mean": 5.0, "min": 4.0, "max": 7.9}, base).startswith("0.50x, loses")
    assert sr.verdict({"mean": 14.0, "min": 11.0, "max": 16.0}, base) == "1.40x, within the spread"
    assert sr.verdict(base, base) == "(baseline)" and sr.verdict(base, None) == ""
    one = {"mean": 20.0, "min": 20.0, "max": 20.0, "n": 1}
    assert sr.verdict(one, base) == ("2.00x, wins (every seed above the baseline's best) "
                                     "(a screen: 1 seed, not a verdict)")


@pytest.mark.parametrize("argv, message", [
    ([], "say what to do"),
    (["--arm", "x", "--minutes", "0"], "--minutes must be > 0"),
    (["--arm", "x", "--points", "5,30"], "--points: 30 is past the budget"),
    (["--arm", "x", "--points", "10,5"], "--points takes minutes > 0 in increasing order"),
    (["--arm", "x", "--launch-args", "--seed 3 --run-dir y"], "--launch-args must not set --run-dir, --seed"),
    (["--arm", "a b"], "--arm 'a b': use letters"),
    (["--arm", "x", "--seeds", "0"], "--seeds must be in 1..100"),
    (["--arm", "x", "--floor"], "not allowed with argument --arm"),
])
def test_bad_input_is_one_line(argv: list[str], message: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        ls.main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1, err
    assert err[0].startswith("learning_series.py: error: ") and message in err[0]


def test_a_report_without_runs_is_one_line_and_writes_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_:
        ls.main(["--report", "--csv", str(tmp_path / "runs.csv")])
    assert exit_.value.code == 2
    assert capsys.readouterr().err.strip() == f"learning_series.py: error: no runs in {tmp_path / 'runs.csv'}: " \
                                              "run a series first (--arm NAME)"
    assert list(tmp_path.iterdir()) == []


def test_timed_snapshots_reads_the_points_from_snapshots_csv(tmp_path: Path) -> None:
    with open(tmp_path / "snapshots.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "env_steps", "learner_steps", "wall_seconds", "point_minutes"])
        w.writerow(["snapshots/policy-000001000.h5", 1000, 0, 20.0, ""])
        w.writerow(["snapshots/policy-000001200-at-0.5min.h5", 1200, 10, 30.2, 0.5])
        w.writerow(["snapshots/policy-000002400-at-1min.h5", 2400, 90, 60.4, 1.0])
    taken = ls.timed_snapshots(tmp_path)
    assert sorted(taken) == [0.5, 1.0] and taken[1.0]["env_steps"] == "2400"
    assert ls.timed_snapshots(tmp_path / "none") == {}
