"""The run log: what a distributed run tells its user, and keeps on disk, as it goes.

Progress lines on the console; in the run directory TensorBoard scalars (tb/), metrics.jsonl
(one record per progress line), episodes.csv (every finished training game) and
evaluations.csv (every evaluation). Files are appended to, so a resumed run continues them,
after :func:`trim_past` has dropped what the crashed run wrote past its checkpoint (the resumed
run plays that stretch again), and TensorBoard is told to discard the same (a SessionLog START).

episodes.csv columns: env_step, stream, epsilon, score, wall_seconds. (train.py's episodes.csv
has other columns: game, env_step, game_score, wall_seconds; see its --help.)
"""

from __future__ import annotations

import csv
import json
import math
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

import kerasrl_compat
from config import Config
from core.atomic import drop_unfinished_writes, write_atomically
from flags import hms


class RunLog:
    """Progress lines, TensorBoard scalars, metrics.jsonl and episodes.csv of one run."""

    def __init__(self, cfg: Config, run_dir: Path, games: int = 0, resumed_at: int | None = None,
                 updates: int = 0, start: float | None = None) -> None:
        """``start``: the ``time.monotonic()`` that wall_seconds count from (a resumed run's is moved back by
        the wall clock its checkpoint had run, so the columns go on from there); ``resumed_at`` and
        ``updates``: the counts a resumed run starts at, so that its first rates count from them."""
        tf = kerasrl_compat.load_tensorflow()

        self.cfg = cfg
        self.tf = tf
        self.writer = tf.summary.create_file_writer(str(run_dir / "tb"))
        if resumed_at is not None:
            self._discard_tensorboard_past(resumed_at)
        self.metrics = open(run_dir / "metrics.jsonl", "a")
        new_csv = not (run_dir / "episodes.csv").exists()
        self.episodes_file = open(run_dir / "episodes.csv", "a", newline="")
        self.episodes = csv.writer(self.episodes_file)
        if new_csv:
            self.episodes.writerow(["env_step", "stream", "epsilon", "score", "wall_seconds"])
            self.episodes_file.flush()  # a crash before the first game must not leave the file without it
        new_eval = not (run_dir / "evaluations.csv").exists()
        self.evals_file = open(run_dir / "evaluations.csv", "a", newline="")
        self.evals = csv.writer(self.evals_file)
        if new_eval:
            self.evals.writerow(["env_step", "learner_step", "wall_seconds", "mean", "min", "max", "episodes",
                                 "truncated", "weights_version"])
            self.evals_file.flush()
        self.last_eval: float | None = None
        self.last_eval_version: int | None = None
        self.scores: deque[float] = deque(maxlen=100)
        self.start = time.monotonic() if start is None else start
        self.last = (time.monotonic(), resumed_at or 0, updates)
        self.games = games

    def _discard_tensorboard_past(self, env_steps: int) -> None:
        """A resume from the checkpoint at agent step ``env_steps``: TensorBoard drops every event the
        crashed run wrote past it. Its reader (tensorboard 2.21's plugin_event_accumulator, for the
        version-2 event files tf.summary writes) takes the first SessionLog START of a run directory
        for the session's start and, at every later one, purges the events read so far at a step >= its
        step. So two STARTs open this run's new event file (which sorts after the old ones): in a run
        whose files hold no START yet the first one is that session start, else both purge alike."""
        from tensorflow.python.ops import summary_ops_v2  # writes a whole Event; tf.summary has no public call

        tf = self.tf
        start = tf.compat.v1.Event(step=env_steps + 1, wall_time=time.time(),
                                   session_log=tf.compat.v1.SessionLog(status=tf.compat.v1.SessionLog.START))
        with self.writer.as_default():
            for _ in range(2):
                summary_ops_v2.import_event(tf.constant(start.SerializeToString()))
        self.writer.flush()

    def games_done(self, env_steps: int, games: list[dict]) -> None:
        wall = round(time.monotonic() - self.start, 1)
        with self.writer.as_default():
            for g in games:
                self.games += 1
                self.scores.append(g["score"])
                self.episodes.writerow([env_steps, g["stream"], f"{g['eps']:.5f}", g["score"], wall])
                self.tf.summary.scalar("episodic_return", g["score"], step=env_steps)
        self.episodes_file.flush()

    def evaluation(self, env_steps: int, learner_steps: int, version: int, result: dict) -> None:
        """One finished evaluation: evaluations.csv, TensorBoard and the progress line."""
        self.last_eval = result["mean"]
        self.last_eval_version = version
        self.evals.writerow([env_steps, learner_steps, round(time.monotonic() - self.start, 1),
                             round(result["mean"], 3), result["min"], result["max"], len(result["scores"]),
                             result.get("truncated", 0), version])
        self.evals_file.flush()
        with self.writer.as_default():
            self.tf.summary.scalar("eval/mean_score", result["mean"], step=env_steps)
            self.tf.summary.scalar("eval/max_score", result["max"], step=env_steps)
        self.writer.flush()

    def progress(self, env_steps: int, learner_steps: int, replay_size: int, learner: dict,
                 epsilon: float, last_export: float | None, restarts: dict[str, int] | None = None) -> None:
        now = time.monotonic()
        t, e, u = self.last
        dt = max(now - t, 1e-9)
        env_rate, upd_rate = (env_steps - e) / dt, (learner_steps - u) / dt
        self.last = (now, env_steps, learner_steps)
        mean = sum(self.scores) / len(self.scores) if self.scores else float("nan")
        record = {
            "wall_seconds": round(now - self.start, 1),
            "env_steps": env_steps,
            "learner_steps": learner_steps,
            "env_steps_per_s": round(env_rate, 1),
            "learner_steps_per_s": round(upd_rate, 2),
            "replay_size": replay_size,
            "games": self.games,
            "mean_score_100": mean if self.scores else None,
            "td_loss": learner.get("loss"),
            "mean_q": learner.get("mean_q"),
            "learning_rate": learner.get("learning_rate"),
            "epsilon": epsilon,
            "target_syncs": learner.get("target_syncs", 0),
            "eval_mean_score": self.last_eval,
            **{f"{role}_restarts": n for role, n in (restarts or {}).items()},
        }
        self.metrics.write(json.dumps(record) + "\n")
        self.metrics.flush()
        with self.writer.as_default():
            for key in ("env_steps_per_s", "learner_steps_per_s", "replay_size", "epsilon", "td_loss", "mean_q",
                        "learning_rate"):
                if record[key] is not None and not (isinstance(record[key], float) and math.isnan(record[key])):
                    self.tf.summary.scalar(key, record[key], step=env_steps)
        self.writer.flush()
        eta = (self.cfg.total_env_steps - env_steps) / env_rate if env_rate > 0 else math.inf
        eta = min(eta, max(0.0, self.cfg.max_seconds - (now - self.start)))  # --max-minutes, if sooner
        export = f"{hms(now - last_export)} ago" if last_export else "none yet"
        loss = learner.get("loss", float("nan"))
        print(
            f"env {env_steps:>10,}/{self.cfg.total_env_steps:,} ({100 * env_steps / self.cfg.total_env_steps:4.1f}%)"
            f" | {env_rate:6.0f} env/s | {upd_rate:5.1f} upd/s | replay {replay_size:,} | "
            f"score(last {len(self.scores)}) {mean:6.2f}"
            + (f" | eval {self.last_eval:6.2f}" if self.last_eval is not None else "")
            + f" | loss {loss:.4f} | export {export} | eta {hms(eta)}"
            + "".join(f" | {role} restarts {n}" for role, n in (restarts or {}).items() if n),
            flush=True,
        )

    def close(self) -> None:
        self.evals_file.close()
        self.metrics.close()
        self.episodes_file.close()
        self.writer.close()


