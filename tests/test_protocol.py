"""The evaluation protocol (``core.atari.EVAL_PROTOCOL``) on the real emulator, in the evaluator
and in play.py: after a lost life the env itself serves (1 no-op, then FIRE) and the agent's frame
stack starts anew, as the explorers train; both score the same file on the same game seeds alike;
an untrained greedy network no longer idles to the step cap."""

from __future__ import annotations

import kerasrl_compat  # noqa: F401  (Keras 2 before TensorFlow loads)

# isort: split
import re
from pathlib import Path

import numpy as np
import pytest
from test_classic import ROOT, ok, run
from test_evaluator import always

from actors.evaluator import Evaluator, evaluate_policy_file
from core.atari import AtariEnv
from core.network import build_q_network
from core.policy_file import save_policy

NOOP, FIRE, RIGHT, LEFT = range(4)
PROBE = Path(__file__).resolve().parent / "protocol_probe.py"


def served_lives(events: list[tuple]) -> int:
    """Check every lost life in ``events`` (``("act", action, lives)`` for each action the env
    executes, ``("q", state)`` for each state the agent's network sees); return how many.

    After the action that lost a life the env executes NOOP then FIRE, and the first state the
    agent looks at after that FIRE holds one frame and three zero frames: nothing of the lost life.
    """
    acts = [i for i, e in enumerate(events) if e[0] == "act"]
    served = 0
    for before, at in zip(acts, acts[1:], strict=False):
        lives_before, lives_after = events[before][2], events[at][2]
        if not 0 < lives_after < lives_before:
            continue
        noop, fire = [a for a in acts if a > at][:2]
        assert (events[noop][1], events[fire][1]) == (NOOP, FIRE), f"after the life lost at event {at}"
        first_look = next(e[1] for e in events[fire + 1:] if e[0] == "q")
        assert not first_look[:3].any() and first_look[3].any(), f"stack after the serve at event {fire}"
        served += 1
    return served


def evaluator_events(monkeypatch: pytest.MonkeyPatch, evaluator: Evaluator, weights: list[np.ndarray]) -> tuple:
    """One evaluation game, with every executed action and every state the network saw."""
    events: list[tuple] = []
    act, q = AtariEnv._act, evaluator._q

    def recorded_act(self: AtariEnv, action: int) -> float:
        reward = act(self, action)
        events.append(("act", int(action), int(self.ale.lives())))
        return reward

    def recorded_q(states: np.ndarray):
        events.extend(("q", s.copy()) for s in np.asarray(states))
        return q(states)

    monkeypatch.setattr(AtariEnv, "_act", recorded_act)
    evaluator._q = recorded_q
    return evaluator.evaluate(weights, episodes=1), events


def probe_play(tmp_path: Path, name: str, args: list) -> tuple[str, list[tuple]]:
    """play.py with ARGS in a fresh process (keras-rl's graph mode), recorded by protocol_probe.py."""
    out = ok(run(tmp_path, name, [PROBE, tmp_path / f"{name}.npz", *args]))
    data = np.load(tmp_path / f"{name}.npz")
    states = iter(data["states"])
    events = [("act", int(a), int(n)) if k == 0 else ("q", next(states))
              for k, a, n in zip(data["kinds"], data["actions"], data["lives"], strict=True)]
    return out, events


def games(out: str) -> list[tuple[float, int]]:
    return [(float(s), int(n)) for s, n in re.findall(r"^game \d+: score (\d+) in (\d+) steps$", out, re.M)]


def test_evaluator_serves_after_a_lost_life_and_restarts_the_stack(monkeypatch):
    evaluator = Evaluator("Breakout", 4, epsilon=0.0, max_steps=3_000, seed=5)
    result, events = evaluator_events(monkeypatch, evaluator, always(evaluator.model, LEFT))
    evaluator.close()
    assert result["actions"] == [0, 0, 0, result["steps"]]  # the agent never chose NOOP or FIRE
    assert result["truncated"] == 0 and result["lives_lost"] == 4  # all 5 lives played, 4 serves
    assert served_lives(events) == 4
    assert sum(1 for e in events if e[0] == "act" and e[1] == FIRE) == 5  # the game's start, and each serve


def test_play_serves_after_a_lost_life_restarts_the_stack_and_caps_each_game(tmp_path):
    model = build_q_network(4)
    model.set_weights(always(model, LEFT))
    policy = save_policy(model, tmp_path / "left.h5")
    out, events = probe_play(tmp_path, "left", ["--weights", policy, "--episodes", "2", "--seed", "5",
                                                "--max-steps", "150"])
    assert {e[1] for e in events if e[0] == "act"} >= {NOOP, FIRE, LEFT}
    assert served_lives(events) >= 4  # at least 2 lives lost per game before the cap
    # the cap counts the game's agent steps over all its lives (one life is far shorter than 150 steps)
    assert games(out) == [(games(out)[0][0], 150), (games(out)[1][0], 150)]


def test_evaluator_and_play_score_the_same_file_alike(tmp_path):
    """Greedy, on the same game seeds: the evaluator (batched, eager TensorFlow) and play.py
    (keras-rl's DQNAgent.test, one episode per life) play the same games, step for step."""
    model = build_q_network(4)
    rng = np.random.default_rng(3)
    model.set_weights([rng.normal(0, 0.5 if w.ndim == 1 else 2 / np.sqrt(np.prod(w.shape[:-1])), w.shape)
                       .astype(np.float32) for w in model.get_weights()])
    policy = save_policy(model, tmp_path / "random.h5")
    evaluated = evaluate_policy_file(policy, "Breakout", 3, epsilon=0.0, seed=9, max_steps=2_000)
    assert evaluated["lives_lost"] > 0 and evaluated["truncated"] < 3  # serves happen in these games
    out = ok(run(tmp_path, "play", [ROOT / "play.py", "--weights", policy, "--episodes", "3", "--seed", "9",
                                    "--max-steps", "2000"]))
    assert games(out) == list(zip(evaluated["scores"], evaluated["game_steps"], strict=True))
    assert re.search(rf"^mean score over 3 game\(s\): {evaluated['mean']:.2f}$", out, re.M), out


def test_untrained_greedy_network_no_longer_idles_to_the_cap(tmp_path):
    """A freshly initialised network that never chooses FIRE: under the old evaluation (no serve
    after a lost life) the ball never came back and every game ran to the cap."""
    kerasrl_compat.load_tensorflow().keras.utils.set_random_seed(0)
    policy = save_policy(build_q_network(4), tmp_path / "untrained.h5")
    result = evaluate_policy_file(policy, "Breakout", 2, epsilon=0.0, seed=0, max_steps=3_000)
    assert result["actions"][FIRE] == 0  # it never serves by itself
    assert result["truncated"] == 0 and max(result["game_steps"]) < 3_000
    assert result["lives_lost"] == 8
