"""Pictures of a run: the game recorder's GIFs (exact colours, whole games), the learning curve,
the evaluator's recorded games, and a launch.py run folder with and without evaluations,
TensorBoard's event files read back."""

from __future__ import annotations

import kerasrl_compat  # noqa: F401  (Keras 2 before TensorFlow loads)

# isort: split
import csv
import io
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageSequence

from actors.evaluator import Evaluator
from core import pictures
from core.atari import make_env

LEFT = 3
CURVE_SIZE = (900, 342)  # learning_curve_png: 10 x 3.8 inches at 90 dpi


def gif_frames(data: bytes) -> tuple[list[np.ndarray], dict]:
    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "GIF"
        frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(image)]
        return frames, dict(image.info)


def without_repeats(frames: list[np.ndarray]) -> list[np.ndarray]:
    """GIF writers fold a frame equal to the one before into its duration."""
    return [f for i, f in enumerate(frames) if i == 0 or not np.array_equal(f, frames[i - 1])]


def test_recorder_keeps_exact_colours_and_shows_long_games_faster():
    env = make_env("Breakout", training=False)
    env.reset(seed=3)
    recorder = pictures.GameRecorder(max_frames=50)
    rng = np.random.default_rng(0)
    shown = []  # the full-colour screen at every step the recorder keeps
    for step in range(120):
        if step:
            env.step(int(rng.integers(4)))
        recorder.capture(env.ale)
        shown.append(env.render().copy())
    # 50 screens kept: every second from then on; 50 again (step 100): every fourth
    assert recorder.stride == 4
    kept = shown[0:100:4] + shown[100:120:4]
    assert len(recorder.frames) == len(kept) == 30
    data = recorder.gif("step 9  score 0")
    frames, info = gif_frames(data)
    assert [f.shape for f in frames] == [(210 + pictures.CAPTION_HEIGHT, 160, 3)] * len(frames)
    expected = without_repeats(kept)
    assert len(frames) == len(expected)
    for got, want in zip(frames, expected, strict=True):
        assert np.array_equal(got[:210], want), "the colours are ALE's own, not quantized"
    assert frames[0][210:].max() == 255, "the caption is drawn below the screen"
    assert info["comment"] == b"step 9  score 0 (x4 speed)" and info["loop"] == 0
    assert info["duration"] % (1000 // pictures.GIF_FPS) == 0  # repeated screens: a multiple
    assert pictures.GameRecorder().gif() == b""
    env.close()


def test_evaluator_records_its_first_game():
    evaluator = Evaluator("Breakout", 4, epsilon=0.0, max_steps=40, seed=0)
    weights = [np.zeros_like(w) for w in evaluator.model.get_weights()]
    weights[-1][LEFT] = 1.0
    result = evaluator.evaluate(weights, episodes=2, record="step 7")
    frames, info = gif_frames(result["gif"])
    assert info["comment"] == f"step 7  score {result['scores'][0]:g}".encode()
    # the reset screen, one per step and one per serve after a lost life (lives_lost: of both games)
    assert 2 <= len(frames) <= result["game_steps"][0] + 1 + result["lives_lost"]
    assert np.array_equal(frames[-1][:210], evaluator.envs[0].render()), "the game's last screen"
    assert "gif" not in evaluator.evaluate(weights, episodes=1)
    evaluator.close()


def test_read_scores_and_learning_curve(tmp_path):
    path = tmp_path / "evaluations.csv"
    with open(path, "w", newline="") as f:
        rows = csv.writer(f)
        rows.writerow(["env_step", "wall_seconds", "mean", "min", "max"])
        # a run resumed after its third row: the clock starts again
        rows.writerows([[100, 10, 1.5, 0, 3], [200, 20, 2, 1, 3], [300, 30, 4, 2, 6], [400, 5, 5, 5, 5],
                        [500, 12, 6, 4, 8]])
    scores = pictures.read_scores(path, "env_step", "mean", band=("min", "max"))
    assert scores.steps.tolist() == [100, 200, 300, 400, 500]
    assert scores.seconds.tolist() == [10, 20, 30, 35, 42]
    assert scores.scores.tolist() == [1.5, 2, 4, 5, 6] and scores.high.tolist() == [3, 3, 6, 5, 8]
    assert len(pictures.read_scores(tmp_path / "missing.csv", "env_step", "score")) == 0
    assert pictures._rolling_mean(np.array([1.0, 2, 3, 4]), 2).tolist() == [1, 1.5, 2.5, 3.5]
    games = pictures.Scores(np.arange(1.0, 301), np.arange(1.0, 301), np.arange(300.0) % 7)
    for evaluations in (scores, None):
        png = pictures.learning_curve_png(games, evaluations, "Breakout, test")
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and image.size == CURVE_SIZE
    empty = pictures.Scores(np.zeros(0), np.zeros(0), np.zeros(0))
    assert pictures.learning_curve_png(empty).startswith(b"\x89PNG")


def tensorboard_images(tb: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tb), size_guidance={"images": 0})
    events.Reload()
    return {tag: events.Images(tag) for tag in events.Tags()["images"]}


