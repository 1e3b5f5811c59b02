"""Run ``play.py`` (its ``main``) with two recorders around the real thing, for tests/test_protocol.py.

Usage: ``python tests/protocol_probe.py OUT.npz PLAY_ARGS...``. keras-rl's agents switch TensorFlow
to graph mode for the whole process, so play.py is probed in a process of its own. Recorded, in
the order they happen:

- every action the env executes (``AtariEnv._act``: the agent's and the env's own no-ops and
  FIREs), with the lives left after it, as ``("act", action, lives)``;
- every state the agent's network is asked about (keras-rl's ``DQNAgent`` passes each state batch
  through ``AtariProcessor.process_state_batch``), as ``("q", state)``.

OUT.npz holds ``kinds`` (0 act, 1 q), ``actions``, ``lives`` (-1 for q) and ``states`` (uint8, one
per q event, scaled back from [0, 1]).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import kerasrl_compat  # noqa: E402,F401  (Keras 2 before TensorFlow loads)

# isort: split
import numpy as np  # noqa: E402

import play  # noqa: E402
from core.atari import AtariEnv  # noqa: E402
from learner.classic import AtariProcessor  # noqa: E402

events: list[tuple] = []


def main() -> int:
    out, argv = sys.argv[1], sys.argv[2:]
    act, process = AtariEnv._act, AtariProcessor.process_state_batch

    def recorded_act(self: AtariEnv, action: int) -> float:
        reward = act(self, action)
        events.append(("act", int(action), int(self.ale.lives())))
        return reward

    def recorded_batch(self: AtariProcessor, batch: np.ndarray) -> np.ndarray:
        scaled = process(self, batch)
        for state in scaled:
            events.append(("q", np.rint(np.asarray(state) * 255).astype(np.uint8)))
        return scaled

    AtariEnv._act = recorded_act
    AtariProcessor.process_state_batch = recorded_batch
    code = play.main(argv)
    states = [e[1] for e in events if e[0] == "q"]
    np.savez_compressed(
        out,
        kinds=np.array([0 if e[0] == "act" else 1 for e in events]),
        actions=np.array([e[1] if e[0] == "act" else -1 for e in events]),
        lives=np.array([e[2] if e[0] == "act" else -1 for e in events]),
        states=np.stack(states) if states else np.zeros((0, 4, 84, 84), np.uint8),
    )
    return code


if __name__ == "__main__":
    sys.exit(main())
