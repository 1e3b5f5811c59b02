"""The distributed path on a real local Ray: explorer transitions, learner target sync, a whole run."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from procs import run_and_kill, session_actor_pids, stock_kerasrl

from actors.cpu_priority import yield_cpu
from actors.explorer import Explorer, stream_epsilon
from config import Config
from core.atari import make_env
from core.network import build_q_network
from core.policy_file import check_policy_file
from distributed.driver import Driver
from distributed.topology import explorer_actors
from replay.memory import Batch
from replay.server import ReplayServer

ROOT = Path(__file__).resolve().parents[1]


def _by_value() -> None:
    """Ray workers cannot import this test module: ship its classes by value."""
    import ray.cloudpickle

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])


class RecordingReplay(ReplayServer):
    """The real replay server, also keeping every chunk it was sent, for inspection."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.chunks: list[dict] = []

    def add_chunks(self, chunks: list[dict]) -> int:
        self.chunks.extend({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in c.items()} for c in chunks)
        return super().add_chunks(chunks)

    def recorded(self) -> list[dict]:
        return self.chunks


def test_ape_x_ladder() -> None:
    cfg = Config(num_actors=4, envs_per_actor=2)
    eps = [stream_epsilon(cfg, i) for i in range(cfg.num_streams)]
    assert eps[0] == pytest.approx(0.4) and eps[-1] == pytest.approx(0.4**8)
    assert eps == sorted(eps, reverse=True)
    assert eps[3] == pytest.approx(0.4 ** (1 + 7 * 3 / 7))
    assert stream_epsilon(Config(num_actors=1, envs_per_actor=1), 0) == pytest.approx(0.4)
    anneal = Config(exploration="anneal", eps_start=1.0, eps_end=0.1, eps_anneal_steps=100)
    assert stream_epsilon(anneal, 5, 50) == pytest.approx(0.55)
    assert stream_epsilon(anneal, 5, 10_000) == pytest.approx(0.1)


