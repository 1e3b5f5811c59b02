"""actors.evaluator in-process (eager TensorFlow): whole games under the evaluation protocol, raw
scores, the step cap, epsilon-greedy, reproducible seeds, and saved plain and dueling policy files.
What happens at a lost life is tested in test_protocol.py."""

from __future__ import annotations

import kerasrl_compat  # noqa: F401  (Keras 2 before TensorFlow loads)

# isort: split
import numpy as np
import pytest

from actors.evaluator import Evaluator, evaluate_policy_file
from core.atari import make_env
from core.network import build_q_network
from core.policy_file import PolicyFileError, save_policy

NOOP, FIRE, RIGHT, LEFT = range(4)  # Breakout's actions; SpaceInvaders' FIRE is 1 too


def always(model, action: int, dueling: bool = False) -> list[np.ndarray]:
    """Weights whose Q-values are the same for every state, highest for ``action``."""
    weights = [np.zeros_like(w) for w in model.get_weights()]
    weights[-1][action + 1 if dueling else action] = 1.0  # dueling: column 0 is V
    return weights


def hand_play(game: str, seed: int, action: int, max_steps: int, one_life: bool = False) -> tuple[float, int, dict]:
    """One game under the protocol (or only its first life) pressing ``action`` throughout: the
    game's raw score, the agent's steps, the last info."""
    env = make_env(game, training=False, max_episode_steps=max_steps)
    env.reset(seed=seed)
    steps = 0
    while True:
        _, _, terminated, truncated, info = env.step(action)
        steps += 1
        if "game_score" in info or (terminated and one_life):
            env.close()
            return info.get("game_score", 0.0), steps, info
        if terminated:  # a lost life: the env serves
            info = env.reset()[1]
            if "game_score" in info:
                env.close()
                return info["game_score"], steps, info


def test_constant_policy_and_step_cap():
    evaluator = Evaluator("Breakout", 4, epsilon=0.0, max_steps=40, seed=0)
    result = evaluator.evaluate(always(evaluator.model, LEFT), episodes=3)
    # 5 lives take far longer than 40 steps: every game runs into the cap
    assert result["truncated"] == 3
    assert result["game_steps"] == [40, 40, 40] and result["steps"] == 120
    assert result["actions"] == [0, 0, 0, 120]
    assert len(result["scores"]) == 3 and len(set(result["seeds"])) == 3
    assert result["mean"] == pytest.approx(np.mean(result["scores"]))
    assert result["min"] == min(result["scores"]) and result["max"] == max(result["scores"])
    assert result["seconds"] > 0
    evaluator.close()


def test_epsilon_greedy_like_keras_rl():
    evaluator = Evaluator("Breakout", 4, epsilon=0.25, max_steps=50, seed=1)
    counts = evaluator.evaluate(always(evaluator.model, RIGHT), episodes=4)["actions"]
    total = sum(counts)
    # EpsGreedyQPolicy: greedy with 1 - eps, uniform over all 4 (greedy included) with eps
    assert 0.72 < counts[RIGHT] / total < 0.92  # expected 0.8125
    assert all(counts[a] > 0 for a in (NOOP, FIRE, LEFT))


def test_scores_are_raw():
    evaluator = Evaluator("SpaceInvaders", 6, epsilon=0.0, max_steps=100, seed=2)
    result = evaluator.evaluate(always(evaluator.model, FIRE), episodes=2)
    assert result["truncated"] == 2
    for seed, score, steps in zip(result["seeds"], result["scores"], result["game_steps"], strict=True):
        assert (score, steps) == hand_play("SpaceInvaders", seed, FIRE, 100)[:2]
    # an invader is worth 5 to 30 points: clipped rewards could not sum to this in a few hits
    assert max(result["scores"]) >= 10


def test_whole_games_not_lives():
    evaluator = Evaluator("Breakout", 4, epsilon=0.0, max_steps=2_000, seed=3)
    result = evaluator.evaluate(always(evaluator.model, FIRE), episodes=2)
    assert result["truncated"] == 0
    for seed, score, steps in zip(result["seeds"], result["scores"], result["game_steps"], strict=True):
        hand_score, hand_steps, info = hand_play("Breakout", seed, FIRE, 2_000)
        assert (score, steps) == (hand_score, hand_steps) and info["lives"] == 0  # all 5 lives played
        assert steps > 2 * hand_play("Breakout", seed, FIRE, 2_000, one_life=True)[1]  # one life is far shorter
    assert result["lives_lost"] == 8


