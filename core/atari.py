"""Atari environments with the standard DQN preprocessing (Mnih et al. 2015, Machado et al. 2018).

One env yields single 84x84 uint8 grayscale frames; stacking 4 of them is the job of the
replay memory (keras-rl's ``SequentialMemory`` window) or of the acting loop. The emulator is
driven through ALE directly, frame by frame, so the max over the last two frames of each
skip costs no extra gymnasium call.
"""

from __future__ import annotations

import re
from typing import Any

import ale_py
import gymnasium
import numpy as np
from ale_py.env import AtariEnv as _AleEnv
from PIL import Image

from core.frames import FRAME_SHAPE

ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner per emulator

#: ALE takes a game seed as a 32-bit signed int.
SEED_LIMIT = 2**31 - 1

#: The evaluation protocol every reported score uses (the evaluator, play.py, bench/): CleanRL's
#: dqn_atari evaluation, on the env the explorers train on. Each lost life ends the agent's episode
#: (its frame stack starts anew) and the env serves as it does for training (1 no-op, then FIRE);
#: the score is the whole game's raw score, no-op and FIRE steps included; up to NOOP_MAX random
#: no-ops start each game; epsilon EVAL_EPSILON; a game is cut after EVAL_MAX_STEPS agent steps.
#: docs/learning.md ("Evaluation protocol") gives its sources and how it differs from others.
EVAL_PROTOCOL = "CleanRL's dqn_atari evaluation"
EVAL_EPSILON = 0.05
EVAL_MAX_STEPS = 27_000  # agent steps = 108,000 frames, Dopamine's max_steps_per_episode
NOOP_MAX = 30


class UnknownGameError(ValueError):
    """Raised for a game name ALE has no ROM for."""


def rom_id(game: str) -> str:
    """Map ``Breakout``, ``breakout``, ``MsPacman``, ``ms_pacman`` or ``ALE/Breakout-v5`` to
    ALE's ROM id, or raise :class:`UnknownGameError` naming close matches."""
    name = game.strip()
    name = re.sub(r"^ALE/", "", name)
    name = re.sub(r"(NoFrameskip|Deterministic)?-v\d+$", "", name)
    snake = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", name).lower().replace("-", "_")
    known = ale_py.roms.get_all_rom_ids()
    if snake in known:
        return snake
    flat = snake.replace("_", "")
    for rom in known:
        if rom.replace("_", "") == flat:
            return rom
    close = [r for r in known if flat[:4] and r.replace("_", "").startswith(flat[:4])]
    hint = f" Did you mean: {', '.join(close[:5])}?" if close else ""
    raise UnknownGameError(
        f"unknown Atari game {game!r}.{hint} Use an ALE ROM name such as Breakout, Pong or "
        f"SpaceInvaders ({len(known)} are installed with ale-py)."
    )


