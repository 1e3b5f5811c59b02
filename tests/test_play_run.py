"""``play.py RUN_DIR``: a run's best network (else its newest) on the run's own game, in a fresh
process; --weights still picks the file; a folder that is not a run is a one-line error."""

from __future__ import annotations

import kerasrl_compat  # noqa: F401  (Keras 2 before TensorFlow loads)

# isort: split
import json
import re
from pathlib import Path

import numpy as np
import pytest
from test_classic import ROOT, ok, one_line_error, run

from core.network import build_q_network
from core.policy_file import save_policy


@pytest.fixture(scope="module")
def pong_run(tmp_path_factory) -> Path:
    """A launch.py run folder of Pong (6 actions): config.json, policy.h5 and best-policy.h5."""
    run_dir = tmp_path_factory.mktemp("play") / "pong-run"
    run_dir.mkdir()
    (run_dir / "config.json").write_text(json.dumps({"game": "Pong", "num_actors": 1}))
    model = build_q_network(6)
    rng = np.random.default_rng(0)
    for name in ("policy.h5", "best-policy.h5", "other.h5"):
        model.set_weights([rng.normal(0, 0.01, w.shape).astype(np.float32) for w in model.get_weights()])
        save_policy(model, run_dir / name)
    return run_dir


def played(out: str) -> tuple[str, str]:
    loaded = re.search(r"^loaded (.*): plain network, 6 actions$", out, re.M)
    game = re.search(r"^playing 1 game\(s\) of (\w+) with ", out, re.M)
    assert loaded and game, out
    return loaded[1], game[1]


def test_play_a_run_directory(pong_run, tmp_path):
    args = ["--max-steps", "30", "--seed", "0"]
    assert played(ok(run(tmp_path, "best", [ROOT / "play.py", pong_run, *args]))) == (
        str(pong_run / "best-policy.h5"), "Pong")
    other = pong_run / "other.h5"
    assert played(ok(run(tmp_path, "other", [ROOT / "play.py", pong_run, "--weights", other, *args]))) == (
        str(other), "Pong")
    newest = tmp_path / "newest"
    newest.mkdir()
    for name in ("config.json", "policy.h5"):  # a run without an evaluation yet
        (newest / name).write_bytes((pong_run / name).read_bytes())
    assert played(ok(run(tmp_path, "newest", [ROOT / "play.py", newest, "--game", "pong", *args]))) == (
        str(newest / "policy.h5"), "Pong")


@pytest.mark.parametrize("case, message", [
    ("missing", "no such run directory"),
    ("no-config", "no readable config.json"),
    ("no-network", "holds no network yet"),
    ("other-game", "is a run of Pong, not Breakout; leave out --game"),
])
def test_play_run_directory_errors(pong_run, tmp_path, case, message):
    folder = tmp_path / case
    extra: list[str] = []
    if case == "no-config":
        folder.mkdir()
        (folder / "policy.h5").write_bytes((pong_run / "policy.h5").read_bytes())
    elif case == "no-network":
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"game": "Pong"}))
    elif case == "other-game":
        folder, extra = pong_run, ["--game", "Breakout"]
    line = one_line_error(run(tmp_path, case, [ROOT / "play.py", folder, *extra]), "play.py")
    assert message in line
