"""Failures and bad input: killed drivers resume, exports survive kills, signals stop cleanly,
every bad flag gets one line and leaves the disk alone."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np
import pytest

import kerasrl_compat

ROOT = Path(__file__).resolve().parents[1]
ENV = dict(os.environ, PYTHONPATH=str(ROOT), **kerasrl_compat.PROCESS_ENV)
JOIN_ENV = dict(ENV, RAY_AUTH_MODE="token")  # the session Ray has token auth on (STACK.md)
TINY = ["--num-actors", "1", "--envs-per-actor", "2", "--learning-starts", "300", "--replay-capacity", "3000",
        "--samples-per-insert", "2", "--batch-size", "32", "--log-every", "0.5"]


def _launch(args: list[str], **kwargs) -> subprocess.Popen:
    env = JOIN_ENV if "--address" in args else ENV
    return subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *args], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kwargs)


def _records(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def _wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@contextmanager
def _sigkilled_after(proc: subprocess.Popen, output: Callable[[], str]) -> Iterator[None]:
    """Run the block while ``proc`` (a launch.py) works, then SIGKILL it, as a crash would; it must
    still be running then. Whatever the block raises, the process does not outlive the test."""
    try:
        yield
        assert proc.poll() is None, output()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()


def test_driver_killed_with_sigkill_resumes_with_counters_intact(ray_address: str, tmp_path: Path) -> None:
    from distributed.checkpoint import load_checkpoint

    run = tmp_path / "run"
    args = [*TINY, "--total-env-steps", "6000", "--checkpoint-every", "20", "--export-every", "20",
            "--learning-rate", "0.001", "--learning-rate-end", "0.0001", "--address", ray_address,
            "--run-dir", str(run)]
    proc = _launch(args)
    with _sigkilled_after(proc, proc.stdout.read):
        _wait_for(lambda: (run / "checkpoint.npz").exists() or proc.poll() is not None, 240, "a first checkpoint")
    learner_state, driver_state = load_checkpoint(run)
    assert 0 < driver_state["env_steps"] < 6000
    assert learner_state["steps"] >= 20 and driver_state["updates_done"] == learner_state["steps"]
    total_updates = (6000 - 300) * 2 // 32  # the anneal's end: the run's last learner step
    saved_rate = 1e-3 + learner_state["steps"] / total_updates * (1e-4 - 1e-3)
    assert learner_state["learning_rate"] == pytest.approx(saved_rate)
    # the resume keeps the records up to the checkpoint's agent step (a record the driver wrote between
    # the checkpoint and the kill is dropped: that stretch is played again)
    kept = [r for r in _records(run) if r["env_steps"] <= driver_state["env_steps"]]

    resumed = _launch(["--resume", str(run), "--address", ray_address])
    out, _ = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, out[-3000:]
    assert f"resuming {run} at {driver_state['env_steps']:,}" in out
    assert "explorers yield it the CPU (--explorer-priority idle)" in out  # the default, said at start-up
    after = _records(run)
    last = after[-1]
    assert last["env_steps"] == 6000
    assert len(kept) >= 1 and after[: len(kept)] == kept
    first_resumed = after[len(kept)]
    assert first_resumed["env_steps"] >= driver_state["env_steps"]
    # learning restarts after a refill of --learning-starts transitions, then keeps the ratio
    refill_updates = (6000 - driver_state["env_steps"] - 300) * 2 // 32
    assert last["learner_steps"] == learner_state["steps"] + max(0, refill_updates)
    assert last["games"] >= driver_state["games"]
    final_learner, final_driver = load_checkpoint(run)
    assert final_learner["steps"] == last["learner_steps"] and final_driver["generation"] == 1
    # --learning-rate-end: the resumed run anneals on from the saved rate, never back up
    rates = [r["learning_rate"] for r in after[len(kept):] if r.get("learning_rate") is not None]
    assert rates == sorted(rates, reverse=True) and saved_rate >= rates[0] > rates[-1]
    frac = (last["learner_steps"] - learner_state["steps"]) / (total_updates - learner_state["steps"])
    assert final_learner["learning_rate"] == pytest.approx(saved_rate + frac * (1e-4 - saved_rate))
    from core.policy_file import is_dueling_shapes, read_weight_shapes

    assert not is_dueling_shapes(read_weight_shapes(run / "policy.h5"))  # whole: the default preset's plain network


def test_policy_h5_survives_kills_during_export(tmp_path: Path) -> None:
    """SIGKILL a process that rewrites policy.h5 in a loop, again and again: the file left is whole."""
    target = tmp_path / "policy.h5"
    writer = tmp_path / "writer.py"
    writer.write_text(
        "import sys\n"
        "import kerasrl_compat\n"
        "from core.network import build_q_network\n"
        "from core.policy_file import save_policy\n"
        "model = build_q_network(4)\n"
        "save_policy(model, sys.argv[1])\n"
        "print('ready', flush=True)\n"
        "while True:\n"
        "    save_policy(model, sys.argv[1])\n"
    )
    from core.policy_file import read_weight_shapes

    rng = np.random.default_rng(0)
    for _ in range(6):
        proc = subprocess.Popen([sys.executable, str(writer), str(target)], env=ENV, stdout=subprocess.PIPE, text=True)
        assert proc.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.05, 0.6)))
        proc.kill()
        proc.wait()
        shapes = read_weight_shapes(target)  # raises on a partial or corrupt file
        assert len(shapes) == 10 and shapes[0] == (8, 8, 4, 32)
    with h5py.File(target) as f:
        assert f["dense_1"]["dense_1"]["kernel:0"].shape == (512, 4)


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_stops_promptly_with_export_checkpoint_and_no_ray_left(sig: int, tmp_path: Path) -> None:
    run = tmp_path / "run"
    proc = _launch([*TINY, "--total-env-steps", "1000000", "--num-cpus", "2", "--run-dir", str(run)],
                   start_new_session=True)
    try:
        _wait_for(lambda: any(r["learner_steps"] > 0 for r in _records(run)) or proc.poll() is not None, 240,
                  "learning to start")
        assert proc.poll() is None
        sent = time.monotonic()
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        took = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 0, out[-3000:]
    assert took < 45, f"stopping took {took:.1f} s"  # about 2 s on an idle machine
    assert f"stopped by {signal.Signals(sig).name}" in out
    assert (run / "policy.h5").exists() and (run / "checkpoint.npz").exists()
    deadline = time.monotonic() + 15  # Ray's processes may still be exiting on a loaded machine
    while (mine := _session_processes(proc.pid)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not mine, "processes left behind:\n" + "\n".join(mine)


def _session_processes(sid: int) -> list[str]:
    """``ps`` lines of the processes still in session ``sid``."""
    lines = subprocess.run(["ps", "-eo", "pid=,sid=,args="], capture_output=True, text=True).stdout.splitlines()
    return [line for line in lines if line.split()[1] == str(sid)]


def _snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run directory with config.json, checkpoint.npz and policy.h5, as launch.py leaves one."""
    from config import Config
    from core.policy_file import save_policy
    from distributed.checkpoint import save_checkpoint
    from learner.learner import Learner

    run = tmp_path_factory.mktemp("finished")
    cfg = Config(total_env_steps=1000, learning_starts=100, replay_capacity=2000, run_dir=str(run))
    (run / "config.json").write_text(json.dumps(__import__("dataclasses").asdict(cfg)))
    learner = Learner(cfg, 4)
    save_policy(learner.online, run / "policy.h5")
    save_checkpoint(run, learner.get_state(), {"env_steps": 1000, "updates_done": 0, "games": 3, "generation": 0,
                                               "game": "Breakout", "n_actions": 4, "wall_seconds": 90.0})
    return run


