"""Replay memory: each 84x84 frame stored once per emulator stream, 4-frame stacks built at sample time.

Why this layout: a stacked state repeats every frame four times (twice more for ``state1``);
storing frames once brings a transition to about 7 KB, so 1M transitions fit in about 7.1 GB.

The layout is keras-rl's ``SequentialMemory`` (``rl/memory.py``, filled by ``rl/core.py`` ``fit``),
per emulator stream. Entry ``i`` is ``(observation_i, action_i, reward_i, terminal_i)``: the frame
at which ``action_i`` was chosen, its reward, and whether that step ended the episode. After a
terminal step the stream appends one more entry with the terminal observation, any action,
reward 0 and terminal False (keras-rl's extra ``forward``/``backward`` call); the next episode's
first observation follows. The transition at entry ``j`` is::

    state0 = frames j-3 .. j      (frames before the episode start zero-filled)
    action, reward, terminal1 = entry j
    state1 = state0[1:] + frame j+1

exactly as ``SequentialMemory.sample(batch_idxs=[j])`` returns it (``tests/test_replay.py``
checks this). Entry ``j`` is a valid transition when entry ``j+1`` exists in the same segment and
entry ``j`` is not a terminal-observation entry (keras-rl's ``terminals[idx - 2]`` rejection).

Differences from keras-rl, all where keras-rl has no defined behaviour:

* the first entries of a stream (keras-rl never samples ``j < window``) are sampleable, with
  the same zero-filling keras-rl's ``get_recent_state`` uses at an episode start;
* ``new_segment`` (an actor restarted, an episode cut by a step limit) cuts the stream: the
  entry before the cut is never a transition (its next observation is unknown) and no stack
  reaches back across the cut;
* eviction: each stream is a ring of ``capacity // num_streams`` entries, oldest overwritten
  first. An entry whose stack would need an evicted frame (the first ``window - 1`` entries
  of the ring, unless an episode starts among them) is *not sampleable*, rather than zero-filled:
  zero-filling would invent a state that never occurred mid-episode.

Later extensions fit the layout: prioritized replay samples indices itself and calls
:meth:`ReplayMemory.gather` (positions are stable until evicted; :meth:`ReplayMemory.valid`
says which still are); n-step returns add per-entry arrays (an actor-computed return and a
bootstrap offset) beside ``rewards``.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any, NamedTuple

import numpy as np

# Per-entry flag bits, computed once at add time so sampling never needs evicted neighbours.
START = 1  # no stack reaches back past this entry (episode or segment start)
SEGMENT = 2  # this entry does not continue the previous one: that one has no known successor
AFTER_TERMINAL = 4  # the previous entry ended an episode: this one holds the terminal observation only

_MAX_REJECTION_ROUNDS = 32


def tune_malloc() -> bool:
    """Keep freed batch buffers in this process's heap instead of handing them back to the kernel.

    Why: a batch of 32 is two ~0.9 MB arrays; with glibc's default trim threshold each call's
    arrays are returned to the kernel and page-faulted in again on the next call, which takes
    sampling from ~0.15 ms to ~1 ms. Process-wide, so only the replay's own process (the Ray
    actor, the benchmark) calls it. Returns False where it does not apply (not glibc).
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        m_trim_threshold, m_mmap_threshold = -1, -3
        return bool(libc.mallopt(m_trim_threshold, 512 << 20)) and bool(libc.mallopt(m_mmap_threshold, 32 << 20))
    except (OSError, AttributeError):
        return False


class Batch(NamedTuple):
    """A batch of transitions as plain numpy arrays (cheap to ship through Ray's object store)."""

    state0: np.ndarray  # uint8 [B, window, H, W]
    action: np.ndarray  # int32 [B]
    reward: np.ndarray  # float32 [B]
    terminal: np.ndarray  # bool [B]: terminal1, the step ended the episode (no bootstrap)
    state1: np.ndarray  # uint8 [B, window, H, W]
    indices: np.ndarray  # int64 [B]: global positions (stream * capacity_per_stream + slot)


