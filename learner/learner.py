"""The learner: DQN updates as one ``tf.function`` on the project's Q-network.

It pulls batches from the replay actor (the next requests are always in flight while the
current batch trains), copies the online network to the target every ``target_update`` of its
own steps, and hands out its weights as ``(version, arrays)``. It writes no files: the driver
owns the run directory (so the learner can sit on any node, a GPU node included).
"""

from __future__ import annotations

import collections
import time
import uuid
from typing import Any

import numpy as np

import kerasrl_compat
from config import Config
from core.frames import FRAME_SHAPE, WINDOW
from replay.server import resolve_actor

PREFETCH = 2  # replay sample calls kept in flight
BATCHES_PER_REQUEST = 4  # one Ray round trip per 4 batches: a call costs more than its bytes
NOTHING_TO_SAMPLE_SECONDS = 60.0  # a replay with nothing to draw for this long is an error, not a lag


class ReplaySampleError(RuntimeError):
    """The replay raised while sampling (not a lost replay): the run cannot learn, so it stops."""


class _ReplayRestarted(Exception):
    """A reply came from a new replay instance: what the learner holds of the old one is void."""


def _replay_lost_errors() -> tuple[type[BaseException], ...]:
    """Ray errors that mean the replay actor (or its reply) is gone, as opposed to an exception
    raised inside it (``RayTaskError``), which is a real error."""
    import ray

    e = ray.exceptions
    return e.RayActorError, e.ObjectLostError, e.WorkerCrashedError, e.NodeDiedError


