"""Evaluation: whole games with raw scores, many at once, one batched forward pass per step.

Training scores are noisy (exploration, clipped rewards, episodes cut at lost lives); an
evaluation plays complete games on ``make_env(training=False)`` envs (raw scores, up to 30
no-op starts) with a small epsilon, the way DQN papers and keras-rl's ``DQNAgent.test`` report.
:class:`Evaluator` is a plain class so ``distributed.topology`` can wrap it in ``ray.remote``;
:func:`evaluate_policy_file` scores a saved ``policy.h5`` (learning curves from snapshots).
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np

import kerasrl_compat
from actors.cpu_priority import yield_cpu
from core.atari import AtariEnv, make_env
from core.frames import FRAME_SHAPE, WINDOW

SEED_LIMIT = 2**31 - 1  # ALE takes its seed as a 32-bit signed int


class Evaluator:
    """Plays evaluation games of ``game`` with weights it is handed.

    Each :meth:`evaluate` call draws fresh game seeds from ``(seed, number of earlier calls)``:
    successive evaluations see different no-op starts, and a new Evaluator with the same seed
    replays the same sequence of evaluations exactly.
    """

    def __init__(
        self,
        game: str,
        n_actions: int,
        dueling: bool = False,
        epsilon: float = 0.05,
        max_steps: int = 27_000,
        seed: int = 0,
        priority: str = "normal",
    ) -> None:
        if not 0.0 <= epsilon <= 1.0:
            raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        kerasrl_compat.load_tensorflow()
        from core.network import build_q_network, q_function

        yield_cpu(priority)  # it plays beside the learner: actors.cpu_priority says why
        self.game = game
        self.n_actions = n_actions
        self.dueling = dueling
        self.epsilon = epsilon
        self.max_steps = max_steps
        self.seed = seed
        self.calls = 0
        self.envs: list[AtariEnv] = []
        self._add_env()  # fails early for an unknown game or a wrong action count
        self.model = build_q_network(n_actions, dueling=dueling)
        self._q = q_function(self.model)  # the explorer's acting path, batched over the games

    def _add_env(self) -> None:
        env = make_env(self.game, training=False, max_episode_steps=self.max_steps)
        if env.action_space.n != self.n_actions:
            env.close()
            raise ValueError(f"{self.game} has {env.action_space.n} actions, the network {self.n_actions}")
        self.envs.append(env)

    def _select(self, q: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """keras-rl's ``EpsGreedyQPolicy.select_action`` per row: with probability epsilon a
        uniform action (the greedy one included), else the first argmax. Drawn from ``rng``
        rather than the global ``np.random`` so that evaluations are reproducible."""
        explore = rng.random(len(q)) < self.epsilon
        random_actions = rng.integers(0, self.n_actions, size=len(q))
        return np.where(explore, random_actions, np.argmax(q, axis=1))

    def evaluate(self, weights: list[np.ndarray], episodes: int, record: str | None = None) -> dict[str, Any]:
        """Play ``episodes`` whole games at once with ``weights``; report their raw scores.

        A game still running after ``max_steps`` agent steps counts with its score so far;
        ``truncated`` says how many did. With ``record`` (a caption, e.g. the agent step), the
        first game also comes back as an animated GIF, ``gif``, captioned with it and the score:
        encoded here, on the evaluator's idle-priority CPU time, not in the driver.
        """
        from core.pictures import GameRecorder

        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        start = time.perf_counter()
        self.model.set_weights(weights)
        rng = np.random.default_rng([self.seed, self.calls])
        self.calls += 1
        seeds = [int(s) for s in rng.integers(0, SEED_LIMIT, size=episodes)]
        while len(self.envs) < episodes:
            self._add_env()

        states = np.zeros((episodes, WINDOW, *FRAME_SHAPE), np.uint8)
        for i, game_seed in enumerate(seeds):
            frame, _ = self.envs[i].reset(seed=game_seed)
            states[i, -1] = frame  # earlier frames zero, as keras-rl's memory pads a new episode
        recorder = GameRecorder() if record is not None else None
        if recorder:
            recorder.capture(self.envs[0].ale)
        scores = np.zeros(episodes)
        game_steps = np.zeros(episodes, np.int64)
        truncated = np.zeros(episodes, bool)
        action_counts = np.zeros(self.n_actions, np.int64)
        active = np.arange(episodes)
        while active.size:
            q = self._q(states[active]).numpy()
            actions = self._select(q, rng)
            np.add.at(action_counts, actions, 1)
            running = []
            for i, action in zip(active, actions, strict=True):
                frame, _, terminated, cut, info = self.envs[i].step(int(action))
                if recorder and i == 0:
                    recorder.capture(self.envs[0].ale)
                game_steps[i] += 1
                scores[i] += info["raw_reward"]
                if terminated or cut:
                    scores[i] = info["game_score"]  # the env's own tally, the score we always report
                    truncated[i] = cut and not terminated
                else:
                    states[i, :-1] = states[i, 1:].copy()
                    states[i, -1] = frame
                    running.append(i)
            active = np.asarray(running, np.int64)

        gif = recorder.gif(f"{record}  score {scores[0]:g}") if recorder else None
        return {
            **({"gif": gif} if recorder else {}),
            "scores": scores.tolist(),
            "mean": float(scores.mean()),
            "min": float(scores.min()),
            "max": float(scores.max()),
            "steps": int(game_steps.sum()),
            "game_steps": game_steps.tolist(),
            "truncated": int(truncated.sum()),
            "actions": action_counts.tolist(),
            "seeds": seeds,
            "epsilon": self.epsilon,
            "seconds": time.perf_counter() - start,
        }

    def curve(self, episodes_csv: str, evaluations_csv: str, title: str) -> bytes:
        """launch.py's learning curve as PNG bytes, from its episodes.csv and evaluations.csv.
        Drawn here, at idle priority, because it takes about a second of CPU: in the driver it
        would stall the loop that keeps the explorers and the learner busy."""
        from core.pictures import learning_curve_png, read_scores

        games = read_scores(episodes_csv, "env_step", "score")
        evaluations = read_scores(evaluations_csv, "env_step", "mean", band=("min", "max"))
        return learning_curve_png(games, evaluations, title)

    def close(self) -> None:
        for env in self.envs:
            env.close()
        self.envs = []


def evaluate_policy_file(
    path: str | os.PathLike,
    game: str,
    episodes: int,
    epsilon: float = 0.05,
    seed: int = 0,
    max_steps: int = 27_000,
) -> dict[str, Any]:
    """Evaluate a saved ``policy.h5`` (plain or dueling, told by its weight shapes).

    The same ``seed`` gives every file the same game seeds, so snapshots of one run are
    compared on the same no-op starts. Raises ``PolicyFileError`` for a file that does not fit.
    """
    from core.policy_file import check_policy_file, is_dueling_shapes, read_weight_shapes

    dueling = is_dueling_shapes(read_weight_shapes(path))
    probe = make_env(game, training=False)
    n_actions = int(probe.action_space.n)
    probe.close()
    evaluator = Evaluator(game, n_actions, dueling=dueling, epsilon=epsilon, max_steps=max_steps, seed=seed)
    try:
        check_policy_file(path, evaluator.model)
        evaluator.model.load_weights(str(path))
        result = evaluator.evaluate(evaluator.model.get_weights(), episodes)
    finally:
        evaluator.close()
    return {**result, "file": str(path), "dueling": dueling}
