"""Pictures of a run: the learning curve as a PNG, a game as an animated GIF, both for TensorBoard.

Shared by ``launch.py`` (its evaluator records games; its driver draws the curve) and
``train.py`` (the curve from its episode scores). Every function returns encoded bytes and
writes nothing: the program that owns the run directory writes them, atomically.
"""

from __future__ import annotations

import csv
import io
import os
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

CURVE_FILE = "learning-curve.png"
BEST_GAME_FILE = "best-game.gif"
GAMES_FOLDER = "games"
MAX_GIF_FRAMES = 4_500  # 2.5 minutes at 30 frames/s; longer games are shown faster (see GameRecorder)
GIF_FPS = 25  # agent steps per GIF second (GIF counts in 1/100 s): 4 emulator frames each, 1.7x the game
CAPTION_HEIGHT = 14


@dataclass
class Scores:
    """Scores against agent steps and wall-clock seconds (``low``/``high``: a min-max band)."""

    steps: np.ndarray
    seconds: np.ndarray
    scores: np.ndarray
    low: np.ndarray | None = None
    high: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.steps)


def read_scores(path: str | os.PathLike, step: str, score: str, band: tuple[str, str] | None = None) -> Scores:
    """Columns ``step``, ``wall_seconds`` and ``score`` of a run's CSV (empty when it is missing).

    Wall seconds restart at 0 when a run is resumed: they are made cumulative, so the curve
    against time shows the time spent training."""
    rows: list[dict[str, str]] = []
    try:
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get(score) not in (None, "")]
    except FileNotFoundError:
        pass
    column = lambda name: np.array([float(r[name]) for r in rows], np.float64)  # noqa: E731
    seconds = column("wall_seconds")
    if len(seconds) > 1:  # a resume starts the clock again: add what ran before it
        restarts = np.flatnonzero(np.diff(seconds) < 0) + 1
        for i in restarts:
            seconds[i:] += seconds[i - 1]
    low, high = (column(band[0]), column(band[1])) if band else (None, None)
    return Scores(column(step), seconds, column(score), low, high)