BAD_LAUNCH = {
    "zero actors": (["--num-actors", "0"], "--num-actors must be >= 1"),
    "not a number": (["--batch-size", "abc"], "invalid int value"),
    "unknown game": (["--game", "Breakot"], "unknown Atari game 'Breakot'"),
    "unknown exploration": (["--exploration", "greedy"], "invalid choice"),
    "learning starts past the end": (["--learning-starts", "5000", "--total-env-steps", "1000"],
                                     "exceeds --total-env-steps"),
    "replay too big for memory": (["--replay-capacity", "100000000"], "use at most about"),
    "unknown flag": (["--num-actor", "2"], "unrecognized arguments"),
    "gamma out of range": (["--gamma", "1.5"], "--gamma must be <= 1.0"),
    "not a finite number": (["--gamma", "nan"], "--gamma must be a finite number, got nan"),  # it hung the run
    "precision": (["--learner-precision", "float16"], "invalid choice"),
}


@pytest.mark.parametrize("name", list(BAD_LAUNCH))
def test_launch_bad_flags_get_one_line(name: str, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    import launch

    args, message = BAD_LAUNCH[name]
    with pytest.raises(SystemExit) as exit_info:
        sys.exit(launch.main([*args, "--run-dir", str(tmp_path / "run")]))
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("launch.py: error:") and message in err[0], err
    assert not (tmp_path / "run").exists(), "nothing may be written for bad input"


def test_launch_bad_run_dirs_and_resumes(finished_run: Path, capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    import launch

    a_file = tmp_path / "file"
    a_file.write_text("x")
    classic = tmp_path / "classic"
    classic.mkdir()
    (classic / "config.json").write_text(json.dumps({"game": "Breakout", "steps": 100, "memory_limit": 10}))
    no_ckpt = tmp_path / "no_ckpt"
    no_ckpt.mkdir()
    (no_ckpt / "config.json").write_text((finished_run / "config.json").read_text())
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text((finished_run / "config.json").read_text())
    data = (finished_run / "checkpoint.npz").read_bytes()
    (truncated / "checkpoint.npz").write_bytes(data[: len(data) // 2])
    before = _snapshot(tmp_path) | _snapshot(finished_run)
    cases = {
        # a small run, so that the memory check before the run-dir check passes on any runner
        "is a file": [*TINY, "--run-dir", str(a_file)],
        "already holds a run": [*TINY, "--run-dir", str(finished_run)],
        "cannot write to --run-dir": [*TINY, "--run-dir", "/proc/no-such-dir/run"],
        "no such folder": ["--resume", str(tmp_path / "missing")],
        "from another program": ["--resume", str(classic)],
        "checkpoint.npz does not exist": ["--resume", str(no_ckpt)],
        "it may be truncated": ["--resume", str(truncated)],
        "pass a larger --total-env-steps": ["--resume", str(finished_run)],
        "already ran 1.5 of --max-minutes 1; pass a larger --max-minutes": [
            "--resume", str(finished_run), "--total-env-steps", "5000", "--max-minutes", "1"],
        "the run plays Breakout, not Pong": ["--resume", str(finished_run), "--game", "Pong",
                                             "--total-env-steps", "5000"],
    }
    for message, argv in cases.items():
        assert launch.main(argv) == 2, message
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("launch.py: error:") and message in err[0], (message, err)
    assert _snapshot(tmp_path) | _snapshot(finished_run) == before, "bad input changed files on disk"


def test_a_learner_gpu_the_cluster_lacks_is_refused(ray_session, capsys: pytest.CaptureFixture,
                                                     tmp_path: Path) -> None:
    """The learner would wait for the GPU forever, and the explorers for its weights: refuse at once."""
    import launch

    gpus = ray_session.cluster_resources().get("GPU", 0.0)
    run = tmp_path / "run"
    assert launch.main([*TINY, "--learner-gpus", str(gpus + 1), "--run-dir", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"the cluster has {gpus:g} GPU(s)" in err[0], err
    assert not run.exists(), "nothing may be written for bad input"


# --- a crash and a resume with --save-replay (issue 20) --------------------------------------------
RESUME_RUN = ["--num-actors", "1", "--envs-per-actor", "2", "--learning-starts", "600", "--replay-capacity", "6000",
              "--samples-per-insert", "4", "--batch-size", "32", "--updates-per-call", "4", "--weight-sync-every", "50",
              "--checkpoint-every", "200", "--export-every", "1000", "--log-every", "0.3", "--save-replay",
              "--eval-every", "1000", "--eval-episodes", "1", "--eval-max-steps", "300", "--snapshot-every", "500",
              "--total-env-steps", "5000"]
SPI, BATCH, STARTS, PER_CALL, SYNC, TOTAL = 4, 32, 600, 4, 50, 5000


def _rows(path: Path) -> list[dict]:
    """The whole rows of a CSV or JSONL file being written (a row cut short is left out)."""
    import csv

    if not path.exists():
        return []
    lines = [line for line in path.read_text().splitlines(keepends=True) if line.endswith("\n")]
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in lines]
    return list(csv.DictReader(lines))


def _env_steps(path: Path) -> list[int]:
    key = "env_steps" if path.name in ("metrics.jsonl", "snapshots.csv") else "env_step"
    return [int(float(row[key])) for row in _rows(path)]


@pytest.fixture(scope="module")
def crashed_and_resumed(ray_address: str, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A run with --save-replay whose replay actor is killed once learning has begun (the refill
    moves the replay ratio's baseline), then, after a checkpoint made since and some more rows,
    launch.py itself is SIGKILLed; then ``--resume`` runs it to the end."""
    from procs import session_actor_pids

    from distributed.checkpoint import CheckpointError, load_checkpoint

    run = tmp_path_factory.mktemp("crash") / "run"
    log = run.parent / "first.log"

    def checkpoint() -> dict:
        try:
            return load_checkpoint(run)[1]
        except CheckpointError:
            return {}

    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), *RESUME_RUN, "--address", ray_address,
                                 "--run-dir", str(run)], env=JOIN_ENV, stdout=out, stderr=subprocess.STDOUT)
    with _sigkilled_after(proc, lambda: log.read_text()[-3000:]):
        _wait_for(lambda: any(r["learner_steps"] >= 8 for r in _rows(run / "metrics.jsonl")) or proc.poll() is not None,
                  300, "learning to start")
        assert proc.poll() is None, log.read_text()[-3000:]
        replay = session_actor_pids("ray::ReplayServer")
        assert len(replay) == 1
        os.kill(replay[0], signal.SIGKILL)
        _wait_for(lambda: checkpoint().get("replay_failures") == 1 or proc.poll() is not None, 300,
                  "a checkpoint after the refill")
        at = checkpoint()["env_steps"]
        _wait_for(lambda: max(_env_steps(run / "metrics.jsonl")) > at + 400 or proc.poll() is not None, 300,
                  "rows past the checkpoint")
    learner_state, driver_state = load_checkpoint(run)
    names = ("episodes.csv", "evaluations.csv", "snapshots.csv", "metrics.jsonl")
    before = {name: _env_steps(run / name) for name in names}
    resumed = subprocess.run([sys.executable, str(ROOT / "launch.py"), "--resume", str(run), "--address", ray_address],
                             env=JOIN_ENV, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    return {"run": run, "out": resumed.stdout, "learner_steps": int(learner_state["steps"]),
            "env_steps": driver_state["env_steps"], "wall_seconds": driver_state["wall_seconds"], "before": before}


def test_a_resume_with_the_saved_replay_goes_on_at_the_replay_ratio_without_a_burst(crashed_and_resumed) -> None:
    """The refill before the checkpoint lowered the ratio's baseline. The resume restored it with
    the replay: the updates after the resume follow the agent steps inserted since (it used to
    count from zero: the learner did the refill's skipped updates back to back on the loaded replay
    while the explorers waited, and the run ended with them made up)."""
    run, out = crashed_and_resumed["run"], crashed_and_resumed["out"]
    env0, learner0 = crashed_and_resumed["env_steps"], crashed_and_resumed["learner_steps"]
    assert "replay memory restored" in out, out[-3000:]
    records = _rows(run / "metrics.jsonl")
    resumed = records[sum(1 for step in crashed_and_resumed["before"]["metrics.jsonl"] if step <= env0):]
    assert len(resumed) >= 3 and resumed[-1]["env_steps"] == TOTAL and resumed[-1]["replay_restarts"] == 1
    # the most the ratio lets the learner lag (explorers' slack and one run past it) when the checkpoint is taken
    backlog = (3 * SYNC) * SPI / BATCH + 2 * PER_CALL
    for r in resumed:
        allowed = (r["env_steps"] - env0) * SPI / BATCH + backlog + PER_CALL
        assert r["learner_steps"] - learner0 <= allowed, (r, learner0, env0)
    # the refill cost --learning-starts transitions of learning; the resumed run does not make them up
    assert resumed[-1]["learner_steps"] <= (TOTAL - 2 * STARTS) * SPI / BATCH


def test_a_resume_drops_what_the_crashed_run_wrote_past_its_checkpoint(crashed_and_resumed) -> None:
    """No file of the run shows the stretch between the checkpoint and the crash twice: the rows,
    snapshots and GIFs written there are gone, and TensorBoard's reader purges its events."""
    from tensorboard.backend.event_processing.plugin_event_accumulator import TENSORS, EventAccumulator

    run, env0 = crashed_and_resumed["run"], crashed_and_resumed["env_steps"]
    before = crashed_and_resumed["before"]
    assert max(before["metrics.jsonl"]) > env0 and max(before["episodes.csv"]) > env0, "nothing was past it"
    assert "dropped what was written past the checkpoint's agent step" in crashed_and_resumed["out"]
    for name in ("episodes.csv", "metrics.jsonl"):
        steps = _env_steps(run / name)
        assert steps == sorted(steps), f"{name} goes back in agent steps"
    for name in ("evaluations.csv", "snapshots.csv"):
        steps = _env_steps(run / name)
        assert steps == sorted(set(steps)) and len(steps) >= 2, f"{name}: {steps}"
    games = _rows(run / "metrics.jsonl")[-1]["games"]
    assert len(_rows(run / "episodes.csv")) == games, "one row per game counted"
    listed = {row["file"] for row in _rows(run / "snapshots.csv")}
    assert {f"snapshots/{p.name}" for p in (run / "snapshots").iterdir()} == listed
    gifs = [int(p.name.split("-")[1]) for p in (run / "games").iterdir()]
    assert len(gifs) == len(set(gifs)) and set(gifs) <= set(_env_steps(run / "evaluations.csv"))

    events = EventAccumulator(str(run / "tb"), size_guidance={TENSORS: 0}).Reload()
    tags = events.Tags()["tensors"]
    assert {"episodic_return", "env_steps_per_s", "eval/mean_score"} <= set(tags)
    for tag in tags:
        steps = [e.step for e in events.Tensors(tag)]
        assert steps == sorted(steps), f"TensorBoard's {tag} goes back in agent steps"
    assert len(events.Tensors("episodic_return")) == games


def test_a_resume_goes_on_with_the_wall_clock_of_its_checkpoint(crashed_and_resumed) -> None:
    """Wall-clock columns used to start again from 0 after a resume: every file now goes forward in
    time as in agent steps, the resumed rows from the wall clock the checkpoint had run."""
    run, env0, wall0 = crashed_and_resumed["run"], crashed_and_resumed["env_steps"], crashed_and_resumed["wall_seconds"]
    assert wall0 > 0
    for name in ("episodes.csv", "evaluations.csv", "snapshots.csv", "metrics.jsonl"):
        rows = _rows(run / name)
        walls = [float(row["wall_seconds"]) for row in rows]
        assert walls == sorted(walls), f"{name} goes back in wall clock: {walls}"
        key = "env_steps" if name in ("metrics.jsonl", "snapshots.csv") else "env_step"
        resumed = [float(row["wall_seconds"]) for row in rows if int(float(row[key])) > env0]
        assert resumed and min(resumed) >= wall0, (name, wall0, resumed[:3])


def test_the_first_rates_after_a_resume_count_from_its_counts(tmp_path: Path) -> None:
    """A resumed run's first progress line divided all the checkpoint's agent steps and updates by
    its first seconds (thousands of steps/s for an ordinary run); the rates count from the resume's counts."""
    import time

    from config import Config
    from distributed.runlog import RunLog

    log = RunLog(Config(), tmp_path, resumed_at=100_000, updates=20_000)
    time.sleep(0.5)
    log.progress(100_050, 20_010, 1_000, {}, 0.1, None)
    log.close()
    record = _rows(tmp_path / "metrics.jsonl")[-1]
    assert 0 < record["env_steps_per_s"] <= 100 and 0 < record["learner_steps_per_s"] <= 20, record


def test_the_checkpoint_keeps_best_policy_scores_for_the_next_resume(crashed_and_resumed) -> None:
    """best-policy.h5's score survived one resume (read before the trim) but not a second once its
    evaluations.csv row was trimmed: the checkpoint now carries it."""
    from distributed.checkpoint import load_checkpoint

    run = crashed_and_resumed["run"]
    state = load_checkpoint(run)[1]
    evaluated = [float(row["mean"]) for row in _rows(run / "evaluations.csv")
                 if int(row["env_step"]) <= state["env_steps"]]
    assert evaluated and state["best_eval"] is not None and state["best_eval"] >= max(evaluated)


def _write_cut_by_sigkill(path: Path) -> Path:
    """The temp file a real write_atomically leaves when its process is killed mid-write."""
    code = ("import os, signal, sys; from pathlib import Path; from core.atomic import write_atomically\n"
            "def write(tmp):\n    Path(tmp).write_bytes(b'half'); os.kill(os.getpid(), signal.SIGKILL)\n"
            "write_atomically(sys.argv[1], write)")
    before = set(path.parent.iterdir())
    done = subprocess.run([sys.executable, "-c", code, str(path)], cwd=ROOT, timeout=60)
    assert done.returncode == -signal.SIGKILL
    (cut,) = set(path.parent.iterdir()) - before
    return cut


def test_a_resume_drops_the_temp_files_of_the_writes_the_crash_cut(tmp_path: Path) -> None:
    """Wherever in the run folder a SIGKILL cut a write (policy.h5, the checkpoint, a snapshot), the
    resume drops its temp file; the files it replaces and a user's own dot files stay."""
    from distributed.runlog import trim_past

    (tmp_path / "snapshots").mkdir()
    kept = tmp_path / "snapshots" / "policy-000001000.h5"
    policy, own = tmp_path / "policy.h5", tmp_path / ".policy.h5.my-notes.txt"
    for path in (kept, policy, own):
        path.write_bytes(b"whole")
    cuts = [_write_cut_by_sigkill(path) for path in
            (policy, tmp_path / "checkpoint.npz", tmp_path / "snapshots" / "policy-000001500.h5")]
    assert trim_past(tmp_path, 1000) == {"unfinished writes": 3}
    assert not any(cut.exists() for cut in cuts)
    assert kept.read_bytes() == policy.read_bytes() == own.read_bytes() == b"whole"
