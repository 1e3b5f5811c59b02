"""The replay role on Ray: a thin actor around :class:`replay.memory.ReplayMemory`.

``ReplayServer`` is a plain class (importable and testable without Ray); ``ReplayActor`` is the
same class made a Ray actor with ``num_cpus=0`` (it mostly waits; override with
``ReplayActor.options(num_cpus=...)``). Batches go back as plain numpy arrays, which Ray ships
without pickling their contents. Nothing here imports TensorFlow.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import numpy as np
import ray

from core.atomic import write_atomically
from replay.memory import Batch, PackedBatch, ReplayMemory, tune_malloc
from replay.npz_io import TAG_KEY, load_npz


class ReplayServer:
    """Serves one replay memory: explorers add chunks, the learner samples batches."""

    def __init__(self, capacity: int, num_streams: int, **options: Any) -> None:
        """``options``: :class:`ReplayMemory`'s (seed, n_step, priority_alpha, window, frame_shape)."""
        tune_malloc()  # this process returns fresh batch arrays on every call: keep them off the kernel
        # continued_streams: after Ray restarts this actor, explorers go on mid-episode; entries
        # whose stacks would need the lost frames are never sampled (replay.memory)
        self.memory = ReplayMemory(capacity, num_streams, continued_streams=True, **options)
        self.instance = uuid.uuid4().hex  # changes when Ray restarts this actor (empty) after a crash

    def status(self) -> tuple[str, int]:
        """``(instance id, size)``: a new id tells the driver the replay restarted empty."""
        return self.instance, len(self.memory)

    def save(self, path: str, tag: dict | None = None) -> int:
        """Write the whole memory to ``path`` (atomically); return the transitions saved. ``tag``
        (JSON) names the checkpoint the save belongs to: a resume uses the save only with it."""
        def write(tmp: str) -> None:
            extra = {TAG_KEY: np.frombuffer(json.dumps(tag).encode(), np.uint8)} if tag is not None else {}
            with open(tmp, "wb") as f:
                np.savez(f, **self.memory.state_dict(), **extra)

        write_atomically(path, write)
        return len(self.memory)

    def load(self, path: str) -> int:
        """Replace the memory with one saved by :meth:`save`; return its size. The frames are read
        in place, so loading needs no second copy of them (launch.py's memory check counts one)."""
        load_npz(self.memory, path)
        return len(self.memory)

    def add_chunks(self, chunks: list[dict[str, Any]]) -> int:
        """Add an explorer's chunks (one per stream); return the new size."""
        self.memory.add_chunks(chunks)
        return len(self.memory)

    def sample(self, batch_size: int, num_batches: int = 1, beta: float = 0.4) -> list[Batch]:
        """``num_batches`` independent batches: several per call saves Ray round trips.

        ``beta``: the importance-sampling exponent (prioritized replay; ignored for uniform).
        """
        return [self.memory.sample(batch_size, beta) for _ in range(num_batches)]

    def sample_packed(self, batch_size: int, num_batches: int = 1, beta: float = 0.4) -> list[PackedBatch]:
        """Batches with shared frames (what the learner asks for: fewer bytes per call)."""
        return [self.memory.sample_packed(batch_size, beta) for _ in range(num_batches)]

    def sample_for_learner(self, batch_size: int, num_batches: int, beta: float,
                           instance: str | None = None) -> tuple[str, list[PackedBatch] | None]:
        """The learner's call: ``(this replay's instance id, packed batches)``. When ``instance`` is
        given and is not this replay's (Ray restarted it since the learner's last batches), nothing
        is drawn: ``(id, [])`` tells the learner to drop what it holds of the old one. ``(id, None)``:
        nothing to draw yet (the explorers' first pushes are still on their way); the learner waits."""
        if instance is not None and instance != self.instance:
            return self.instance, []
        try:
            return self.instance, self.sample_packed(batch_size, num_batches, beta)
        except ValueError:
            if self.memory.can_sample():
                raise  # a real error, not an empty memory: the learner stops the run with it
            return self.instance, None

    def update_priorities(self, indices: Any, keys: Any, priorities: Any, instance: str | None = None) -> None:
        """The learner's new |td| for transitions it sampled (``keys`` drop overwritten ones). With
        ``instance`` (the replay they were sampled from) not this one, they are stale: dropped."""
        if instance is not None and instance != self.instance:
            return
        self.memory.update_priorities(indices, keys, priorities)

    def priorities(self, indices: Any) -> np.ndarray:
        """Stored priorities ``(p + eps) ** alpha`` at global positions (diagnostics, tests)."""
        return self.memory.priorities(np.asarray(indices))

    def gather(self, indices: Any) -> Batch:
        """The transitions at given global positions (weight 1)."""
        return self.memory.gather(indices)

    def size(self) -> int:
        return len(self.memory)

    def counters(self) -> dict[str, int]:
        return self.memory.counters()

    def ready(self, min_size: int) -> bool:
        """True once ``min_size`` entries are stored and a transition can be sampled."""
        return len(self.memory) >= min_size and self.memory.can_sample()


def resolve_actor(replay: Any) -> Any:
    """A replay handle from a handle or from the name the driver gave the replay actor."""
    return ray.get_actor(replay) if isinstance(replay, str) else replay


ReplayActor = ray.remote(num_cpus=0)(ReplayServer)
