"""The classic path end to end, in subprocesses: train.py writes policy.h5, a fresh process
loads and plays it (ours and an independent keras-rl player), play.py writes a GIF, and every
bad input is a one-line error that changes no file."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from PIL import Image
from procs import stock_kerasrl

ROOT = Path(__file__).resolve().parents[1]
ATARI_PARAMS = 1_686_180
TRAIN_ARGS = ["--steps", "300", "--warmup", "100", "--memory-limit", "1000", "--log-every", "0.1",
              "--checkpoint-every", "200"]


def run(tmp_path: Path, name: str, args: list[str], *, repo_on_path: bool = True) -> subprocess.CompletedProcess:
    """``python ARGS`` in a fresh process with cwd ``tmp_path``; stdout/stderr kept there too."""
    env = {k: v for k, v in os.environ.items() if k not in ("TF_USE_LEGACY_KERAS", "PYTHONPATH")}
    env.update(TF_CPP_MIN_LOG_LEVEL="2", RAY_USAGE_STATS_ENABLED="0")
    if repo_on_path:
        env.update(TF_USE_LEGACY_KERAS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run(
        [sys.executable, *map(str, args)], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300
    )
    (tmp_path / f"{name}.stdout").write_text(proc.stdout)
    (tmp_path / f"{name}.stderr").write_text(proc.stderr)
    return proc


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return proc.stdout


def one_line_error(proc: subprocess.CompletedProcess, prog: str, *, only_line: bool = True) -> str:
    """The process failed with exactly one ``PROG: error: ...`` line and no traceback."""
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(f"{prog}: error: ")]
    assert len(errors) == 1, proc.stderr[-3000:]
    if only_line:  # before TensorFlow loads nothing else may be printed
        assert lines == errors
    return errors[0]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One tiny train.py run, shared by every test here."""
    work = tmp_path_factory.mktemp("classic")
    proc = run(work, "train", [ROOT / "train.py", *TRAIN_ARGS, "--output", work / "policy.h5", "--run-dir",
                               work / "run"])
    return work, proc


@pytest.fixture(scope="module")
def policy(trained) -> Path:
    work, proc = trained
    ok(proc)
    return work / "policy.h5"