def _rolling_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Mean of the last ``window`` values at each point (of fewer at the start)."""
    sums = np.cumsum(np.concatenate([[0.0], values]))
    ends = np.arange(1, len(values) + 1)
    starts = np.maximum(ends - window, 0)
    return (sums[ends] - sums[starts]) / (ends - starts)


def learning_curve_png(games: Scores, evaluations: Scores | None = None, title: str = "",
                       window: int = 100) -> bytes:
    """The learning curve as PNG bytes: scores against agent steps (left) and wall-clock time
    (right: minutes, or hours for runs of two hours or more).

    ``games``: every training game's raw score, drawn as dots and as the mean of the last
    ``window`` games; ``evaluations``: mean evaluation scores with their min-max band."""
    import matplotlib

    matplotlib.use("Agg")  # no display; the driver and the evaluator have none
    from matplotlib.figure import Figure  # the object API: no global pyplot state, nothing to close

    fig = Figure(figsize=(10, 3.8), dpi=90)
    axes = fig.subplots(1, 2, sharey=True)
    every = max(1, len(games) // 4_000)  # dots beyond a few thousand add ink, not information
    mean = _rolling_mean(games.scores, window) if len(games) else games.scores
    longest = max([*games.seconds[-1:], *(evaluations.seconds[-1:] if evaluations else [])], default=0.0)
    unit, per = ("hours", 3600) if longest >= 7200 else ("minutes", 60)
    for ax, x_games, x_evals, label in (
        (axes[0], games.steps, evaluations.steps if evaluations else None, "agent steps"),
        (axes[1], games.seconds / per, evaluations.seconds / per if evaluations else None, f"wall-clock {unit}"),
    ):
        if len(games):
            ax.plot(x_games[::every], games.scores[::every], ".", ms=2, color="tab:blue", alpha=0.25)
            ax.plot(x_games, mean, "-", color="tab:blue", lw=1.2, label=f"training (mean of last {window} games)")
        if evaluations is not None and len(evaluations):
            if evaluations.low is not None and evaluations.high is not None:
                ax.fill_between(x_evals, evaluations.low, evaluations.high, color="tab:orange", alpha=0.2, lw=0)
            ax.plot(x_evals, evaluations.scores, "o-", ms=3, color="tab:orange", lw=1.5,
                    label="evaluation (mean, min-max)")
        ax.set_xlabel(label)
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("raw game score")
    axes[0].legend(loc="upper left", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    out = io.BytesIO()
    fig.savefig(out, format="png")
    return out.getvalue()


class GameRecorder:
    """The screens of one game, kept small, for an animated GIF of the whole game.

    Each screen is ALE's palette-index picture (``ale.getScreen``), zlib-compressed (about 1 KB
    for Breakout instead of 100 KB of RGB), with the colours of the palette read from
    ``getScreenRGB`` the first time an index is seen: exact colours, no quantizing. A game longer
    than ``max_frames`` agent steps keeps every second screen, then every fourth, and so on: the
    GIF shows the whole game, faster.
    """

    def __init__(self, max_frames: int = MAX_GIF_FRAMES) -> None:
        if max_frames < 2:
            raise ValueError(f"max_frames must be >= 2, got {max_frames}")
        self.max_frames = max_frames
        self.frames: list[bytes] = []
        self.palette = np.zeros((256, 3), np.uint8)
        self.known = np.zeros(256, bool)
        self.shape: tuple[int, int] | None = None
        self.stride = 1  # keep one screen in ``stride``
        self.seen = 0  # screens offered

    def capture(self, ale: Any) -> None:
        """Keep the screen ALE shows now (every ``stride``-th call)."""
        self.seen += 1
        if (self.seen - 1) % self.stride:
            return
        screen = ale.getScreen()
        present = np.bincount(screen.ravel(), minlength=256) > 0
        if (present & ~self.known).any():
            self.palette[screen.ravel()] = ale.getScreenRGB().reshape(-1, 3)
            self.known |= present
        self.shape = screen.shape
        self.frames.append(zlib.compress(np.ascontiguousarray(screen, np.uint8).tobytes(), 1))
        if len(self.frames) >= self.max_frames:
            self.frames = self.frames[::2]
            self.stride *= 2

    def gif(self, caption: str = "", fps: int = GIF_FPS) -> bytes:
        """The game as an animated GIF (``caption`` in a strip below the screen); b"" if empty."""
        from PIL import Image, ImageDraw

        if not self.frames or self.shape is None:
            return b""
        height, width = self.shape
        strip = np.zeros((CAPTION_HEIGHT if caption else 0, width), np.uint8)
        if caption:  # drawn once, below every screen
            text = Image.fromarray(strip, "P")
            ImageDraw.Draw(text).text((2, 1), caption, fill=255)
            strip = np.asarray(text)
        palette = self.palette.copy()
        palette[255] = (255, 255, 255)  # the caption's ink; ALE's NTSC palette uses even indices only
        colours = palette.tobytes()
        images = []
        for data in self.frames:
            screen = np.frombuffer(zlib.decompress(data), np.uint8).reshape(height, width)
            image = Image.fromarray(np.concatenate([screen, strip]), "P")
            image.putpalette(colours)
            images.append(image)
        out = io.BytesIO()
        speed = f" (x{self.stride} speed)" if self.stride > 1 else ""
        images[0].save(out, format="GIF", save_all=True, append_images=images[1:], loop=0,
                       duration=round(1000 / fps), comment=(caption + speed).encode())
        return out.getvalue()


def image_summary(tag: str, encoded: bytes) -> bytes:
    """A serialized TensorBoard ``Summary`` with one image: a PNG, or an animated GIF (shown
    animated, the way tensorboardX writes videos). Write it with
    ``tf.summary.experimental.write_raw_pb``."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    with Image.open(io.BytesIO(encoded)) as image:
        width, height = image.size
    picture = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=encoded)
    return Summary(value=[Summary.Value(tag=tag, image=picture)]).SerializeToString()


def frame_strip_png(gif: bytes, frames: int = 6, start: float = 0.1) -> bytes:
    """``frames`` frames of a GIF side by side, evenly spread from ``start`` (a fraction) to its
    end, as one PNG: a still picture of a game for documents."""
    from PIL import Image

    with Image.open(io.BytesIO(gif)) as image:
        count = image.n_frames
        picks = np.linspace(int(start * (count - 1)), count - 1, frames).round().astype(int)
        width, height = image.size
        strip = Image.new("RGB", (frames * width + (frames - 1) * 4, height), "white")
        for i, index in enumerate(picks):
            image.seek(int(index))
            strip.paste(image.convert("RGB"), (i * (width + 4), 0))
    out = io.BytesIO()
    strip.save(out, format="PNG", optimize=True)
    return out.getvalue()