def test_actions_come_from_the_network_on_stacked_scaled_frames():
    evaluator = Evaluator("Breakout", 4, epsilon=0.0, max_steps=400, seed=4)
    rng = np.random.default_rng(0)
    weights = [rng.normal(0, 0.5 if w.ndim == 1 else 2 / np.sqrt(np.prod(w.shape[:-1])), w.shape).astype(np.float32)
               for w in evaluator.model.get_weights()]
    result = evaluator.evaluate(weights, episodes=2)
    model = build_q_network(4)
    model.set_weights(weights)
    counts, scores = np.zeros(4, int), []
    for seed in result["seeds"]:  # one game at a time, state by state, a new stack for each life
        env = make_env("Breakout", training=False, max_episode_steps=400)
        frame = env.reset(seed=seed)[0]
        while True:
            state = np.zeros((4, 84, 84), np.uint8)
            state[-1] = frame
            while True:
                action = int(np.argmax(model(state[None].astype(np.float32) / 255.0).numpy()[0]))
                counts[action] += 1
                frame, _, terminated, truncated, info = env.step(action)
                if terminated or truncated:
                    break
                state = np.concatenate([state[1:], frame[None]])
            if "game_score" in info:
                break
            frame, info = env.reset()  # a lost life: the serve
            if "game_score" in info:  # the game ended during it
                break
        env.close()
        scores.append(info["game_score"])
    assert result["actions"] == counts.tolist() and result["scores"] == scores
    assert (counts > 0).sum() >= 2  # the greedy action depends on the state
    assert result["lives_lost"] > 0  # and new stacks were started within games


def test_same_seed_same_games_new_seeds_each_call():
    first, second = (Evaluator("Breakout", 4, epsilon=0.5, max_steps=60, seed=11) for _ in range(2))
    weights = always(first.model, FIRE)
    a1, b1 = first.evaluate(weights, episodes=2), second.evaluate(weights, episodes=2)
    for key in ("scores", "game_steps", "actions", "seeds", "truncated"):
        assert a1[key] == b1[key], key
    a2 = first.evaluate(weights, episodes=2)
    assert not set(a2["seeds"]) & set(a1["seeds"])  # new no-op starts on the next call
    assert a2["actions"] != a1["actions"]  # and new epsilon draws
    assert Evaluator("Breakout", 4, seed=12).evaluate(weights, episodes=2)["seeds"] != a1["seeds"]


def test_evaluate_policy_file_dueling_and_plain(tmp_path):
    dueling = build_q_network(4, dueling=True)
    dueling.set_weights(always(dueling, RIGHT, dueling=True))
    path = save_policy(dueling, tmp_path / "dueling.h5")
    result = evaluate_policy_file(path, "Breakout", episodes=2, epsilon=0.0, seed=0, max_steps=30)
    assert result["dueling"] is True and result["file"] == str(path)
    assert result["actions"] == [0, 0, 60, 0] and result["truncated"] == 2
    again = evaluate_policy_file(path, "Breakout", episodes=2, epsilon=0.0, seed=0, max_steps=30)
    assert again["seeds"] == result["seeds"]  # every file of a learning curve sees the same starts

    plain = build_q_network(4)
    plain.set_weights(always(plain, LEFT))
    result = evaluate_policy_file(save_policy(plain, tmp_path / "plain.h5"), "Breakout", episodes=1, epsilon=0.0,
                                  max_steps=30)
    assert result["dueling"] is False and result["actions"] == [0, 0, 0, 30]
    with pytest.raises(PolicyFileError, match="different network"):
        evaluate_policy_file(path, "Pong", episodes=1)


def test_bad_arguments():
    with pytest.raises(ValueError, match="actions"):
        Evaluator("Breakout", 6)
    with pytest.raises(ValueError, match="epsilon"):
        Evaluator("Breakout", 4, epsilon=1.5)
    evaluator = Evaluator("Breakout", 4, max_steps=5)
    with pytest.raises(ValueError, match="episodes"):
        evaluator.evaluate(evaluator.model.get_weights(), episodes=0)
