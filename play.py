"""Play an Atari game with a trained ``policy.h5`` through keras-rl's ``DQNAgent``.

Loads the weights into the project's Q-network inside a keras-rl ``DQNAgent`` with
``GreedyQPolicy`` (or ``EpsGreedyQPolicy`` with --epsilon > 0) and plays whole games on the real
emulator under the evaluation protocol the evaluator uses (``core.atari.EVAL_PROTOCOL``): each
life is one keras-rl test episode on the training env with raw rewards, the env serves after a
lost life, and a game's score is its raw score over all lives. It can write the first game as an
animated GIF. A dueling network is recognised from the file's weight shapes and gets
``enable_dueling_network=True``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kerasrl_compat
from flags import check_writable_folder, flag, given_flags, parse

EPILOG = """examples:
  python play.py runs/<run>                       # its best-policy.h5 (else policy.h5), on its own game
  python play.py --weights runs/<run>/policy.h5 --episodes 3 --gif breakout.gif
"""


@dataclass
class PlayConfig:
    run_dir: str | None = flag(None, "a run directory of launch.py or train.py: plays its best-policy.h5 (else "
                               "its policy.h5) on the game in its config.json; --weights picks another file",
                               positional=True)
    weights: str = flag("policy.h5", "the policy.h5 to load (from train.py or launch.py)")
    game: str = flag("Breakout", "ALE game the weights were trained on (with RUN_DIR: that run's game)")
    episodes: int = flag(1, "games to play", low=1, high=10_000)
    max_steps: int = flag(27_000, "agent-step cap per game, over all its lives (27,000 = 108,000 frames, the "
                          "evaluation protocol's)", low=1)
    epsilon: float = flag(
        0.0, "0: GreedyQPolicy; > 0: EpsGreedyQPolicy with this epsilon (0.05: the evaluation protocol's)",
        low=0.0, high=1.0
    )
    gif: str | None = flag(None, "write the first game's full-colour frames as an animated GIF here")
    gif_fps: int = flag(30, "frames per second of the GIF", low=1, high=100)
    seed: int | None = flag(None, "random seed (game seeds, epsilon): with SEED the games are those "
                            "evaluate_policy_file(seed=SEED) plays; default: different each run", low=0)

    def validate(self) -> None:
        if self.gif is not None:
            gif = Path(self.gif)
            if gif.suffix.lower() != ".gif":
                raise ValueError(f"--gif must end in .gif, got {gif}")
            if not gif.parent.exists():
                raise ValueError(f"folder {gif.parent} for --gif does not exist; create it first")
            check_writable_folder(gif.parent, "--gif's folder")  # found now, not after the game


class GifRecorder:
    """Keeps the full-colour screen after every step of the first game, palette-compressed."""

    def __init__(self, env: Any) -> None:
        self.env = env
        self.frames: list[Any] = []
        self.recording = True

    def capture(self) -> None:
        if self.recording:
            from PIL import Image

            self.frames.append(Image.fromarray(self.env.render()).quantize(colors=64))

    def save(self, path: str, fps: int) -> None:
        from core.atomic import write_atomically

        first, rest = self.frames[0], self.frames[1:]
        duration = round(1000 / fps)
        write_atomically(
            path,
            lambda tmp: first.save(tmp, format="GIF", save_all=True, append_images=rest, duration=duration, loop=0),
        )


class LifeEpisodes(kerasrl_compat.OldGymAPI):
    """The protocol's env as keras-rl's ``test()`` sees it: one keras-rl episode per life.

    keras-rl's memory window restarts after a terminal step, so each life's frame stack starts
    from zeros as in training; between lives :meth:`next_life` lets the env serve (1 no-op, FIRE).
    ``reset()`` hands keras-rl the observation already prepared by :meth:`new_game` or
    :meth:`next_life`; the game's raw score is ``score`` once ``game_over``.
    """

    def __init__(self, env: Any) -> None:
        super().__init__(env)
        self.observation: Any = None
        self.game_over = False
        self.score = 0.0

    def new_game(self, seed: int) -> None:
        self.observation, _ = self.env.reset(seed=seed)
        self.game_over = False

    def next_life(self) -> None:
        """After a lost life: the env serves; a game that ended during the serve is over."""
        self.observation, info = self.env.reset()
        if "game_score" in info:
            self.game_over, self.score = True, float(info["game_score"])

    def reset(self) -> Any:
        observation, self.observation = self.observation, None
        if observation is None:
            raise RuntimeError("keras-rl started an episode that new_game or next_life did not prepare")
        return observation

    def step(self, action: int) -> tuple[Any, float, bool, dict]:
        obs, reward, terminated, truncated, info = self.env.step(int(action))
        if "game_score" in info:  # game over, or cut at --max-steps
            self.game_over, self.score = True, float(info["game_score"])
        return obs, float(reward), bool(terminated or truncated), info


def play(cfg: PlayConfig) -> list[float]:
    """Play ``cfg.episodes`` games under the evaluation protocol; return their raw scores."""
    import numpy as np

    kerasrl_compat.prepare_rl()  # before the first rl import: rl.callbacks needs the Keras version shim
    from rl.callbacks import Callback
    from rl.memory import SequentialMemory
    from rl.policy import EpsGreedyQPolicy, GreedyQPolicy

    from core.atari import EVAL_PROTOCOL, game_seeds, make_env
    from core.policy_file import check_policy_file, is_dueling_file
    from learner.classic import make_dqn_agent

    if cfg.seed is not None:
        np.random.seed(cfg.seed)  # keras-rl's EpsGreedyQPolicy draws from np.random
    game_env = make_env(cfg.game, training=False, max_episode_steps=cfg.max_steps)
    n_actions = int(game_env.action_space.n)
    test_policy = EpsGreedyQPolicy(cfg.epsilon) if cfg.epsilon > 0 else GreedyQPolicy()
    dueling = is_dueling_file(cfg.weights)
    agent = make_dqn_agent(
        n_actions,
        policy=test_policy,
        test_policy=test_policy,
        memory=SequentialMemory(limit=10, window_length=4),
        enable_dueling=dueling,
    )
    check_policy_file(cfg.weights, agent.model)
    agent.load_weights(cfg.weights)

    env = LifeEpisodes(game_env)
    recorder = GifRecorder(game_env) if cfg.gif else None

    class Report(Callback):
        steps = 0  # agent steps of the game so far, over its lives

        def on_episode_begin(self, episode: int, logs: dict | None = None) -> None:
            if recorder:
                recorder.capture()

        def on_action_end(self, action: Any, logs: dict | None = None) -> None:
            if recorder:
                recorder.capture()

        def on_episode_end(self, episode: int, logs: dict) -> None:
            self.steps += int(logs["nb_steps"])

    policy_name = f"EpsGreedyQPolicy(eps={cfg.epsilon})" if cfg.epsilon > 0 else "GreedyQPolicy"
    how = "dueling network, DQNAgent(enable_dueling_network=True)" if dueling else "plain network"
    print(f"loaded {cfg.weights}: {how}, {n_actions} actions", flush=True)
    print(f"playing {cfg.episodes} game(s) of {cfg.game} with {cfg.weights} ({policy_name}; {EVAL_PROTOCOL}: "
          f"one keras-rl episode per life)", flush=True)
    scores: list[float] = []
    for number, seed in enumerate(game_seeds(cfg.seed, cfg.episodes), start=1):
        env.new_game(seed)
        report = Report()
        while not env.game_over:  # the cap is the env's, per game: keras-rl's would count per life
            agent.test(env, nb_episodes=1, visualize=False, callbacks=[report], verbose=0)
            if not env.game_over:
                env.next_life()
        scores.append(env.score)
        if recorder:
            recorder.recording = False  # the GIF is the whole first game, every life
        print(f"game {number}: score {env.score:.0f} in {report.steps} steps", flush=True)
    print(f"mean score over {len(scores)} game(s): {np.mean(scores):.2f}")
    if recorder and recorder.frames:
        recorder.save(cfg.gif, cfg.gif_fps)
        print(f"wrote {len(recorder.frames)} frames to {cfg.gif}")
    game_env.close()
    return scores


class RunDirError(ValueError):
    """A RUN_DIR that is not a run directory, or holds no network yet."""


def run_to_play(run_dir: str, weights: str, game: str, given: set[str]) -> tuple[str, str]:
    """The weights file and the game of a launch.py or train.py run directory: its best-policy.h5,
    else its policy.h5, else train.py's --output; its config.json's game. ``given``: the flags on
    the command line (--weights wins over the run's files, --game must match the run's game)."""
    import json

    from core.atari import rom_id

    folder = Path(run_dir)
    if not folder.is_dir():
        raise RunDirError(f"{folder}: no such run directory; give the folder of a launch.py or train.py run, "
                          f"or --weights FILE")
    try:
        saved = json.loads((folder / "config.json").read_text())
        run_game = str(saved["game"])
    except (OSError, ValueError, TypeError, KeyError):
        raise RunDirError(f"{folder} has no readable config.json with its game: not a run directory of launch.py "
                          f"or train.py; give --weights FILE and --game") from None
    if "game" in given and rom_id(game) != rom_id(run_game):
        raise RunDirError(f"{folder} is a run of {run_game}, not {game}; leave out --game")
    if "weights" in given:
        return weights, run_game
    output = saved.get("output")  # train.py writes its network there, not into the run directory
    for candidate in (folder / "best-policy.h5", folder / "policy.h5", *([Path(output)] if output else [])):
        if candidate.is_file():
            return str(candidate), run_game
    raise RunDirError(f"{folder} holds no network yet (no best-policy.h5 or policy.h5); wait for the run's first "
                      f"export, or give --weights FILE")


def main(argv: list[str] | None = None) -> int:
    cfg = parse(PlayConfig, argv, __doc__, EPILOG, prog="play.py")
    from core.atari import UnknownGameError, rom_id
    from core.policy_file import PolicyFileError, read_weight_shapes

    try:
        if cfg.run_dir is not None:
            cfg.weights, cfg.game = run_to_play(cfg.run_dir, cfg.weights, cfg.game, given_flags(PlayConfig, argv))
        rom_id(cfg.game)  # fail fast, before TensorFlow starts
        read_weight_shapes(cfg.weights)
        play(cfg)
    except (PolicyFileError, UnknownGameError, RunDirError) as exc:
        print(f"play.py: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