class PackedBatch(NamedTuple):
    """A batch whose states share frames: ``state0 = frames[:, :-1]``, ``state1 = frames[:, 1:]``."""

    frames: np.ndarray  # uint8 [B, window + 1, H, W]
    action: np.ndarray  # int32 [B]
    reward: np.ndarray  # float32 [B]
    terminal: np.ndarray  # bool [B]
    indices: np.ndarray  # int64 [B]

    @property
    def state0(self) -> np.ndarray:
        return self.frames[:, :-1]

    @property
    def state1(self) -> np.ndarray:
        return self.frames[:, 1:]


class ReplayMemory:
    """Uniform replay over ``num_streams`` rings with keras-rl ``SequentialMemory`` semantics.

    Memory per transition: one uint8 frame (84*84 = 7,056 bytes) + action int16 (2) + reward
    float32 (4) + terminal bool (1) + flags uint8 (1) = 7,064 bytes; 1M transitions: 7.06 GB.
    Arrays are preallocated with ``np.zeros``, so pages are only committed as they are filled.
    """

    def __init__(
        self,
        capacity: int,
        num_streams: int,
        window: int = 4,
        frame_shape: tuple[int, int] = (84, 84),
        seed: int | None = None,
    ) -> None:
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        per_stream = capacity // num_streams
        if per_stream < window + 2:
            raise ValueError(
                f"capacity {capacity} gives {per_stream} entries per stream for {num_streams} streams; "
                f"need at least window + 2 = {window + 2}"
            )
        self.window = window
        self.num_streams = num_streams
        self.frame_shape = tuple(frame_shape)
        self.capacity_per_stream = per_stream
        self.capacity = per_stream * num_streams  # effective: a multiple of num_streams
        n = self.capacity
        # One extra all-zero frame at the end: masked stack positions point at it, so stacking
        # is a single gather with no masking pass.
        self._zero = n
        self._frames = np.zeros((n + 1, *self.frame_shape), np.uint8)
        self._actions = np.zeros(n, np.int16)
        self._rewards = np.zeros(n, np.float32)
        self._terminals = np.zeros(n, bool)
        self._flags = np.zeros(n, np.uint8)
        # Per-stream bookkeeping: entries ever added, the last two terminals, whether the last
        # entry started a segment, and a pending cut from an empty new_segment chunk.
        self._count = np.zeros(num_streams, np.int64)
        self._last_terms = np.zeros((num_streams, 2), bool)
        self._last_seg = np.zeros(num_streams, bool)
        self._pending_seg = np.ones(num_streams, bool)  # a stream's first entry starts a segment
        self._rng = np.random.default_rng(seed)
        self._added = 0
        self._sampled = 0
        self._evicted = 0
        self._refresh_sizes()
        # Window offsets relative to the transition entry: -(window-1) .. +1 (the next frame).
        self._win = np.arange(-(window - 1), 2, dtype=np.int64)

    # --- footprint ------------------------------------------------------------------------
    @staticmethod
    def bytes_per_transition(frame_shape: tuple[int, int] = (84, 84)) -> int:
        """Bytes one stored entry costs: frame + action int16 + reward f32 + terminal + flags."""
        return int(np.prod(frame_shape)) + 2 + 4 + 1 + 1

    @classmethod
    def estimate_nbytes(cls, capacity: int, num_streams: int = 1, frame_shape: tuple[int, int] = (84, 84)) -> int:
        """Footprint of a memory of this size, computed without allocating it."""
        n = (capacity // num_streams) * num_streams
        per_stream_state = 8 + 2 + 1 + 1
        return n * cls.bytes_per_transition(frame_shape) + int(np.prod(frame_shape)) + num_streams * per_stream_state

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated arrays (reserved; pages commit as they fill)."""
        arrays = (self._frames, self._actions, self._rewards, self._terminals, self._flags,
                  self._count, self._last_terms, self._last_seg, self._pending_seg)
        return int(sum(a.nbytes for a in arrays))

    # --- adding ---------------------------------------------------------------------------
    def add(
        self,
        stream: int,
        frames: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        terminals: np.ndarray,
        new_segment: bool = False,
    ) -> None:
        """Append ``T`` consecutive entries of one stream (keras-rl layout, see the module doc).

        ``new_segment=True``: the first entry does not continue this stream's previous entries.
        """
        if not 0 <= stream < self.num_streams:
            raise ValueError(f"stream {stream} outside 0..{self.num_streams - 1}")
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.shape[1:] != self.frame_shape:
            raise ValueError(f"frames must be uint8 [T, {self.frame_shape}], got {frames.dtype} {frames.shape}")
        t_len = len(frames)
        actions = np.asarray(actions)
        rewards = np.asarray(rewards, np.float32)
        terminals = np.asarray(terminals, bool)
        if not len(actions) == len(rewards) == len(terminals) == t_len:
            raise ValueError("frames, actions, rewards and terminals must have the same length")
        if new_segment:
            self._pending_seg[stream] = True
        if t_len == 0:
            return

        # Flags, vectorised, with the stream's previous two entries as context.
        seg = np.zeros(t_len, bool)
        seg[0] = self._pending_seg[stream]
        terms = np.concatenate([self._last_terms[stream], terminals])  # terms[i + 2] is entry i
        seg_prev = np.concatenate([[self._last_seg[stream]], seg[:-1]])  # SEGMENT of entry i - 1
        after_terminal = terms[1:-1] & ~seg
        start = seg | (terms[:-2] & ~seg & ~seg_prev)
        flags = (start * START | seg * SEGMENT | after_terminal * AFTER_TERMINAL).astype(np.uint8)

        self._last_terms[stream] = terms[-2:]
        self._last_seg[stream] = seg[-1]
        self._pending_seg[stream] = False

        cap = self.capacity_per_stream
        count = int(self._count[stream])
        keep = min(t_len, cap)  # a chunk longer than the ring keeps only its newest entries
        skip = t_len - keep
        base = stream * cap
        first = (count + skip) % cap
        n1 = min(keep, cap - first)
        for dst, src in ((slice(base + first, base + first + n1), slice(skip, skip + n1)),
                         (slice(base, base + keep - n1), slice(skip + n1, t_len))):
            self._frames[dst] = frames[src]
            self._actions[dst] = actions[src]
            self._rewards[dst] = rewards[src]
            self._terminals[dst] = terminals[src]
            self._flags[dst] = flags[src]

        new_count = count + t_len
        self._evicted += max(0, new_count - cap) - max(0, count - cap)
        self._count[stream] = new_count
        self._added += t_len
        self._refresh_sizes()

    def add_chunk(self, chunk: dict[str, Any]) -> None:
        """Add ``{"stream", "frames", "actions", "rewards", "terminals", "new_segment"}``."""
        self.add(
            int(chunk["stream"]),
            chunk["frames"],
            chunk["actions"],
            chunk["rewards"],
            chunk["terminals"],
            bool(chunk.get("new_segment", False)),
        )

    def add_chunks(self, chunks: list[dict[str, Any]]) -> None:
        """Add several chunks in order (the unit one actor pushes per Ray call)."""
        for chunk in chunks:
            self.add_chunk(chunk)

    def _refresh_sizes(self) -> None:
        self._sizes = np.minimum(self._count, self.capacity_per_stream)
        self._lo = self._count - self._sizes  # absolute index of each stream's oldest live entry
        self._ends = np.cumsum(self._sizes)
        self._total = int(self._ends[-1])

    # --- persistence ----------------------------------------------------------------------
    _STATE = ("_frames", "_actions", "_rewards", "_terminals", "_flags", "_count", "_last_terms", "_last_seg",
              "_pending_seg")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every array and counter, for saving with the run's checkpoint."""
        state = {name.lstrip("_"): getattr(self, name) for name in self._STATE}
        state["shape"] = np.array([self.capacity, self.num_streams, self.window, *self.frame_shape])
        state["totals"] = np.array([self._added, self._sampled, self._evicted])
        return state

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`; the memory must have the same shape."""
        shape = [self.capacity, self.num_streams, self.window, *self.frame_shape]
        if list(state["shape"]) != shape:
            raise ValueError(f"saved replay has shape {list(state['shape'])}, this one {shape}")
        for name in self._STATE:
            getattr(self, name)[...] = state[name.lstrip("_")]
        self._added, self._sampled, self._evicted = (int(x) for x in state["totals"])
        self._refresh_sizes()

    # --- reading --------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._total

    def counters(self) -> dict[str, int]:
        """Entries added / sampled / evicted so far, current size and effective capacity."""
        return {
            "added": self._added,
            "sampled": self._sampled,
            "evicted": self._evicted,
            "size": self._total,
            "capacity": self.capacity,
        }

    def _resolve(self, stream: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """For transitions at ``(stream, offset from oldest live entry)``: validity, the flat
        positions of the ``window + 1`` frames (state0 = cols :w, state1 = cols 1:), the entries."""
        w = self.window
        cap = self.capacity_per_stream
        off = offset[:, None] + self._win  # [B, w+1] offsets of the window and the next entry
        pos = stream[:, None] * cap + (self._lo[stream][:, None] + off) % cap
        f = self._flags[pos]
        valid = (off[:, w] < self._sizes[stream]) & (f[:, w] & SEGMENT == 0) & (f[:, w - 1] & AFTER_TERMINAL == 0)
        if w > 1:
            # frame at col c < w-1 is history iff no START among cols c+1 .. w-1
            start = (f[:, w - 1:0:-1] & START) != 0
            incl = ~np.logical_or.accumulate(start, axis=1)[:, ::-1]
            valid &= ~(incl & (off[:, : w - 1] < 0)).any(axis=1)  # history already evicted
            pos[:, : w - 1][~incl] = self._zero
        return valid, pos, pos[:, w - 1]

    def empty_batch(self, batch_size: int) -> Batch:
        """Preallocated arrays for ``sample(..., out=)``: sampling without allocating."""
        frames = (batch_size, self.window, *self.frame_shape)
        return Batch(
            state0=np.empty(frames, np.uint8),
            action=np.empty(batch_size, np.int32),
            reward=np.empty(batch_size, np.float32),
            terminal=np.empty(batch_size, bool),
            state1=np.empty(frames, np.uint8),
            indices=np.empty(batch_size, np.int64),
        )

    def _batch(self, pos: np.ndarray, entry: np.ndarray, out: Batch | None) -> Batch:
        w = self.window
        if out is None:
            out = self.empty_batch(len(entry))
        elif len(out.indices) != len(entry):
            raise ValueError(f"out holds {len(out.indices)} transitions, not {len(entry)}")
        # indices are in range by construction; mode="clip" skips take's buffered bounds check
        self._frames.take(pos[:, :w], axis=0, out=out.state0, mode="clip")
        self._frames.take(pos[:, 1:], axis=0, out=out.state1, mode="clip")
        out.action[:] = self._actions[entry]
        self._rewards.take(entry, out=out.reward, mode="clip")
        self._terminals.take(entry, out=out.terminal, mode="clip")
        out.indices[:] = entry
        return out

    def _locate(self, indices: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Global positions -> (stream, offset from oldest live entry, live mask)."""
        indices = np.asarray(indices, np.int64)
        if indices.size and (indices.min() < 0 or indices.max() >= self.capacity):
            raise ValueError(f"indices must lie in 0..{self.capacity - 1}")
        cap = self.capacity_per_stream
        stream, slot = np.divmod(indices, cap)
        offset = (slot - self._lo[stream]) % cap
        return stream, offset, offset < self._sizes[stream]

    def valid(self, indices: np.ndarray) -> np.ndarray:
        """Which global positions hold a sampleable transition now (for prioritized replay)."""
        stream, offset, live = self._locate(indices)
        return live & self._resolve(stream, offset)[0]

    def gather(self, indices: np.ndarray, out: Batch | None = None) -> Batch:
        """The transitions at these global positions; ValueError if any is not valid.

        ``out``: arrays from :meth:`empty_batch` to fill instead of allocating.
        """
        stream, offset, live = self._locate(indices)
        valid, pos, entry = self._resolve(stream, offset)
        if not (valid & live).all():
            bad = np.asarray(indices)[~(valid & live)]
            raise ValueError(f"not valid transitions: {bad[:10].tolist()}")
        self._sampled += len(entry)
        return self._batch(pos, entry, out)

    def _draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        u = self._rng.integers(0, self._total, n)
        if self.num_streams == 1:
            return np.zeros(n, np.int64), u
        stream = np.searchsorted(self._ends, u, side="right")
        return stream, u - (self._ends[stream] - self._sizes[stream])

    def sample(self, batch_size: int, out: Batch | None = None) -> Batch:
        """``batch_size`` transitions drawn uniformly (with replacement) over all valid ones.

        Draws uniformly over stored entries and redraws the invalid ones in vectorised rounds,
        which is exactly uniform over valid transitions. ``out``: arrays from
        :meth:`empty_batch` to fill (the caller must be done with their previous contents).
        """
        pos = self._sample_positions(batch_size)
        return self._batch(pos, pos[:, self.window - 1], out)

    def sample_packed(self, batch_size: int) -> PackedBatch:
        """Like :meth:`sample`, with state0 and state1 sharing their frames: ``window + 1``
        frames per transition instead of ``2 * window``, 37% fewer bytes to ship to a learner."""
        pos = self._sample_positions(batch_size)
        entry = pos[:, self.window - 1]
        return PackedBatch(
            frames=self._frames.take(pos, axis=0, mode="clip"),
            action=self._actions[entry].astype(np.int32),
            reward=self._rewards.take(entry, mode="clip"),
            terminal=self._terminals.take(entry, mode="clip"),
            indices=entry,
        )

    def _sample_positions(self, batch_size: int) -> np.ndarray:
        """Frame positions ``[B, window + 1]`` of ``batch_size`` uniformly drawn valid transitions."""
        if self._total == 0:
            raise ValueError("the replay memory is empty")
        stream, offset = self._draw(batch_size)
        valid, pos, entry = self._resolve(stream, offset)
        rounds = 0
        while not valid.all():
            bad = np.flatnonzero(~valid)
            rounds += 1
            if rounds > _MAX_REJECTION_ROUNDS:  # almost nothing valid: pick from the full list
                s_all, o_all = self._valid_entries()
                pick = self._rng.integers(0, len(s_all), len(bad))
                v2, p2, _ = self._resolve(s_all[pick], o_all[pick])
            else:
                v2, p2, _ = self._resolve(*self._draw(len(bad)))
            valid[bad] = v2
            pos[bad] = p2
        self._sampled += batch_size
        return pos

    def _valid_entries(self) -> tuple[np.ndarray, np.ndarray]:
        stream = np.repeat(np.arange(self.num_streams), self._sizes)
        offset = np.arange(self._total) - np.repeat(self._ends - self._sizes, self._sizes)
        valid = self._resolve(stream, offset)[0]
        if not valid.any():
            raise ValueError("no valid transition stored yet (each needs its next observation)")
        return stream[valid], offset[valid]

    def can_sample(self) -> bool:
        """Whether :meth:`sample` would succeed (a random probe, then a full scan if needed)."""
        if self._total == 0:
            return False
        if self._resolve(*self._draw(64))[0].any():
            return True
        return self.num_valid() > 0

    def num_valid(self) -> int:
        """Number of sampleable transitions (a full scan: for tests and diagnostics)."""
        try:
            return len(self._valid_entries()[0])
        except ValueError:
            return 0