def thread_policies(pid: int | str) -> list[tuple[int, int]]:
    """(scheduling policy, nice value) of every thread of process ``pid``: Linux keeps both per thread."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        # /proc/PID/task/TID/stat, counted from the ")" that ends the name: field 19 (nice) is the
        # 17th, field 41 (policy) the 39th
        try:
            fields = (task / "stat").read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):  # the thread ended meanwhile
            continue
        out.append((int(fields[38]), int(fields[16])))
    return out


def test_yield_cpu_reaches_every_thread_and_the_threads_started_later() -> None:
    """Explorers lower every thread, those TensorFlow and Ray started before included."""
    code = (
        "import json, sys, threading\n"
        "from actors.cpu_priority import yield_cpu\n"
        "from test_distributed import thread_policies\n"
        "stop = threading.Event()\n"
        "early = threading.Thread(target=stop.wait)\n"
        "early.start()\n"
        "report = {'before': thread_policies('self'), 'applied': yield_cpu(sys.argv[1])}\n"
        "later = threading.Thread(target=lambda: report.update(after=thread_policies('self')))\n"
        "later.start(); later.join()\n"
        "print(json.dumps(report))\n"
        "stop.set()\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": f"{root}:{root / 'tests'}"}
    reports = {}
    for priority in ("idle", "low", "normal"):
        out = subprocess.run([sys.executable, "-c", code, priority], capture_output=True, text=True, timeout=120,
                             cwd=root, env=env)
        assert out.returncode == 0, out.stderr
        reports[priority] = json.loads(out.stdout)
    for priority, report in reports.items():
        # main, the early thread and whatever the imports started (numpy's BLAS threads)
        assert report["applied"] == priority and len(report["before"]) >= 2
        assert len(report["after"]) == len(report["before"]) + 1, "the thread started later is counted too"
    assert {p for p, _ in reports["idle"]["after"]} == {os.SCHED_IDLE}
    assert set(map(tuple, reports["low"]["after"])) == {(os.SCHED_OTHER, 19)}
    assert set(map(tuple, reports["normal"]["after"])) == set(map(tuple, reports["normal"]["before"]))
    with pytest.raises(ValueError, match="priority must be one of"):
        yield_cpu("high")


def test_explorer_transitions_replay_the_real_emulator(ray_session) -> None:
    """Every pushed frame is what the emulator shows after the recorded actions, and every
    pushed n-step return is the discounted sum of the rewards that followed."""
    ray = ray_session
    _by_value()
    cfg = Config(num_actors=1, envs_per_actor=2, exploration="fixed", epsilon=1.0, seed=5, n_step=3, gamma=0.9)
    replay = ray.remote(num_cpus=0)(RecordingReplay).remote(2000, cfg.num_streams, seed=0, n_step=3,
                                                            priority_alpha=0.6)
    explorer = explorer_actors(cfg, replay, generation=0, cpus=0)[0]  # as launch.py makes it, no CPU reserved
    try:
        reports = [ray.get(explorer.run.remote(None, 400)) for _ in range(2)]
        ray.get(explorer.flush.remote())
        chunks = ray.get(replay.recorded.remote())
        counters = ray.get(replay.counters.remote())
        batch = ray.get(replay.sample.remote(16, 2))
        policies = [thread_policies(pid) for pid in session_actor_pids("ray::Explorer")]
    finally:
        ray.kill(explorer)
        ray.kill(replay)
    assert cfg.explorer_priority == "idle"
    assert policies and {p for threads in policies for p, _ in threads} == {os.SCHED_IDLE}, "explorers yield the CPU"
    assert sum(r["steps"] for r in reports) == 800
    terminals = sum(int(c["terminals"].sum()) for c in chunks)
    assert terminals > 0, "800 random Breakout steps lose at least one life"
    # one entry per step, plus keras-rl's extra terminal-observation entry per episode end, less
    # the newest n - 1 entries of each stream, which wait for the steps that finish their returns
    assert counters["added"] >= 800 + terminals - cfg.num_streams * (cfg.n_step - 1)
    for stream in range(cfg.num_streams):
        mine = [c for c in chunks if c["stream"] == stream]
        assert mine[0]["new_segment"] and not any(c["new_segment"] for c in mine[1:])
        frames = np.concatenate([c["frames"] for c in mine])
        actions = np.concatenate([c["actions"] for c in mine])
        rewards = np.concatenate([c["rewards"] for c in mine])
        terms = np.concatenate([c["terminals"] for c in mine])
        assert set(np.unique(rewards)) <= {0.0, 1.0}, "training rewards are clipped"
        returns = np.concatenate([c["returns"] for c in mine])
        horizons = np.concatenate([c["horizons"] for c in mine])
        dones = np.concatenate([c["dones"] for c in mine])
        priorities = np.concatenate([c["priorities"] for c in mine])
        assert (priorities >= 0).all() and priorities.max() > 0
        after_terminal = np.concatenate([[False], terms[:-1]])
        for j in np.flatnonzero(~after_terminal[: len(frames) - cfg.n_step]):
            g, m, done = 0.0, 0, False
            for k in range(cfg.n_step):
                g += cfg.gamma**k * rewards[j + k]
                m = k + 1
                if terms[j + k]:
                    done = True
                    break
            assert (returns[j], horizons[j], dones[j]) == (pytest.approx(g), m, done), f"entry {j}"
        assert actions.max() < 4
        env = make_env(cfg.game, training=True, seed=cfg.seed * 100_003 + stream)
        frame = env.reset()[0]
        i = 0
        while i < len(frames):
            assert np.array_equal(frames[i], frame), f"stream {stream}: frame {i} differs from the emulator"
            frame, reward, terminated, truncated, _ = env.step(int(actions[i]))
            assert rewards[i] == reward and terms[i] == terminated
            if terminated or truncated:
                i += 1
                if i < len(frames):
                    assert np.array_equal(frames[i], frame) and rewards[i] == 0 and not terms[i]
                frame = env.reset()[0]
            i += 1
    for b in batch:
        assert isinstance(b, Batch) and b.state0.shape == (16, 4, 84, 84) and b.state0.dtype == np.uint8
        for s0, s1, m in zip(b.state0, b.state1, b.horizon, strict=True):
            assert np.array_equal(s0[m:], s1[: 4 - m]), "state1 is the stack m entries later"


def test_target_network_syncs_exactly_every_n_learner_steps() -> None:
    from learner.learner import Learner

    cfg = Config(target_update=3, batch_size=8, learning_rate=1e-3)
    learner = Learner(cfg, n_actions=4)
    rng = np.random.default_rng(0)

    def batch() -> Batch:
        frames = rng.integers(0, 255, (8, 4, 84, 84), dtype=np.uint8)
        return Batch(state0=frames, action=rng.integers(0, 4, 8), reward=rng.random(8).astype(np.float32),
                     terminal=np.zeros(8, bool), state1=frames, indices=np.arange(8), horizon=np.ones(8, np.int32),
                     weight=np.ones(8, np.float32), keys=np.arange(8))

    def same(a: list, b: list) -> bool:
        return all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))

    initial = learner.target.get_weights()
    for step in range(1, 11):
        learner.update(batch())
        assert learner.steps == step
        assert learner.target_syncs == step // 3
        online, target = learner.online.get_weights(), learner.target.get_weights()
        if step % 3 == 0:
            assert same(online, target), f"target not synced at learner step {step}"
        else:
            assert not same(online, target)
        if step < 3:
            assert same(target, initial), "target moved before its first sync"


def test_launch_runs_and_exports_a_keras_rl_policy(ray_session, tmp_path: Path) -> None:
    """A whole launch.py run (2 explorers, tiny sizes) on the session's Ray, then keras-rl plays it."""
    import launch

    run_dir = tmp_path / "run"
    argv = ["--num-actors", "2", "--envs-per-actor", "2", "--total-env-steps", "1200", "--learning-starts", "400",
            "--replay-capacity", "3000", "--export-every", "40", "--target-update", "50", "--log-every", "2",
            "--eval-every", "600", "--eval-episodes", "2", "--eval-max-steps", "1500", "--snapshot-every", "500",
            "--run-dir", str(run_dir)]
    assert launch.main(argv) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["env_steps"] == 1200
    # the replay ratio of the default (tuned) preset: 4 samples per inserted transition after learning
    # starts, batches of 16
    assert last["learner_steps"] == (1200 - 400) * 4 // 16
    assert last["target_syncs"] == last["learner_steps"] // 50
    assert json.loads((run_dir / "config.json").read_text())["num_actors"] == 2
    assert (run_dir / "episodes.csv").read_text().startswith("env_step,stream,epsilon,score")
    assert any((run_dir / "tb").iterdir())
    # an evaluation once 600 agent steps are played, and one of the final network at the end
    evals = [r.split(",") for r in (run_dir / "evaluations.csv").read_text().splitlines()]
    assert evals[0][:2] == ["env_step", "learner_step"] and len(evals) == 3
    assert 600 <= int(evals[1][0]) < 1200 and evals[2][:2] == ["1200", str(last["learner_steps"])]
    snapshots = (run_dir / "snapshots.csv").read_text().splitlines()[1:]
    steps = [int(r.split(",")[1]) for r in snapshots]  # one as each multiple of 500 is passed
    assert len(steps) == 2 and 500 <= steps[0] < 1000 <= steps[1] and all((run_dir / r.split(",")[0]).is_file()
                                                                         for r in snapshots)
    # the default (tuned) run's files load into keras-rl's own dqn_atari.py agent, as its users have it
    policies = [run_dir / "policy.h5", run_dir / "best-policy.h5"]
    assert all(p.stat().st_size > 6_000_000 for p in policies)
    stock_kerasrl(policies, tmp_path)
    assert ray_session.is_initialized(), "launch must leave a Ray it did not start running"


