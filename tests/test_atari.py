"""core.atari on the real ALE emulator: frames, game names, lives, rewards, seeding."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from core.atari import FRAME_SHAPE, AtariEnv, UnknownGameError, make_env, rom_id

BREAKOUT_ACTIONS = ["NOOP", "FIRE", "RIGHT", "LEFT"]


def actions(n: int, seed: int = 0, n_actions: int = 4) -> list[int]:
    return [int(a) for a in np.random.default_rng(seed).integers(n_actions, size=n)]


def test_frames_are_84x84_uint8_after_reset_and_step():
    env = make_env("Breakout", training=False, seed=0)
    obs, info = env.reset()
    assert FRAME_SHAPE == (84, 84)
    assert obs.shape == (84, 84) and obs.dtype == np.uint8
    assert env.observation_space.contains(obs)
    assert info["lives"] == 5
    assert obs.max() > obs.min()  # a picture, not a blank frame
    obs, reward, terminated, truncated, info = env.step(1)
    assert obs.shape == (84, 84) and obs.dtype == np.uint8
    assert isinstance(reward, float) and not terminated and not truncated
    assert info["raw_reward"] == reward
    env.close()


def test_breakout_has_four_actions_including_fire():
    env = make_env("Breakout", training=True, seed=0)
    assert env.action_space.n == 4
    assert env.get_action_meanings() == BREAKOUT_ACTIONS
    env.close()


@pytest.mark.parametrize(
    "name, rom",
    [
        ("Breakout", "breakout"),
        ("breakout", "breakout"),
        ("ALE/Breakout-v5", "breakout"),
        ("BreakoutNoFrameskip-v4", "breakout"),
        ("BreakoutDeterministic-v4", "breakout"),
        ("MsPacman", "ms_pacman"),
        ("ms_pacman", "ms_pacman"),
        ("SpaceInvaders", "space_invaders"),
    ],
)
def test_game_names_map_to_rom_ids(name, rom):
    assert rom_id(name) == rom


def test_unknown_game_error_suggests_close_names():
    with pytest.raises(UnknownGameError) as err:
        rom_id("Breakot")
    message = str(err.value)
    assert "'Breakot'" in message and "Did you mean: breakout" in message
    assert "\n" not in message
    assert isinstance(err.value, ValueError)
    with pytest.raises(UnknownGameError):
        make_env("NotAGame", training=False)


def test_frame_skip_below_one_is_rejected():
    with pytest.raises(ValueError, match="frame_skip"):
        AtariEnv("Breakout", frame_skip=0)


def test_training_env_ends_episodes_at_life_loss_and_continues_the_game():
    env = make_env("Breakout", training=True, seed=0)
    _, info = env.reset()
    assert info["lives"] == 5
    game_raw = life_raw = 0.0
    episodes = 0
    for action in actions(5000):
        _, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        assert reward == np.sign(info["raw_reward"])
        game_raw += info["raw_reward"]
        life_raw += info["raw_reward"]
        if not terminated:
            assert "game_score" not in info
            continue
        episodes += 1
        if "game_score" in info:
            break
        # a lost life: the learner's episode ends, the emulator's game goes on
        assert info["lives"] > 0 and not env.ale.game_over()
        frame = env.ale.getEpisodeFrameNumber()
        _, reset_info = env.reset()
        assert reset_info["lives"] == info["lives"]  # no new game: same lives
        assert env.ale.getEpisodeFrameNumber() > frame  # emulator was not reset
        life_raw = 0.0
    else:
        pytest.fail("the game did not end in 5000 random steps")
    assert episodes == 5 and info["lives"] == 0
    assert info["game_score"] == game_raw  # the whole game's raw score, over all lives
    assert game_raw > life_raw  # points scored in earlier lives were kept
    # after game over, reset starts a new game
    _, info = env.reset()
    assert info["lives"] == 5 and env.ale.getEpisodeFrameNumber() <= 4 * 31
    env.close()


def test_evaluation_env_is_the_training_env_with_raw_rewards():
    """The evaluation protocol plays the game the explorers train on: the same frames, lives,
    episode ends at lost lives and serves (1 no-op, FIRE) on the same seed; only rewards differ."""
    train, evaluate = make_env("Breakout", training=True, seed=0), make_env("Breakout", training=False, seed=0)
    frame_t, info_t = train.reset()
    frame_e, info_e = evaluate.reset()
    assert np.array_equal(frame_t, frame_e) and info_t == info_e
    episodes = 0
    for action in actions(5000, seed=1):
        frame_t, reward_t, term_t, trunc_t, info_t = train.step(action)
        frame_e, reward_e, term_e, trunc_e, info_e = evaluate.step(action)
        assert np.array_equal(frame_t, frame_e) and (term_t, trunc_t) == (term_e, trunc_e)
        assert reward_e == info_e["raw_reward"] == info_t["raw_reward"] and reward_t == np.sign(reward_e)
        if "game_score" in info_e:
            assert info_e["game_score"] == info_t["game_score"]
            break
        if term_e:  # a lost life ends the episode; reset serves without starting a new game
            episodes += 1
            frame = evaluate.ale.getEpisodeFrameNumber()
            frame_t, info_t = train.reset()
            frame_e, info_e = evaluate.reset()
            assert np.array_equal(frame_t, frame_e) and info_t == info_e
            assert evaluate.ale.getEpisodeFrameNumber() == frame + 2 * 4  # 1 no-op and FIRE, 4 frames each
    else:
        pytest.fail("the game did not end in 5000 random steps")
    assert episodes == 4 and info_e["lives"] == 0
    train.close()
    evaluate.close()


def test_whole_game_env_plays_on_through_lost_lives():
    """episodic_life=False: keras-rl's dqn.test style, one episode per game, no serve after a lost life."""
    env = make_env("Breakout", training=False, episodic_life=False, seed=0)
    env.reset()
    lives_seen, total = set(), 0.0
    for action in actions(5000, seed=1):
        _, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        assert reward == info["raw_reward"]
        total += reward
        lives_seen.add(info["lives"])
        if terminated:
            break
    else:
        pytest.fail("the game did not end in 5000 random steps")
    assert lives_seen == {0, 1, 2, 3, 4, 5}  # every life lost within one episode
    assert env.ale.game_over() and info["game_score"] == total
    env.close()