class AtariEnv(gymnasium.Env):
    """An ALE game with DQN preprocessing.

    - ``frame_skip`` emulator frames per action; the observation is the pixel-wise max of the
      last two (removes Atari sprite flicker), converted to grayscale and resized to 84x84.
    - up to ``noop_max`` random no-op actions after every real reset.
    - FIRE after every reset where the game needs it to start (Breakout does).
    - ``episodic_life`` (training and the evaluation protocol): a lost life ends the episode, the
      emulator keeps going, and the next ``reset()`` serves (1 no-op, then FIRE);
      ``clip_rewards`` (training only): rewards become their sign.
    - ``info["raw_reward"]`` is the unclipped reward and, when a whole game ends,
      ``info["game_score"]`` its raw score: that is the score we report, always. The rewards of
      the no-op and FIRE steps after a lost life count too; a game that ends during them is
      reported in ``reset()``'s info (``game_score``), and a new game begins.
    - sticky actions are off unless ``sticky_prob`` > 0.
    """

    metadata = {"render_modes": ["rgb_array"]}

    def __init__(
        self,
        game: str = "Breakout",
        *,
        frame_skip: int = 4,
        noop_max: int = NOOP_MAX,
        episodic_life: bool = False,
        clip_rewards: bool = False,
        sticky_prob: float = 0.0,
        max_episode_steps: int = EVAL_MAX_STEPS,
        seed: int | None = None,
    ) -> None:
        if frame_skip < 1:
            raise ValueError("frame_skip must be at least 1")
        self.game = rom_id(game)
        self._env = _AleEnv(
            game=self.game,
            obs_type="grayscale",
            frameskip=1,
            repeat_action_probability=sticky_prob,
            full_action_space=False,
        )
        self.ale = self._env.ale
        self._actions = self._env._action_set
        self.frame_skip = frame_skip
        self.noop_max = noop_max
        self.episodic_life = episodic_life
        self.clip_rewards = clip_rewards
        self.max_episode_steps = max_episode_steps
        self.action_space = gymnasium.spaces.Discrete(len(self._actions))
        self.observation_space = gymnasium.spaces.Box(0, 255, FRAME_SHAPE, np.uint8)
        meanings = self._env.get_action_meanings()
        self._fire = meanings.index("FIRE") if "FIRE" in meanings and len(meanings) >= 3 else None
        height, width = self.ale.getScreenDims()
        self._screens = np.zeros((2, height, width), np.uint8)
        self._lives = 0
        self._game_over = True
        self._steps = 0
        self._score = 0.0
        self._rng = np.random.default_rng(seed)
        if seed is not None:
            self._env.seed_game(seed)
            self._env.load_game()

    def get_action_meanings(self) -> list[str]:
        return self._env.get_action_meanings()

    def _frame(self) -> np.ndarray:
        np.maximum(self._screens[0], self._screens[1], out=self._screens[1])
        image = Image.fromarray(self._screens[1]).resize(FRAME_SHAPE[::-1], Image.BILINEAR)
        return np.asarray(image, dtype=np.uint8)

    def _act(self, action: int) -> float:
        """Run ``frame_skip`` emulator frames, grabbing the last two screens."""
        reward = 0.0
        ale_action = self._actions[action]
        for i in range(self.frame_skip):
            reward += self.ale.act(ale_action)
            if i >= self.frame_skip - 2:
                self.ale.getScreenGrayscale(self._screens[i - self.frame_skip + 2])
            if self.ale.game_over():
                if i < self.frame_skip - 2:  # ended before the screens were grabbed
                    self.ale.getScreenGrayscale(self._screens[1])
                    self._screens[0] = self._screens[1]
                elif i == self.frame_skip - 2:
                    self._screens[1] = self._screens[0]
                break
        return reward

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        if seed is not None:
            self._rng = np.random.default_rng(seed)
            self._env.seed_game(seed)
            self._env.load_game()
            self._game_over = True
        info: dict[str, Any] = {}
        if self._game_over or not self.episodic_life:
            self._new_game()
        elif not self._start_steps(1):  # life lost only: step on from where the emulator is
            # the game ended during those steps: it is reported here, and a new one begins
            info["game_score"] = self._score
            self._new_game()
        self._lives = self.ale.lives()
        return self._frame(), {"lives": self._lives, **info}

    def _new_game(self) -> None:
        for _ in range(10):  # a game that ends within its random no-ops (never seen) is started again
            self.ale.reset_game()
            self._score = 0.0
            self._steps = 0
            self._game_over = False
            noops = int(self._rng.integers(1, self.noop_max + 1)) if self.noop_max > 0 else 0
            if self._start_steps(noops):
                return

    def _start_steps(self, noops: int) -> bool:
        """``noops`` no-op steps, then FIRE where the game needs it. Their rewards are the game's
        too: they go into its raw score. False when the game ended during them."""
        self._screens[:] = 0
        self.ale.getScreenGrayscale(self._screens[1])
        for action in [0] * noops + ([self._fire] if self._fire is not None else []):
            self._score += self._act(action)
            if self.ale.game_over():
                return False
        return True

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        raw = self._act(int(action))
        self._steps += 1
        self._score += raw
        lives = self.ale.lives()
        game_over = self.ale.game_over()
        truncated = not game_over and self._steps >= self.max_episode_steps
        life_lost = 0 < lives < self._lives
        self._lives = lives
        terminated = game_over or (self.episodic_life and life_lost)
        info: dict[str, Any] = {"raw_reward": raw, "lives": lives}
        if game_over or truncated:
            self._game_over = True
            info["game_score"] = self._score
        reward = float(np.sign(raw)) if self.clip_rewards else raw
        return self._frame(), reward, terminated, truncated, info

    def render(self) -> np.ndarray:
        """The full-colour screen (210x160x3), for GIFs."""
        return self.ale.getScreenRGB()

    def close(self) -> None:
        """Close the emulator and drop it at once. An env object still alive at exit (play.py
        --gif left one, through its GIF recorder) would otherwise hold ALE's C++ object into the
        interpreter's shutdown, where nanobind prints a 'leaked instance' report."""
        if self._env is not None:
            self._env.close()
        self._env = self.ale = None


def make_env(
    game: str = "Breakout",
    *,
    training: bool,
    episodic_life: bool = True,
    seed: int | None = None,
    **kwargs: Any,
) -> AtariEnv:
    """The env every trainer and player uses: a lost life ends the episode in training and in the
    evaluation protocol alike, so an agent is scored on the states it learnt from;
    ``episodic_life=False`` plays whole games as keras-rl's ``dqn.test`` does (no serve after a lost
    life). Rewards are clipped for training only; reported scores are always raw."""
    return AtariEnv(game, episodic_life=episodic_life, clip_rewards=training, seed=seed, **kwargs)


def game_seeds(seed: int | None, games: int, call: int = 0) -> list[int]:
    """The game seeds of evaluation ``call`` with ``seed``: the evaluator's, and play.py's with
    --seed, so both play the same games (no-op starts) of the same seed. ``None``: fresh ones."""
    rng = np.random.default_rng(None if seed is None else [seed, call])
    return [int(s) for s in rng.integers(0, SEED_LIMIT, size=games)]
