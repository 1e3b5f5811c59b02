"""Evaluation: whole games with raw scores, many at once, one batched forward pass per step.

Training scores are noisy (exploration, clipped rewards); an evaluation plays complete games
under the project's one protocol (``core.atari.EVAL_PROTOCOL``, CleanRL's): on the env the
explorers train on, so after a lost life the env serves (1 no-op, FIRE) and the agent's frame
stack starts anew, exactly as in training; each game's raw score, up to 30 no-op starts, a small
epsilon.
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
from core.atari import EVAL_EPSILON, EVAL_MAX_STEPS, AtariEnv, game_seeds, make_env
from core.frames import FRAME_SHAPE, WINDOW


class Evaluator:
    """Plays evaluation games of ``game`` with weights it is handed.

    Each :meth:`evaluate` call draws fresh game seeds from ``(seed, number of earlier calls)``
    (``core.atari.game_seeds``, which play.py's --seed uses too):
    successive evaluations see different no-op starts, and a new Evaluator with the same seed
    replays the same sequence of evaluations exactly.
    """

    def __init__(
        self,
        game: str,
        n_actions: int,
        dueling: bool = False,
        epsilon: float = EVAL_EPSILON,
        max_steps: int = EVAL_MAX_STEPS,
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

        A lost life ends the agent's episode, not the game: the env serves (``reset()``: 1 no-op,
        FIRE) and the game's frame stack starts again from zeros, as the explorers' does. A game
        still running after ``max_steps`` agent steps counts with its score so far; ``truncated``
        says how many did; ``lives_lost`` counts the serves. With ``record`` (a caption, e.g. the
        agent step), the first game also comes back as an animated GIF, ``gif``, captioned with it
        and the score: encoded here, on the evaluator's idle-priority CPU time, not in the driver.
        """
        from core.pictures import GameRecorder

        if episodes < 1:
            raise ValueError(f"episodes must be >= 1, got {episodes}")
        start = time.perf_counter()
        self.model.set_weights(weights)
        seeds = game_seeds(self.seed, episodes, self.calls)
        rng = np.random.default_rng([self.seed, self.calls, 1])  # the epsilon draws
        self.calls += 1
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
        lives_lost = 0
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
                if "game_score" in info:  # game over, or cut at max_steps
                    scores[i] = info["game_score"]  # the env's own tally, the score we always report
                    truncated[i] = cut and not terminated
                elif terminated:  # a lost life: the env serves, the agent sees a new episode
                    lives_lost += 1
                    frame, reset_info = self.envs[i].reset()
                    if recorder and i == 0:
                        recorder.capture(self.envs[0].ale)
                    if "game_score" in reset_info:  # the game ended during the serve
                        scores[i] = reset_info["game_score"]
                        continue
                    states[i] = 0
                    states[i, -1] = frame
                    running.append(i)
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
            "lives_lost": lives_lost,
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
    epsilon: float = EVAL_EPSILON,
    seed: int = 0,
    max_steps: int = EVAL_MAX_STEPS,
) -> dict[str, Any]:
    """Evaluate a saved ``policy.h5`` (plain or dueling, told by its weight shapes) under the
    evaluation protocol; ``play.py --seed SEED`` plays the same games.

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
