"""What a user's terminal shows: launch.py, train.py and play.py run as ``./dqn`` runs them (tiny
sizes, fresh processes, launch with its own local Ray), each finishes, writes its network, and no
library warning reaches stdout or stderr.

CI also runs this file alone on a second Python as its smoke test (set-up, launch, train, play).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Python's warnings ("...: UserWarning: ..."), absl/Ray log warnings, nanobind's exit-time report
NOISE = re.compile(r"Warning\b|WARNING|nanobind: leaked")


def user_run(tmp_path: Path, name: str, args: list[str]) -> str:
    """``python SCRIPT ARGS`` with the environment ``./dqn`` gives it; returns stdout+stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONWARNINGS", "TF_CPP_MIN_LOG_LEVEL")}
    env.update(PYTHONPATH=str(ROOT), TF_USE_LEGACY_KERAS="1", RAY_USAGE_STATS_ENABLED="0", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, *map(str, args)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    (tmp_path / f"{name}.out").write_text(proc.stdout + proc.stderr)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc.stdout + proc.stderr


def assert_quiet(output: str) -> None:
    noisy = [line for line in output.splitlines() if NOISE.search(line)]
    assert not noisy, "\n".join(noisy)


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("entry")


def test_launch_tiny_run_then_play_its_network_with_a_gif_are_quiet(work: Path) -> None:
    """launch.py writes a network (the default preset's plain one) and play.py plays it with a GIF, in
    one test so that play always has its input. The GIF recorder once kept the emulator alive
    until exit, where nanobind reported it as leaked."""
    run = work / "launch"
    out = user_run(work, "launch", [
        ROOT / "launch.py", "--num-actors", "1", "--envs-per-actor", "2", "--total-env-steps", "600",
        "--learning-starts", "200", "--replay-capacity", "1000", "--export-every", "20", "--eval-episodes", "1",
        "--eval-max-steps", "300", "--log-every", "2", "--run-dir", run])
    assert (run / "policy.h5").stat().st_size > 6_000_000
    assert re.search(r"^done: 600 agent steps", out, re.M), out
    assert_quiet(out)

    gif = work / "game.gif"
    out = user_run(work, "play", [ROOT / "play.py", "--weights", run / "policy.h5", "--max-steps", "200",
                                  "--seed", "1", "--gif", gif])
    assert re.search(r"^loaded .*: plain network", out, re.M), out
    assert re.search(r"^mean score over 1 game\(s\): \d+\.\d\d$", out, re.M), out
    assert gif.stat().st_size > 0
    assert_quiet(out)


def test_train_tiny_run_is_quiet(work: Path) -> None:
    run = work / "train"
    out = user_run(work, "train", [
        ROOT / "train.py", "--steps", "300", "--warmup", "100", "--memory-limit", "1000", "--run-dir", run,
        "--output", run / "policy.h5"])
    assert (run / "policy.h5").stat().st_size > 6_000_000
    assert "done after 300 steps" in out
    assert_quiet(out)


def test_only_the_listed_warnings_are_silenced(tmp_path: Path) -> None:
    """The filter is narrow: tf_keras's state_updates warning goes, the same text from another
    module and any other warning still reach the terminal."""
    code = """if True:
        import warnings
        import kerasrl_compat
        text = "`Model.state_updates` will be removed in a future version."
        warnings.warn_explicit(text, UserWarning, "training_v1.py", 1, module="tf_keras.src.engine.training_v1")
        warnings.warn_explicit(text, UserWarning, "mine.py", 2, module="mine")
        warnings.warn_explicit("something else", UserWarning, "training_v1.py", 3,
                               module="tf_keras.src.engine.training_v1")
    """
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("PYTHONWARNINGS", None)
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    shown = [line for line in proc.stderr.splitlines() if "Warning" in line]
    assert shown == ["mine.py:2: UserWarning: `Model.state_updates` will be removed in a future version.",
                     "training_v1.py:3: UserWarning: something else"], proc.stderr