def test_rewards_are_clipped_for_training_only():
    # Space Invaders pays 5 to 30 points per invader: raw rewards above 1 come quickly.
    for training in (True, False):
        env = make_env("SpaceInvaders", training=training, seed=0)
        env.reset()
        big = None
        for _ in range(1000):
            _, reward, terminated, _, info = env.step(1)  # FIRE
            raw = info["raw_reward"]
            assert reward == (np.sign(raw) if training else raw)
            if raw > 1:
                big = (reward, raw)
                break
            if terminated:
                env.reset()
        assert big is not None, "no reward above 1 in 1000 steps"
        assert big[0] == (1.0 if training else big[1])
        env.close()


def test_truncation_at_max_episode_steps():
    env = make_env("Breakout", training=False, seed=0, max_episode_steps=10)
    for _ in range(2):  # the step counter restarts with every game
        env.reset()
        for step in range(1, 11):
            _, _, terminated, truncated, info = env.step(0)
            assert not terminated
            assert truncated == (step == 10)
        assert "game_score" in info
    env.close()


def test_same_seed_same_frames_other_seed_other_noop_start():
    seq = actions(60, seed=2)

    def frames(env: AtariEnv, seed: int | None = None) -> list[np.ndarray]:
        out = [env.reset(seed=seed)[0]]
        out += [env.step(a)[0] for a in seq]
        return out

    a, b = make_env("Breakout", training=False, seed=3), make_env("Breakout", training=False, seed=3)
    fa, fb = frames(a), frames(b)
    assert all(np.array_equal(x, y) for x, y in zip(fa, fb, strict=True))
    assert not all(np.array_equal(fa[0], x) for x in fa[1:])  # the frames do change
    assert all(np.array_equal(x, y) for x, y in zip(fa, frames(a, seed=3), strict=True))  # reset(seed=)

    starts = set()
    for seed in (0, 1):
        env = make_env("Breakout", training=False, seed=seed)
        env.reset()
        frame = env.ale.getEpisodeFrameNumber()
        assert 4 * 2 <= frame <= 4 * 31  # 1..30 no-ops, then FIRE, 4 frames each
        starts.add(frame)
        env.close()
    assert len(starts) == 2
    env = AtariEnv("Breakout", noop_max=0, seed=0)
    env.reset()
    assert env.ale.getEpisodeFrameNumber() == 4  # FIRE only


def test_frame_skip_advances_the_emulator_by_that_many_frames():
    for skip in (1, 4):
        env = AtariEnv("Breakout", frame_skip=skip, noop_max=0, seed=0)
        env.reset()
        before = env.ale.getEpisodeFrameNumber()
        for _ in range(5):
            env.step(0)
        assert env.ale.getEpisodeFrameNumber() - before == 5 * skip
        env.close()


def test_observation_is_max_of_last_two_frames():
    env = AtariEnv("Breakout", frame_skip=4, seed=0)
    env.reset()
    ale, action_set = env.ale, env._env._action_set
    differs_from_last_frame = 0
    for action in [1] + actions(40, seed=4):
        state = ale.cloneState()
        screens = []
        for _ in range(4):
            ale.act(action_set[action])
            screens.append(ale.getScreenGrayscale())
        ale.restoreState(state)
        merged = np.maximum(screens[-2], screens[-1])
        expected = np.asarray(Image.fromarray(merged).resize((84, 84), Image.BILINEAR))
        last_only = np.asarray(Image.fromarray(screens[-1]).resize((84, 84), Image.BILINEAR))
        obs = env.step(action)[0]
        assert np.array_equal(obs, expected)
        differs_from_last_frame += not np.array_equal(obs, last_only)
    assert differs_from_last_frame > 0  # the moving ball shows twice: the max is really taken
    env.close()


def test_render_gives_full_colour_screen():
    env = make_env("Breakout", training=False, seed=0)
    env.reset()
    env.step(1)
    rgb = env.render()
    assert rgb.shape == (210, 160, 3) and rgb.dtype == np.uint8
    assert rgb.max() > 0
    env.close()