def test_train_writes_policy_and_run_logs(trained):
    work, proc = trained
    out = ok(proc)
    assert re.search(r"^training Breakout \(4 actions\) for 300 steps", out, re.M)
    progress = re.findall(r"^step +([\d,]+)/300 \(.*\) (warm-up|training) \| .* steps/s", out, re.M)
    assert progress, out
    assert progress[-1][1] == "training"  # steps 101..300 learn
    assert [int(step.replace(",", "")) for step, _ in progress] == sorted(int(s.replace(",", "")) for s, _ in progress)
    assert re.search(rf"^done after 300 steps; network saved to {re.escape(str(work / 'policy.h5'))}$", out, re.M)
    assert (work / "policy.h5").is_file()
    assert not [p for p in work.iterdir() if p.name.startswith(".policy.h5.")]  # no temporary left
    # the periodic weights: not checkpoint.h5 (easily taken for launch.py's checkpoint.npz)
    assert (work / "run" / "checkpoint-weights.h5").is_file() and not (work / "run" / "checkpoint.h5").exists()

    config = json.loads((work / "run" / "config.json").read_text())
    assert config["steps"] == 300 and config["warmup"] == 100 and config["memory_limit"] == 1000
    assert config["game"] == "Breakout" and config["output"] == str(work / "policy.h5")
    assert config["gamma"] == 0.99 and config["seed"] == 0

    with open(work / "run" / "episodes.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["game", "env_step", "game_score", "wall_seconds"]
    steps = [int(r[1]) for r in rows[1:]]
    assert [int(r[0]) for r in rows[1:]] == list(range(1, len(rows)))
    assert steps == sorted(steps) and all(0 < s <= 300 for s in steps)
    for r in rows[1:]:  # raw Breakout scores: whole, non-negative points
        assert float(r[2]) >= 0 and float(r[2]).is_integer()
    with Image.open(work / "run" / "learning-curve.png") as curve:  # drawn at the end from episodes.csv
        assert curve.format == "PNG" and curve.size == (900, 342)


def test_policy_h5_is_a_keras2_weights_file(policy):
    with h5py.File(policy, "r") as f:
        assert {"backend", "keras_version", "layer_names"} <= set(f.attrs)
        assert f.attrs["backend"] in ("tensorflow", b"tensorflow")
        layer_names = [n.decode() if isinstance(n, bytes) else n for n in f.attrs["layer_names"]]
        assert len(layer_names) == 12  # Permute, 3 x (Conv, relu), Flatten, Dense, relu, Dense, linear
        total, shapes = 0, []
        for layer in layer_names:
            names = list(f[layer].attrs.get("weight_names", []))
            for name in names:
                data = f[layer][name.decode() if isinstance(name, bytes) else name]
                assert data.dtype == np.float32
                shapes.append(data.shape)
                total += data.size
        assert sum(1 for layer in layer_names if len(f[layer].attrs.get("weight_names", []))) == 5
    assert shapes == [(8, 8, 4, 32), (32,), (4, 4, 32, 64), (64,), (3, 3, 64, 64), (64,), (3136, 512), (512,),
                      (512, 4), (4,)]
    assert total == ATARI_PARAMS


def test_stock_keras_rl_dqn_atari_loads_and_plays(policy, tmp_path):
    """train.py's default output in keras-rl's own dqn_atari.py agent, with only the fixes its users need."""
    stock_kerasrl([policy], tmp_path)


def test_play_two_games_and_gif(policy, tmp_path):
    gif = tmp_path / "g.gif"
    out = ok(run(tmp_path, "play", [ROOT / "play.py", "--weights", policy, "--episodes", "2", "--max-steps", "200",
                                    "--gif", gif, "--seed", "1"]))
    assert re.search(r"^loaded .*policy\.h5: plain network, 4 actions$", out, re.M), out
    first = re.search(r"^game 1: score \d+ in (\d+) steps$", out, re.M)
    assert first and re.search(r"^game 2: score \d+ in \d+ steps$", out, re.M), out
    assert re.search(r"^mean score over 2 game\(s\): \d+\.\d\d$", out, re.M), out
    with Image.open(gif) as image:
        assert image.format == "GIF" and image.is_animated
        # the whole first game, every life: a screen after each agent step and one as each life starts
        # (fewer where Pillow merges identical screens), never the next game's
        assert int(first[1]) / 2 < image.n_frames <= int(first[1]) + 5
        assert image.size == (160, 210)
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".gif") == ["g.gif"]


def test_play_a_train_py_run_directory(policy, tmp_path):
    """``play.py RUN_DIR`` of a train.py run: the network is train.py's --output, named in config.json."""
    out = ok(run(tmp_path, "play-run", [ROOT / "play.py", policy.parent / "run", "--max-steps", "30"]))
    assert re.search(rf"^loaded {re.escape(str(policy))}: plain network, 4 actions$", out, re.M), out
    assert re.search(r"^playing 1 game\(s\) of Breakout with ", out, re.M), out


def test_play_rejects_weights_of_another_game(policy, tmp_path):
    gif = tmp_path / "keep.gif"
    gif.write_bytes(b"existing")
    before = digest(policy)
    proc = run(tmp_path, "pong", [ROOT / "play.py", "--game", "Pong", "--weights", policy, "--gif", gif])
    line = one_line_error(proc, "play.py", only_line=False)  # TensorFlow has logged by then
    assert "different network" in line and "4 actions" in line and "6 actions" in line
    assert digest(policy) == before and gif.read_bytes() == b"existing"


def test_play_rejects_unknown_game(policy, tmp_path):
    proc = run(tmp_path, "notagame", [ROOT / "play.py", "--game", "NotAGame", "--weights", policy])
    assert "unknown Atari game 'NotAGame'" in one_line_error(proc, "play.py", only_line=False)


def _bad_weights(kind: str, policy: Path, path: Path) -> None:
    if kind == "truncated":
        data = policy.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "text":
        path.write_text("this is not an HDF5 file\n")
    elif kind == "hdf5-not-keras":
        with h5py.File(path, "w") as f:
            f["x"] = np.zeros(3, np.float32)


