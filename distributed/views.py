"""What a launch.py run folder shows in pictures, made from its evaluations.

After every evaluation: the first game as ``games/step-<agent step>-score-<score>.gif``, the
best evaluation's as ``best-game.gif`` (beside ``best-policy.h5``), the learning curve as
``learning-curve.png``, and the same clip and curve as TensorBoard images. The evaluator draws
and encodes them (idle priority, no reserved CPU); the driver only writes the bytes, atomically.
A run without evaluations (``--eval-every 0``) has no :class:`RunViews` and writes none of it.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from core.atomic import write_atomically
from core.pictures import BEST_GAME_FILE, CURVE_FILE, GAMES_FOLDER, image_summary
from distributed import first_line


def drop_games_past(run_dir: Path, env_steps: int) -> int:
    """On resume from the checkpoint at agent step ``env_steps``: remove the games/ GIFs of
    evaluations past it (the resumed run evaluates that stretch again); return how many.
    best-game.gif stays, beside the best-policy.h5 it shows."""
    gone = 0
    for path in sorted((run_dir / GAMES_FOLDER).glob("step-*-score-*.gif")):
        step = path.name.split("-")[1]
        if step.isdigit() and int(step) > env_steps:
            path.unlink()
            gone += 1
    return gone


class RunViews:
    """Writes the evaluator's pictures into the run directory and TensorBoard."""

    def __init__(self, run_dir: Path, evaluator: Any, log: Any, title: str, saved: Any = None) -> None:
        self.run_dir, self.evaluator, self.log, self.title = run_dir, evaluator, log, title
        self.saved = saved  # distributed.disk.Saved: a failed write (a full disk) is said, and the run goes on
        self.curve_future: Any = None  # (future, agent step) of the curve being drawn
        self.curve_due: int | None = None  # the agent step of a curve asked for while one was drawn
        self.curve_step: int | None = None  # the agent step of the newest curve asked for

    def evaluated(self, env_steps: int, result: dict, best: bool) -> None:
        """One finished evaluation: its first game's GIF (and best-game.gif), then a new curve."""
        gif = result.get("gif")
        if gif:
            name = f"step-{env_steps:09d}-score-{result['scores'][0]:g}.gif"
            self._write(f"{GAMES_FOLDER}/{name}", gif)
            if best:
                self._write(BEST_GAME_FILE, gif)
            self._tensorboard("eval/first_game", gif, env_steps)
        self.draw_curve(env_steps)

    def draw_curve(self, env_steps: int) -> None:
        """Ask the evaluator for the curve (after the one it is drawing, if any)."""
        self.curve_step = env_steps
        if self.curve_future is not None:
            self.curve_due = env_steps
            return
        run_dir = self.run_dir.resolve()
        future = self.evaluator.curve.remote(str(run_dir / "episodes.csv"), str(run_dir / "evaluations.csv"),
                                             self.title)
        self.curve_future = (future, env_steps)

    def poll(self, timeout: float = 0.0) -> bool:
        """Write the curve once it is drawn; True when none is being drawn any more."""
        import ray

        if self.curve_future is None:
            return True
        future, env_steps = self.curve_future
        if not ray.wait([future], timeout=timeout)[0]:
            return False
        self.curve_future = None
        try:
            png = ray.get(future)
        except ray.exceptions.RayError as exc:  # a lost curve must not end the training
            why = first_line(exc)
            print(f"the learning curve was not drawn ({why}); it is drawn again after the next evaluation",
                  flush=True)
            png = None
        if png:
            self._write(CURVE_FILE, png)
            self._tensorboard("learning_curve", png, env_steps)
        if self.curve_due is not None:
            due, self.curve_due = self.curve_due, None
            self.draw_curve(due)
        return self.curve_future is None

    def finish(self, env_steps: int, timeout: float = 120.0) -> None:
        """At the end of the run: the curve with every game, written before the evaluator goes
        (unless the final evaluation asked for it already: no game was played since)."""
        if self.curve_step != env_steps:
            self.draw_curve(env_steps)
        deadline = time.monotonic() + timeout
        while not self.poll(timeout=0.5):
            if time.monotonic() > deadline:
                print(f"{CURVE_FILE} was not redrawn at the end: the evaluator took over {timeout:.0f} s", flush=True)
                return

    def _write(self, name: str, data: bytes) -> None:
        """RUN_DIR/``name``, atomically."""
        def write() -> None:
            write_atomically(self.run_dir / name, lambda tmp: Path(tmp).write_bytes(data))

        if self.saved is None:
            write()
        else:
            self.saved.save_or_say(write, name)

    def _tensorboard(self, tag: str, encoded: bytes, env_steps: int) -> None:
        with self.log.writer.as_default():
            self.log.tf.summary.experimental.write_raw_pb(image_summary(tag, encoded), step=env_steps)
        self.log.writer.flush()