class Learner:
    """Owns the online and target networks and the optimizer; both networks start from
    ``initial_weights`` when given, else from the seeded initialisation."""

    def __init__(self, cfg: Config, n_actions: int, replay: Any = None,
                 initial_weights: list[np.ndarray] | None = None) -> None:
        tf = kerasrl_compat.load_tensorflow()

        # --learner-threads reaches TensorFlow as TF_NUM_INTRAOP_THREADS in this actor's
        # environment (distributed.topology): TensorFlow is initialised before this constructor runs.
        from core.network import build_q_network, resolve_precision

        tf.random.set_seed(cfg.seed)
        self.cfg = cfg
        # resolved here, on the learner's own node: "auto" means bf16 where its hardware has it
        self.precision = resolve_precision(cfg.learner_precision)
        self.replay = resolve_actor(replay)
        self.online = build_q_network(n_actions, dueling=cfg.dueling, precision=self.precision)
        self.target = build_q_network(n_actions, dueling=cfg.dueling, precision=self.precision)
        if initial_weights is not None:  # --init-weights; a restarted learner gets them again, as arguments
            self.online.set_weights(initial_weights)
        self.target.set_weights(self.online.get_weights())
        # The legacy Adam applies each variable's update as one fused ResourceApplyAdam op: +16%
        # updates/s at batch 32 over the new tf_keras Adam's element-wise ops (docs/benchmarks.md).
        self.optimizer = tf.keras.optimizers.legacy.Adam(learning_rate=cfg.learning_rate, epsilon=cfg.adam_epsilon)
        self.optimizer._create_all_weights(self.online.trainable_variables)  # slots now: state is saveable at once
        self.steps = 0
        self.target_syncs = 0
        self.weights_version = 0
        self.instance = uuid.uuid4().hex  # changes when Ray restarts this actor (from scratch) after a crash
        self._requests: collections.deque = collections.deque()  # sample calls in flight
        self._ready: collections.deque = collections.deque()  # batches received, not yet used
        self._priorities: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # not yet sent to the replay
        # the replay instance the batches and priorities above belong to (None: not known yet); a
        # replay that Ray restarted has a new one, and the old one's keys mean nothing to it
        self.replay_instance: str | None = None
        self.wall_seconds = 0.0  # the run's wall clock at the driver's last call (--max-minutes ends the rate's anneal)
        self.beta_from = (0.0, cfg.priority_beta)  # (progress in steps, beta) the annealing starts from
        self.rate_from = (0.0, cfg.learning_rate)  # (run progress, rate) the same for --learning-rate-end
        self._train_step = self._make_train_step(tf)

    def _make_train_step(self, tf: Any) -> Any:
        cfg = self.cfg
        online, target, optimizer = self.online, self.target, self.optimizer
        huber = tf.keras.losses.Huber(delta=cfg.huber_delta, reduction="none")
        # window + n frames per transition: state0 = the first window, state1 = the window that
        # starts at the transition's horizon m (replay.memory.PackedBatch)
        frames = tf.TensorSpec([None, None, *FRAME_SHAPE], tf.uint8)
        vector = tf.TensorSpec([None], tf.float32)
        window = tf.range(WINDOW, dtype=tf.int32)

        def scaled(x: Any) -> Any:
            return tf.cast(x, tf.float32) / 255.0

        @tf.function(
            input_signature=[frames, tf.TensorSpec([None], tf.int32), vector, vector,
                             tf.TensorSpec([None], tf.int32), vector]
        )
        def train_step(frames, action, reward, terminal, horizon, weight):
            s0 = scaled(frames[:, :WINDOW])
            s1 = scaled(tf.gather(frames, horizon[:, None] + window, batch_dims=1))
            q_next_target = target(s1, training=False)
            if cfg.double_dqn:
                best = tf.argmax(online(s1, training=False), axis=1, output_type=tf.int32)
            else:
                best = tf.argmax(q_next_target, axis=1, output_type=tf.int32)
            q_next = tf.gather(q_next_target, best, batch_dims=1)
            discount = tf.pow(tf.constant(cfg.gamma, tf.float32), tf.cast(horizon, tf.float32))
            y = tf.stop_gradient(reward + discount * (1.0 - terminal) * q_next)  # n-step target
            with tf.GradientTape() as tape:
                q_taken = tf.gather(online(s0, training=True), action, batch_dims=1)
                td = y - q_taken
                # importance-sampling weights undo prioritized sampling's bias (1 for uniform)
                loss = tf.reduce_mean(weight * huber(y[:, None], q_taken[:, None]))
            grads = tape.gradient(loss, online.trainable_variables)
            if cfg.grad_clip_norm > 0:
                grads, _ = tf.clip_by_global_norm(grads, cfg.grad_clip_norm)
            optimizer.apply_gradients(zip(grads, online.trainable_variables, strict=True))
            return loss, tf.reduce_mean(q_taken), td

        return train_step

    # --- batches -------------------------------------------------------------------------
    @property
    def rate_progress(self) -> float:
        """How far the rate's anneal is, 0 to 1 (:meth:`config.Config.rate_progress`)."""
        return self.cfg.rate_progress(self.steps, self.wall_seconds)

    @staticmethod
    def _annealed(start: tuple[float, float], end: float, progress: float) -> float:
        """Linear from ``start`` (progress, value) to ``end`` at progress 1, so a resumed run with a
        larger --total-env-steps or --max-minutes goes on from the value it reached."""
        p0, v0 = start
        frac = min(1.0, max(0.0, progress - p0) / max(1e-9, 1.0 - p0))
        return v0 + frac * (end - v0)

    @property
    def beta(self) -> float:
        """The importance-sampling exponent now: annealed to 1 over the steps alone (Config.beta)."""
        return self._annealed(self.beta_from, 1.0, self.cfg.beta_progress(self.steps))

    @property
    def learning_rate(self) -> float:
        """Adam's rate now: --learning-rate, annealed to --learning-rate-end when that is set."""
        end = self.cfg.learning_rate_end
        return self.cfg.learning_rate if end is None else self._annealed(self.rate_from, end, self.rate_progress)

    def _request(self) -> None:
        self._requests.append(self.replay.sample_for_learner.remote(
            self.cfg.batch_size, BATCHES_PER_REQUEST, self.beta, self.replay_instance))

    def _send_priorities(self) -> None:
        """New priorities |td| of the sampled transitions, to the replay in one call (tagged with
        the replay instance they were sampled from: a restarted replay ignores them)."""
        if self._priorities:
            idx, keys, td = (np.concatenate(parts) for parts in zip(*self._priorities, strict=True))
            self.replay.update_priorities.remote(idx, keys, np.abs(td), self.replay_instance)
            self._priorities = []

    def _forget_replay(self, instance: str | None = None) -> None:
        """Drop every batch, request and priority of the replay instance known so far."""
        self._requests.clear()
        self._ready.clear()
        self._priorities = []
        self.replay_instance = instance

    def _next_batch(self) -> Any:
        import ray

        since = None
        while not self._ready:
            while len(self._requests) < PREFETCH + 1:
                self._request()
            instance, batches = ray.get(self._requests.popleft())
            if self.replay_instance not in (None, instance):
                raise _ReplayRestarted(instance)
            self.replay_instance = instance
            if batches is None:  # nothing to draw yet: the explorers' pushes land after their runs end
                since = since or time.monotonic()
                if time.monotonic() - since > NOTHING_TO_SAMPLE_SECONDS:
                    raise ReplaySampleError(f"the replay had no transition to sample for "
                                            f"{NOTHING_TO_SAMPLE_SECONDS:.0f} s")
                time.sleep(0.05)
                continue
            self._ready.extend(batches)
            self._request()
        return self._ready.popleft()

    # --- the public surface ----------------------------------------------------------------
    def update(self, batch: Any) -> tuple[float, float, np.ndarray]:
        """One DQN update on ``batch``; sync the target every ``target_update`` steps."""
        horizon = np.asarray(batch.horizon, np.int32)
        if self.cfg.learning_rate_end is not None:  # a variable the compiled step reads: no retracing
            self.optimizer.learning_rate = self.learning_rate
        frames = getattr(batch, "frames", None)
        if frames is None:  # a replay.Batch: lay state0 and state1 out as a packed row
            frames = np.zeros((len(horizon), WINDOW + int(horizon.max()), *FRAME_SHAPE), np.uint8)
            frames[:, :WINDOW] = batch.state0
            frames[np.arange(len(horizon))[:, None], horizon[:, None] + np.arange(WINDOW)] = batch.state1
        loss, mean_q, td = self._train_step(
            frames,
            np.asarray(batch.action, np.int32),
            np.asarray(batch.reward, np.float32),
            np.asarray(batch.terminal, np.float32),
            horizon,
            np.asarray(batch.weight, np.float32),
        )
        self.steps += 1
        if self.steps % self.cfg.target_update == 0:
            self.sync_target()
        return float(loss), float(mean_q), td.numpy()

    def sync_target(self) -> None:
        """Copy the online network to the target; with --adam-reset also zero Adam's moments and its
        step count (Asadi et al. 2023: moments estimated for the old target's loss mislead the new
        one; the step count restarts Adam's bias correction, as in the paper)."""
        self.target.set_weights(self.online.get_weights())
        self.target_syncs += 1
        if self.cfg.adam_reset:
            self.optimizer.set_weights([np.zeros_like(w) for w in self.optimizer.get_weights()])

    def train(self, n_updates: int, replay_instance: str | None = None, wall_seconds: float | None = None) -> dict:
        """Run up to ``n_updates`` updates on batches from the replay actor; return metrics.
        ``wall_seconds``: the run's wall clock now, for --max-minutes' anneals (the driver keeps the clock).

        If the replay actor dies meanwhile the call ends early with ``replay_lost`` set (Ray
        restarts the replay empty; the driver refills it before asking for more updates), and
        what the learner held of the lost replay (batches, priorities) is dropped. The driver
        passes the ``replay_instance`` it knows, so batches fetched from a replay that has
        restarted since are never trained on. An exception raised inside the replay's sampling
        is not a lost replay: the priorities computed so far are sent, and
        :class:`ReplaySampleError` says what failed.
        """
        import ray

        if replay_instance is not None and self.replay_instance not in (None, replay_instance):
            self._forget_replay(replay_instance)
        if wall_seconds is not None:
            self.wall_seconds = float(wall_seconds)
        t0 = time.perf_counter()
        waited = 0.0
        losses, qs = [], []
        replay_lost = False
        for _ in range(n_updates):
            w0 = time.perf_counter()
            try:
                batch = self._next_batch()
            except (_ReplayRestarted, *_replay_lost_errors()) as exc:
                self._forget_replay(exc.args[0] if isinstance(exc, _ReplayRestarted) else None)
                replay_lost = True
                break
            except (ray.exceptions.RayTaskError, ReplaySampleError) as exc:
                self._requests.clear()
                self._ready.clear()
                self._send_priorities()
                if isinstance(exc, ReplaySampleError):
                    raise
                cause = exc.cause if exc.cause is not None else exc
                first = (str(cause).strip().splitlines() or [""])[0]
                raise ReplaySampleError(f"the replay failed to sample a batch ({type(cause).__name__}: "
                                        f"{first})") from None
            waited += time.perf_counter() - w0
            loss, mean_q, td = self.update(batch)
            losses.append(loss)
            qs.append(mean_q)
            if self.cfg.prioritized:
                self._priorities.append((batch.indices, batch.keys, td))
                if len(self._priorities) >= BATCHES_PER_REQUEST:
                    self._send_priorities()
        self._send_priorities()  # none are left after a lost replay
        self.weights_version += 1
        return {
            "asked": n_updates,
            "updates": len(losses),
            "weights_version": self.weights_version,
            "replay_lost": replay_lost,
            "learner_steps": self.steps,
            "target_syncs": self.target_syncs,
            "loss": float(np.mean(losses)) if losses else float("nan"),
            "mean_q": float(np.mean(qs)) if qs else float("nan"),
            "learning_rate": self.learning_rate,
            "seconds": time.perf_counter() - t0,
            "wait_seconds": waited,
        }

    def arithmetic(self) -> str:
        """What the learner computes in, on which GPU if any, and why, for the driver's start-up line."""
        from core.network import auto_choice

        where = f" on {self.gpu()}" if self.gpu() else ""
        if self.cfg.learner_precision != "auto":
            return self.precision + where
        return f"{self.precision}{where} (auto: {auto_choice()[1]})"

    def gpu(self) -> str:
        """The GPU TensorFlow computes on here ('' on a CPU): launch.py refuses --learner-gpus without one."""
        from core.network import visible_gpu

        gpu = visible_gpu()
        return f"GPU {gpu['name']}" if gpu else ""

    def get_weights(self) -> tuple[int, list[np.ndarray]]:
        """``(version, arrays)``: what explorers load and the driver exports."""
        return self.weights_version, self.online.get_weights()

    def versions_from(self, min_version: int) -> None:
        """Hand out weights versions of at least ``min_version`` from now on (a restarted learner:
        explorers load weights only when the version differs from the one they hold)."""
        self.weights_version = max(self.weights_version, int(min_version))

    def get_state(self) -> dict:
        """Everything needed to continue exactly: both networks, Adam's step and moments, counters."""
        return {
            "online": self.online.get_weights(),
            "target": self.target.get_weights(),
            "optimizer": self.optimizer.get_weights(),
            "steps": self.steps,
            "target_syncs": self.target_syncs,
            "weights_version": self.weights_version,
            "beta": self.beta,
            "learning_rate": self.learning_rate,
        }

    def set_state(self, state: dict, min_version: int = 0, wall_seconds: float = 0.0) -> bool:
        """Restore :meth:`get_state`'s output (a resumed run, a restarted learner). False when Adam's
        state could not be restored (a checkpoint from before the fused Adam) and starts afresh.

        ``min_version``: the weights versions handed out from now on are at least this (the
        driver passes one past the newest it has seen, so no explorer mistakes new weights for
        ones it holds). Beta and an annealed rate go on from the checkpoint's values, also under a new
        --total-env-steps (or, for the rate, --max-minutes); ``wall_seconds`` is the run's clock now.
        """
        self.online.set_weights(state["online"])
        self.target.set_weights(state["target"])
        try:
            self.optimizer.set_weights(state["optimizer"])
            restored = True
        except ValueError:  # a checkpoint from before the fused Adam: its moments are laid out otherwise
            restored = False
        self.steps = int(state["steps"])
        self.target_syncs = int(state["target_syncs"])
        self.weights_version = int(state["weights_version"])
        self.versions_from(min_version)
        self.wall_seconds = float(wall_seconds)
        self.beta_from = (self.cfg.beta_progress(self.steps), float(state.get("beta", self.cfg.beta(self.steps))))
        self.rate_from = (self.rate_progress, float(state.get("learning_rate", self.cfg.learning_rate)))
        return restored
