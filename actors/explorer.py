"""The explorer: a Ray actor that plays K emulators with one batched Q-network forward pass.

Each call of :meth:`Explorer.run` plays ``weight_sync_every`` agent steps with the weights it
is handed, pushes the transitions to the replay actor as one chunk per emulator stream (keras-rl
``SequentialMemory`` layout, see ``replay.memory``) and returns what happened: steps, finished
games with their raw scores, epsilons. The driver hands the newest weights to every call, so
weights refresh every ``weight_sync_every`` steps.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

import kerasrl_compat
from actors.cpu_priority import yield_cpu
from actors.nstep import nstep_targets
from config import Config
from core.atari import make_env
from core.frames import FRAME_SHAPE, WINDOW
from replay.server import resolve_actor

kerasrl_compat.prepare_rl()
from rl.policy import EpsGreedyQPolicy  # noqa: E402

MAX_PUSHES_IN_FLIGHT = 2


def stream_epsilon(cfg: Config, stream: int, env_steps: int = 0) -> float:
    """Epsilon of one emulator stream (``stream`` counts over all actors)."""
    if cfg.exploration == "fixed":
        return cfg.epsilon
    if cfg.exploration == "anneal":
        frac = min(1.0, env_steps / cfg.eps_anneal_steps)
        return cfg.eps_start + frac * (cfg.eps_end - cfg.eps_start)
    n = cfg.num_streams
    return float(cfg.ladder_base ** (1 + cfg.ladder_alpha * stream / (n - 1))) if n > 1 else cfg.ladder_base


class _Stream:
    """One emulator and the entries it played that are not in the replay yet.

    Besides the keras-rl entry fields it keeps the Q-values the explorer acted on, so that the
    push can compute n-step returns and initial priorities (``actors.nstep``). With n > 1 the
    newest n - 1 entries wait for the steps that complete their returns.
    """

    def __init__(self, env: Any) -> None:
        self.env = env
        self.frames: list[np.ndarray] = []
        self.actions: list[int] = []
        self.rewards: list[float] = []
        self.terminals: list[bool] = []
        self.q_taken: list[float] = []
        self.q_max: list[float] = []
        self.is_obs: list[bool] = []  # a terminal-observation entry (never a transition)
        self.new_segment = True  # the first chunk after (re)start continues nothing

    def record(self, frame: np.ndarray, action: int, reward: float, terminal: bool,
               q: np.ndarray | None = None) -> None:
        """One entry; ``q`` = the Q-values of its state (None for a terminal observation)."""
        self.frames.append(frame)
        self.actions.append(action)
        self.rewards.append(reward)
        self.terminals.append(terminal)
        self.q_taken.append(float(q[action]) if q is not None else 0.0)
        self.q_max.append(float(q.max()) if q is not None else 0.0)
        self.is_obs.append(q is None)

    def take_chunk(self, stream_id: int, cfg: Config, q_next: float, cut: bool = False) -> dict[str, Any] | None:
        """The complete entries as one replay chunk (removed from the buffer); None if none.

        ``q_next``: max Q of the state the stream is in now (with ``cut``, of the final
        observation, which is then the last entry).
        """
        if not self.frames:
            return None
        if cut:
            self.q_max[-1] = q_next  # the final observation is the last entry: returns bootstrap from it
        targets = nstep_targets(self.rewards, self.terminals, self.q_taken, [*self.q_max, q_next],
                                cfg.n_step, cfg.gamma, cut=cut, is_obs=self.is_obs)
        c = targets.complete
        if c == 0:
            return None
        chunk = {
            "stream": stream_id,
            "frames": np.stack(self.frames[:c]),
            "actions": np.asarray(self.actions[:c], np.uint8),
            "rewards": np.asarray(self.rewards[:c], np.float32),
            "terminals": np.asarray(self.terminals[:c], bool),
            "returns": targets.returns[:c],
            "horizons": targets.horizons[:c],
            "dones": targets.dones[:c],
            "priorities": targets.priorities[:c] if cfg.prioritized else None,
            "new_segment": self.new_segment,
        }
        for buf in (self.frames, self.actions, self.rewards, self.terminals, self.q_taken, self.q_max,
                    self.is_obs):
            del buf[:c]
        self.new_segment = False
        return chunk


class Explorer:
    """Plays ``cfg.envs_per_actor`` emulators; stream ids are ``index * K .. index * K + K - 1``."""

    def __init__(self, cfg: Config, index: int, replay: Any, generation: int = 0) -> None:
        # One TF thread per explorer (explorers scale by processes): distributed.topology sets
        # TF_NUM_INTRAOP_THREADS / TF_NUM_INTEROP_THREADS in this actor's environment, because
        # TensorFlow is already initialised by the time this constructor runs.
        kerasrl_compat.load_tensorflow()
        from core.network import build_q_network, q_function

        yield_cpu(cfg.explorer_priority)
        self.cfg = cfg
        self.index = index
        self.replay = resolve_actor(replay)
        k = cfg.envs_per_actor
        self.first_stream = index * k
        # a resumed run (generation) and an explorer Ray restarted after a crash play new games
        seed = cfg.seed * 100_003 + index * 1_009 + generation * 7_919 + _restarts() * 104_729
        self.seed = seed
        np.random.seed(seed % 2**32)  # keras-rl's EpsGreedyQPolicy draws from np.random
        self.streams = [_Stream(make_env(cfg.game, training=True, seed=seed + j)) for j in range(k)]
        self.n_actions = int(self.streams[0].env.action_space.n)
        self.policies = [EpsGreedyQPolicy(eps=stream_epsilon(cfg, self.first_stream + j)) for j in range(k)]
        self.model = build_q_network(self.n_actions, dueling=cfg.dueling, precision=cfg.actor_precision,
                                     acting=True)
        self._q = q_function(self.model)
        self.weights_version = -1
        self.state = np.zeros((k, WINDOW, *FRAME_SHAPE), np.uint8)
        self.frame: list[np.ndarray] = [np.zeros(FRAME_SHAPE, np.uint8)] * k  # newest frame per stream
        for j, s in enumerate(self.streams):
            self._begin_episode(j, s.env.reset()[0])
        self.pushes: list[Any] = []

    def _begin_episode(self, j: int, frame: np.ndarray) -> None:
        self.state[j] = 0
        self.state[j, -1] = frame
        self.frame[j] = frame  # the env returns a fresh array per step: keeping it is safe

    def set_weights(self, weights: list[np.ndarray], version: int) -> None:
        if version != self.weights_version:
            self.model.set_weights(weights)
            self.weights_version = version

    def q_values(self, states: np.ndarray) -> np.ndarray:
        return self._q(states).numpy()

    def run(self, weights: tuple[int, list[np.ndarray]] | None, steps: int, global_env_steps: int = 0) -> dict:
        """Play about ``steps`` agent steps over all emulators; push them; report.

        ``weights`` is ``(version, arrays)`` from the learner, resolved by Ray from an object ref.
        """
        t0 = time.perf_counter()
        if weights is not None:
            self.set_weights(weights[1], weights[0])
        if self.cfg.exploration == "anneal":
            for j, policy in enumerate(self.policies):
                policy.eps = stream_epsilon(self.cfg, self.first_stream + j, global_env_steps)
        k = len(self.streams)
        games: list[dict] = []
        iterations = max(1, -(-steps // k))
        for _ in range(iterations):
            q = self.q_values(self.state)
            for j, stream in enumerate(self.streams):
                action = int(self.policies[j].select_action(q_values=q[j]))
                frame, reward, terminated, truncated, info = stream.env.step(action)
                stream.record(self.frame[j], action, reward, terminated, q[j])
                if terminated or truncated:
                    # keras-rl's convention: the final observation is an entry of its own
                    stream.record(frame, 0, 0.0, False)
                    if "game_score" in info:
                        games.append(
                            {"stream": self.first_stream + j, "score": float(info["game_score"]),
                             "eps": float(self.policies[j].eps)}
                        )
                    if truncated and not terminated:
                        # cut by the step limit: returns bootstrap from the final observation, and
                        # the next episode must not stack onto this one
                        final = np.concatenate([self.state[j, 1:], frame[None]])[None]
                        self._send_chunks([stream.take_chunk(self.first_stream + j, self.cfg,
                                                             float(self.q_values(final)[0].max()), cut=True)])
                        stream.new_segment = True
                    frame, reset_info = stream.env.reset()
                    if "game_score" in reset_info:  # the game ended in the steps after a lost life
                        games.append({"stream": self.first_stream + j, "score": float(reset_info["game_score"]),
                                      "eps": float(self.policies[j].eps)})
                    self._begin_episode(j, frame)
                else:
                    self.state[j, :-1] = self.state[j, 1:]
                    self.state[j, -1] = frame
                    self.frame[j] = frame
        self._push()
        return {
            "actor": self.index,
            "steps": iterations * k,
            "games": games,
            "seconds": time.perf_counter() - t0,
            "weights_version": self.weights_version,
            "epsilons": [float(p.eps) for p in self.policies],
        }

    def _push(self) -> None:
        """Send every stream's complete entries to the replay, in one call."""
        # max Q of each stream's current state: the bootstrap value of its newest entries'
        # returns (and so of their priorities); not needed for 1-step uniform replay
        needs_q = self.cfg.prioritized or self.cfg.n_step > 1
        q_next = self.q_values(self.state).max(axis=1) if needs_q else np.zeros(len(self.streams))
        self._send_chunks([s.take_chunk(self.first_stream + j, self.cfg, float(q_next[j]))
                           for j, s in enumerate(self.streams)])

    def _send_chunks(self, chunks: list[dict | None]) -> None:
        chunks = [c for c in chunks if c is not None]
        if chunks:
            self._send(chunks)

    def _send(self, chunks: list[dict]) -> None:
        """Push to the replay actor, with at most ``MAX_PUSHES_IN_FLIGHT`` calls outstanding."""
        self.pushes.append(self.replay.add_chunks.remote(chunks))
        if len(self.pushes) > MAX_PUSHES_IN_FLIGHT:
            done = self.pushes[: len(self.pushes) - MAX_PUSHES_IN_FLIGHT]
            self.pushes = self.pushes[len(done):]
            _wait_quietly(done)

    def flush(self) -> None:
        """Wait for every push to land."""
        _wait_quietly(self.pushes)
        self.pushes = []


def _restarts() -> int:
    """How many times Ray has restarted this actor (0 outside an actor or on its first start)."""
    import ray

    if not ray.is_initialized():
        return 0
    context = ray.get_runtime_context()
    if context.get_actor_id() is None or not context.was_current_actor_reconstructed:
        return 0
    from ray._private.state import actors  # the GCS's actor table: NumRestarts

    return int(actors(context.get_actor_id()).get("NumRestarts", 1) or 1)


def _wait_quietly(refs: list[Any]) -> None:
    """Wait for pushes; a push lost with a dying replay actor is lost experience, not an error
    (Ray restarts the replay and the driver refills it)."""
    import ray

    try:
        ray.get(refs)
    except ray.exceptions.RayError:
        pass