class StartsNowDriver(Driver):
    """launch.py's driver with the wall clock (--snapshot-minutes, --max-minutes) counted from its own
    construction: the pytest process started long ago."""

    def clock_origin(self) -> float:
        return time.monotonic()


def test_snapshot_minutes_and_max_minutes_keep_the_wall_clock(ray_session, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture) -> None:
    """--snapshot-minutes: one copy per point, at the first moment past it, with the counts of that
    moment and the point named in snapshots.csv, beside the step snapshots of --snapshot-every.
    --max-minutes (the last point) ends the run long before --total-env-steps, with the final files,
    and (apex: no anneal fixed in agent steps) the rate of --learning-rate-end anneals over those minutes,
    not over the steps, while beta keeps the steps' schedule."""
    import launch
    from distributed.checkpoint import load_checkpoint

    run_dir = tmp_path / "run"
    points = (0.1, 0.2, 0.3)  # 6, 12 and 18 s
    argv = ["--preset", "apex", "--num-actors", "1", "--envs-per-actor", "2", "--total-env-steps", "1000000",
            "--learning-starts", "300", "--replay-capacity", "3000", "--eval-every", "0", "--snapshot-every", "1000",
            "--snapshot-minutes", ",".join(map(str, points)), "--max-minutes", "0.3", "--learning-rate", "0.001",
            "--learning-rate-end", "0", "--log-every", "0.5", "--run-dir", str(run_dir)]
    assert launch.main(argv, driver_class=StartsNowDriver) == 0
    out = capsys.readouterr().out
    assert "or 0.3 minutes, whichever comes first;" in out and "--max-minutes 0.3 reached" in out
    assert "done at --max-minutes 0.3:" in out
    with open(run_dir / "snapshots.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    timed = [r for r in rows if r["point_minutes"]]
    assert [float(r["point_minutes"]) for r in timed] == list(points)
    walls = [float(r["wall_seconds"]) for r in timed]
    # past each point, and soon: the loop looks at least every half second (10 s allows a loaded machine)
    assert all(60 * p <= w < 60 * p + 10 for p, w in zip(points, walls, strict=True)), walls
    steps = [int(r["env_steps"]) for r in timed]
    updates = [int(r["learner_steps"]) for r in timed]
    assert steps == sorted(steps) and updates == sorted(updates) and steps[-1] > steps[0]
    for r in timed:
        assert r["file"] == f"snapshots/policy-{int(r['env_steps']):09d}-at-{float(r['point_minutes']):g}min.h5"
        check_policy_file(run_dir / r["file"], build_q_network(4))
    by_steps = [r for r in rows if not r["point_minutes"]]  # --snapshot-every still writes its own
    assert by_steps and all(r["file"] == f"snapshots/policy-{int(r['env_steps']):09d}.h5" for r in by_steps)
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    last = records[-1]
    assert last["env_steps"] >= steps[-1] and last["learner_steps"] >= updates[-1]
    assert last["env_steps"] < 1_000_000 and last["wall_seconds"] < 18 + 30
    # the rate each record shows was set at a learner call issued at or before the record's wall clock:
    # never below the anneal over 18 s at that clock, and falling
    rates = [(r["wall_seconds"], r["learning_rate"]) for r in records if r.get("learning_rate") is not None]
    assert len(rates) >= 3 and all(1e-3 * (1 - w / 18) - 1e-9 <= rate for w, rate in rates), rates
    assert [rate for _, rate in rates] == sorted((rate for _, rate in rates), reverse=True)
    learner_state, driver_state = load_checkpoint(run_dir)
    # the last call was issued in the budget's last quarter: the rate is near its end; beta is where
    # its 1M-step schedule puts the learner's steps, far from 1
    saved = json.loads((run_dir / "config.json").read_text())
    cfg = Config(**{k: saved[k] for k in ("total_env_steps", "learning_starts", "samples_per_insert", "batch_size")})
    assert learner_state["learning_rate"] < 0.25e-3
    assert learner_state["beta"] == pytest.approx(cfg.beta(learner_state["steps"])) and learner_state["beta"] < 0.45
    assert driver_state["wall_seconds"] >= 18 and (run_dir / "policy.h5").is_file()


def test_process_age_counts_from_the_process_start() -> None:
    """The origin of --snapshot-minutes is the process's start, not the driver's: time spent before
    the import counts."""
    code = "import time; time.sleep(1.5); from distributed.driver import process_age; print(process_age())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert 1.5 <= float(out.stdout) < 60


def _run_and_kill(run_dir: Path, argv: list[str], title: str, counter: str) -> list[int]:
    """:func:`procs.run_and_kill` once metrics.jsonl shows ``counter`` > 0 (an eval_* field: once it is set)."""
    return run_and_kill(run_dir, argv, title, lambda r: (r[counter] or 0) > 0 or counter.startswith("eval") and
                        r[counter] is not None)


def test_killed_explorer_restarts_and_the_run_finishes(ray_session, tmp_path: Path) -> None:
    """SIGKILL an explorer mid-run: Ray restarts it, the driver counts it, the run completes."""
    run_dir = tmp_path / "run"
    argv = ["--num-actors", "2", "--envs-per-actor", "2", "--total-env-steps", "4000", "--learning-starts", "400",
            "--replay-capacity", "5000", "--samples-per-insert", "1", "--batch-size", "32",
            "--export-every", "1000", "--log-every", "0.5"]
    assert _run_and_kill(run_dir, argv, "ray::Explorer", "env_steps"), "never killed: the run ended too soon"
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["explorer_restarts"] >= 1
    assert last["env_steps"] == 4000
    assert (run_dir / "policy.h5").stat().st_size > 6_000_000


def test_killed_replay_restarts_empty_refills_and_the_run_finishes(ray_session, tmp_path: Path) -> None:
    """SIGKILL the replay actor mid-run: it comes back empty, learning waits for a refill, the run ends."""
    run_dir = tmp_path / "run"
    argv = ["--num-actors", "1", "--envs-per-actor", "2", "--total-env-steps", "3000", "--learning-starts", "400",
            "--replay-capacity", "4000", "--samples-per-insert", "1", "--batch-size", "32",
            "--export-every", "1000", "--log-every", "0.3"]
    assert _run_and_kill(run_dir, argv, "ray::ReplayServer", "learner_steps"), "the replay was never killed"
    records = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["replay_restarts"] == 1
    assert records[-1]["env_steps"] == 3000
    assert records[-1]["learner_steps"] < (3000 - 400) * 1 // 32, "learning paused while the replay refilled"
    assert (run_dir / "policy.h5").stat().st_size > 6_000_000


def test_an_episode_cut_by_the_step_limit_ends_a_segment_and_bootstraps_inside_it(ray_session) -> None:
    """Episodes cut by the step limit: the explorer pushes the whole cut episode at once, no
    n-step horizon reaches past its final observation, and the next chunk starts a new segment."""
    ray = ray_session
    _by_value()
    cfg = Config(num_actors=1, envs_per_actor=2, exploration="fixed", epsilon=1.0, seed=3, n_step=3,
                 explorer_priority="normal")  # in this process: leave the test session's priority alone
    replay = ray.remote(num_cpus=0)(RecordingReplay).remote(2000, cfg.num_streams, seed=0, n_step=3,
                                                            priority_alpha=0.6)
    explorer = Explorer(cfg, 0, replay)  # in this process, so its emulators can get a short step limit
    for j, stream in enumerate(explorer.streams):
        stream.env = make_env(cfg.game, training=True, seed=100 + j, max_episode_steps=12)
        explorer._begin_episode(j, stream.env.reset()[0])
    try:
        explorer.run(None, 120)
        explorer.flush()
        chunks = ray.get(replay.recorded.remote())
        assert ray.get(replay.sample.remote(64, 4))  # what was pushed is sampleable
    finally:
        ray.kill(replay)
    for stream in range(cfg.num_streams):
        mine = [c for c in chunks if c["stream"] == stream]
        starts = [i for i, c in enumerate(mine) if c["new_segment"]]
        assert starts[0] == 0 and len(starts) >= 3, "60 steps with a limit of 12 cut several episodes"
        for a, b in zip(starts, starts[1:], strict=False):  # every segment but the last ended with a cut
            horizons = np.concatenate([c["horizons"] for c in mine[a:b]]).astype(int)
            rewards = np.concatenate([c["rewards"] for c in mine[a:b]])
            final = len(horizons) - 1  # the final observation of the cut episode
            assert rewards[final] == 0
            assert (np.arange(final) + horizons[:final] <= final).all(), "a horizon crosses the cut"
            assert horizons[final - 1] == 1 and horizons[: final - 2].max() == 3


def test_killed_evaluator_restarts_and_evaluations_go_on(ray_session, tmp_path: Path) -> None:
    """SIGKILL the evaluator once a first evaluation is logged: Ray restarts it, later evaluations
    and the final one still land in evaluations.csv, and the run finishes."""
    run_dir = tmp_path / "run"
    argv = ["--num-actors", "1", "--envs-per-actor", "2", "--total-env-steps", "4000", "--learning-starts", "400",
            "--replay-capacity", "5000", "--samples-per-insert", "1", "--batch-size", "32",
            "--export-every", "1000", "--log-every", "0.3",
            "--eval-every", "400", "--eval-episodes", "2", "--eval-max-steps", "300",
            "--explorer-priority", "normal"]  # an idle-priority evaluator may finish no evaluation on a busy runner
    assert _run_and_kill(run_dir, argv, "ray::Evaluator", "eval_mean_score"), "the evaluator was never killed"
    last = json.loads((run_dir / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["env_steps"] == 4000
    rows = [r.split(",") for r in (run_dir / "evaluations.csv").read_text().splitlines()[1:]]
    assert rows[-1][0] == "4000", "the final network was evaluated after the restart"
    assert len(rows) >= 2 and (run_dir / "best-policy.h5").stat().st_size > 6_000_000