@pytest.mark.parametrize(
    "kind, message",
    [
        ("missing", "does not exist"),
        ("truncated", "not a readable weights file"),
        ("text", "not a readable weights file"),
        ("hdf5-not-keras", "not a Keras weights file"),
    ],
)
def test_play_rejects_bad_weights_files(policy, tmp_path, kind, message):
    weights = tmp_path / "bad.h5"
    _bad_weights(kind, policy, weights)
    before = digest(weights) if weights.exists() else None
    gif = tmp_path / "keep.gif"
    gif.write_bytes(b"existing")
    proc = run(tmp_path, "play", [ROOT / "play.py", "--weights", weights, "--gif", gif])
    assert message in one_line_error(proc, "play.py")
    assert (digest(weights) if weights.exists() else None) == before
    assert gif.read_bytes() == b"existing"


@pytest.mark.parametrize(
    "script, args, message",
    [
        ("play.py", ["--episodes", "0"], "--episodes must be >= 1, got 0"),
        ("train.py", ["--steps", "-5"], "--steps must be >= 1, got -5"),
        ("train.py", ["--gamma", "2"], "--gamma must be <= 1.0, got 2.0"),
        ("train.py", ["--game", "NotAGame"], "unknown Atari game 'NotAGame'"),
        ("train.py", ["--learning-rate", "nan"], "--learning-rate must be a finite number, got nan"),
        ("train.py", ["--steps", "100", "--warmup", "100"], "no update would run"),
        ("play.py", ["--epsilon", "nan"], "--epsilon must be a finite number, got nan"),
        ("play.py", ["--gif", "/proc/x.gif"], "cannot write to --gif's folder /proc"),
    ],
)
def test_out_of_range_flags(policy, tmp_path, script, args, message):
    out = tmp_path / "out.h5"
    shutil.copy(policy, out)
    before = digest(out)
    extra = ["--weights", out] if script == "play.py" else ["--output", tmp_path / "new.h5", "--run-dir",
                                                             tmp_path / "run"]
    proc = run(tmp_path, "cli", [ROOT / script, *args, *extra])
    assert message in one_line_error(proc, script)
    assert digest(out) == before
    assert not (tmp_path / "new.h5").exists() and not (tmp_path / "run").exists()


def test_train_refuses_to_overwrite_existing_output(tmp_path):
    out = tmp_path / "policy.h5"
    out.write_bytes(b"an earlier run's network")
    proc = run(tmp_path, "train", [ROOT / "train.py", *TRAIN_ARGS, "--output", out, "--run-dir", tmp_path / "run"])
    line = one_line_error(proc, "train.py")
    assert "already exists" in line and "--overwrite" in line
    assert out.read_bytes() == b"an earlier run's network"
    assert not (tmp_path / "run").exists()


def test_train_checks_every_path_before_training(tmp_path):
    """A bad --output folder or --run-dir is found before any step (hours of training were lost
    when the final save failed), and an earlier run's folder is never written over."""
    earlier = tmp_path / "earlier"
    earlier.mkdir()
    (earlier / "episodes.csv").write_text("an earlier run's scores")
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    out = ["--output", tmp_path / "new" / "policy.h5"]
    cases = {
        "cannot write to --output's folder /proc/nope": [*TRAIN_ARGS, "--output", "/proc/nope/policy.h5",
                                                         "--run-dir", tmp_path / "run"],
        "already holds a run; choose another --run-dir": [*TRAIN_ARGS, *out, "--run-dir", earlier],
        "is a file; give a folder": [*TRAIN_ARGS, *out, "--run-dir", a_file],
        "cannot write to --run-dir /proc/nope/run": [*TRAIN_ARGS, *out, "--run-dir", "/proc/nope/run"],
    }
    for message, args in cases.items():
        proc = run(tmp_path, "train", [ROOT / "train.py", *args])
        assert message in one_line_error(proc, "train.py"), message
        assert "training" not in proc.stdout
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("train.")) == ["a_file", "earlier"]
    assert (earlier / "episodes.csv").read_text() == "an earlier run's scores" and len(list(earlier.iterdir())) == 1