def run_launch(run_dir: Path, *extra: str) -> None:
    import launch

    argv = ["--num-actors", "1", "--envs-per-actor", "2", "--total-env-steps", "1200", "--learning-starts", "400",
            "--replay-capacity", "3000", "--samples-per-insert", "1", "--batch-size", "32", "--log-every", "2",
            "--explorer-priority", "normal", "--run-dir", str(run_dir), *extra]
    assert launch.main(argv) == 0


def test_launch_run_folder_shows_the_run(ray_session, tmp_path):
    run_dir = tmp_path / "run"
    run_launch(run_dir, "--eval-every", "500", "--eval-episodes", "2", "--eval-max-steps", "300")
    with open(run_dir / "evaluations.csv", newline="") as f:
        evals = list(csv.DictReader(f))
    assert [int(e["env_step"]) for e in evals][-1] == 1200 and len(evals) >= 2
    games = sorted((run_dir / pictures.GAMES_FOLDER).iterdir())
    assert [int(g.name.split("-")[1]) for g in games] == [int(e["env_step"]) for e in evals]
    for game in games:
        frames, info = gif_frames(game.read_bytes())
        score = game.name.removesuffix(".gif").split("-score-")[1]
        assert info["comment"].decode().startswith(f"step {int(game.name.split('-')[1]):,}  score {score}")
        assert len(frames) >= 2
    means = [float(e["mean"]) for e in evals]
    best = games[means.index(max(means))]  # the first evaluation with the best mean, as best-policy.h5
    assert (run_dir / pictures.BEST_GAME_FILE).read_bytes() == best.read_bytes()
    with Image.open(run_dir / pictures.CURVE_FILE) as curve:
        assert curve.format == "PNG" and curve.size == CURVE_SIZE
    assert not [p for p in run_dir.rglob(".*") if p.is_file()], "no temporary file is left"

    images = tensorboard_images(run_dir / "tb")
    clips = images["eval/first_game"]
    assert [c.step for c in clips] == [int(e["env_step"]) for e in evals]
    assert [c.encoded_image_string for c in clips] == [g.read_bytes() for g in games]
    assert (clips[0].width, clips[0].height) == (160, 210 + pictures.CAPTION_HEIGHT)
    curves = images["learning_curve"]
    assert len({c.step for c in curves}) == len(curves), "one curve per agent step: the end does not draw it twice"
    assert curves[-1].step == 1200 and curves[-1].encoded_image_string == (run_dir / pictures.CURVE_FILE).read_bytes()
    assert all(c.encoded_image_string.startswith(b"\x89PNG") for c in curves)


def test_launch_without_evaluation_draws_nothing(ray_session, tmp_path):
    run_dir = tmp_path / "run"
    run_launch(run_dir, "--eval-every", "0")
    assert (run_dir / "policy.h5").is_file()
    for name in (pictures.GAMES_FOLDER, pictures.BEST_GAME_FILE, pictures.CURVE_FILE, "best-policy.h5"):
        assert not (run_dir / name).exists(), name
    assert tensorboard_images(run_dir / "tb") == {}


@pytest.mark.parametrize("frames", [3, 6])
def test_frame_strip(frames):
    recorder = pictures.GameRecorder()
    env = make_env("Breakout", training=False)
    env.reset(seed=0)
    for _ in range(20):
        env.step(1)
        recorder.capture(env.ale)
    with Image.open(io.BytesIO(pictures.frame_strip_png(recorder.gif("x"), frames))) as strip:
        assert strip.size == (frames * 160 + (frames - 1) * 4, 210 + pictures.CAPTION_HEIGHT)
    env.close()