def trim_past(run_dir: Path, env_steps: int) -> dict[str, int]:
    """On resume from the checkpoint at agent step ``env_steps``: drop every row of episodes.csv,
    evaluations.csv, snapshots.csv and metrics.jsonl past it (and a row cut short by the crash);
    return the rows dropped per file. Each file is replaced atomically: a crash during the trim
    leaves it whole, trimmed or not, and the next resume trims it again. The snapshots past it
    go too, and the temp files of the writes the crash cut."""
    dropped = {}
    for name, step_of in (("episodes.csv", _csv_column("env_step")), ("evaluations.csv", _csv_column("env_step")),
                          ("snapshots.csv", _csv_column("env_steps")), ("metrics.jsonl", _json_steps)):
        path = run_dir / name
        if not path.is_file():
            continue
        lines = path.read_text().splitlines(keepends=True)
        header = lines[:1] if name.endswith(".csv") else []
        if header and not header[0].endswith("\n") or name.endswith(".csv") and not header:
            path.unlink()  # no whole header, so no whole row: RunLog writes the file anew
            continue
        try:
            step = step_of(header[0] if header else "")
        except ValueError:  # not a file of ours: leave it as it is
            continue
        kept = [line for line in lines[len(header):] if line.endswith("\n") and _at_most(step, line, env_steps)]
        if len(kept) < len(lines) - len(header):
            text = "".join(header + kept)
            write_atomically(path, lambda tmp, text=text: Path(tmp).write_text(text))
            dropped[name] = len(lines) - len(header) - len(kept)
    # after snapshots.csv: a row never names a missing file (a file without a row may stay a moment)
    for path in sorted((run_dir / "snapshots").glob("policy-*.h5")):
        step = path.stem.removeprefix("policy-").split("-")[0]  # policy-<step>[-at-<minutes>min]
        if step.isdigit() and int(step) > env_steps:
            path.unlink()
            dropped["snapshots/"] = dropped.get("snapshots/", 0) + 1
    # the temp files of writes the crash cut (policy.h5, the checkpoint, a snapshot, ...): nothing writes yet
    for folder in [run_dir, *(p for p in run_dir.iterdir() if p.is_dir())]:
        if cut := drop_unfinished_writes(folder):
            dropped["unfinished writes"] = dropped.get("unfinished writes", 0) + len(cut)
    return dropped


def _csv_column(column: str) -> Callable[[str], Callable[[str], int]]:
    def reader(header: str) -> Callable[[str], int]:
        index = next(csv.reader([header])).index(column)
        return lambda line: int(float(next(csv.reader([line]))[index]))
    return reader


def _json_steps(header: str) -> Callable[[str], int]:
    return lambda line: int(json.loads(line)["env_steps"])


def _at_most(step: Callable[[str], int], line: str, env_steps: int) -> bool:
    try:
        return step(line) <= env_steps
    except (ValueError, KeyError, IndexError, StopIteration):
        return False  # a row the crash cut short


def best_evaluation(run_dir: Path) -> float:
    """The best mean score in RUN_DIR/evaluations.csv (-inf when none): the score of best-policy.h5."""
    try:
        with open(run_dir / "evaluations.csv", newline="") as f:
            return max((float(row["mean"]) for row in csv.DictReader(f)), default=-math.inf)
    except (OSError, KeyError, ValueError):
        return -math.inf
