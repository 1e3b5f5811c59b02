"""Replay memory: each 84x84 frame stored once per emulator stream, 4-frame stacks built at sample time.

Why this layout: a stacked state repeats every frame four times (twice more for ``state1``);
storing frames once brings a transition to 7,064 bytes, so 1M transitions fit in 7.06 GB
(7.08 GB with prioritized replay's sum tree, 16.8 MB at 1M).

The layout is keras-rl's ``SequentialMemory`` (``rl/memory.py``, filled by ``rl/core.py`` ``fit``),
per emulator stream. Entry ``i`` is ``(observation_i, action_i, reward_i, terminal_i)``: the frame
at which ``action_i`` was chosen, its reward, and whether that step ended the episode. After a
terminal step the stream appends one more entry with the terminal observation, any action,
reward 0 and terminal False (keras-rl's extra ``forward``/``backward`` call); the next episode's
first observation follows. The transition at entry ``j`` with horizon ``m = m_j`` is::

    state0 = frames j-3 .. j                (frames before the episode start zero-filled)
    action = entry j
    reward = G_j, terminal = done_j         (n-step return and "no bootstrap", from the actor)
    state1 = frames j+m-3 .. j+m            (the stack at entry j+m, zero-filled the same way)

With the defaults (``n_step=1``: ``G = reward``, ``m = 1``, ``done = terminal``) this is exactly
what ``SequentialMemory.sample(batch_idxs=[j])`` returns (``tests/test_replay.py`` checks this).
Entry ``j`` is a valid transition when entry ``j+m`` exists, no entry among ``j+1 .. j+m``
starts a segment or an episode, and entry ``j`` is not a terminal-observation entry (keras-rl's
``terminals[idx - 2]`` rejection). Actors compute returns, horizons and dones (they have the
rewards in order); the replay only stores them: a horizon ends at the terminal-observation
entry or at a segment's last entry, so the episode-start rule only rejects malformed input.

Differences from keras-rl, all where keras-rl has no defined behaviour:

* the first entries of a stream (keras-rl never samples ``j < window``) are sampleable, with
  the same zero-filling keras-rl's ``get_recent_state`` uses at an episode start;
* ``new_segment`` (an actor restarted, an episode cut by a step limit) cuts the stream: the
  entry before the cut is never a transition (its next observation is unknown) and no stack
  reaches back across the cut;
* ``continued_streams=True`` (the replay actor's): a stream's first entries may continue an episode
  this memory never saw (Ray restarted the replay under a running explorer): their stacks would
  need frames not here, so they are never transitions (``UNKNOWN``) until the stream's first start;
* eviction: each stream is a ring of ``capacity // num_streams`` entries, oldest overwritten
  first. An entry whose stack would need an evicted frame (the first ``window - 1`` entries
  of the ring, unless an episode starts among them) is *not sampleable*, rather than zero-filled:
  zero-filling would invent a state that never occurred mid-episode.

Prioritized replay (``priority_alpha`` set) is proportional (Schaul et al. 2016): a
:class:`replay.sumtree.SumTree` leaf per slot holds ``(|td| + 1e-6) ** alpha``, draws are
stratified and rejected where not valid, and the learner's new priorities come back through
:meth:`ReplayMemory.update_priorities` with the entry's key (its position in its stream), so
a priority for a slot overwritten meanwhile is dropped.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Iterable
from typing import Any, NamedTuple

import numpy as np

from core.frames import FRAME_SHAPE, WINDOW
from replay.sumtree import SumTree

# Per-entry flag bits, computed once at add time so sampling never needs evicted neighbours.
START = 1  # no stack reaches back past this entry (episode or segment start)
SEGMENT = 2  # this entry does not continue the previous one: that one has no known successor
AFTER_TERMINAL = 4  # the previous entry ended an episode: this one holds the terminal observation only
DONE = 8  # the episode ended within this entry's horizon: its target has no bootstrap term
UNKNOWN = 16  # continues an episode whose start this memory never saw: never a transition
NOT_A_TRANSITION = AFTER_TERMINAL | UNKNOWN

MAX_N_STEP = 10
PRIORITY_EPS = 1e-6  # keeps a zero-|td| transition sampleable
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
    reward: np.ndarray  # float32 [B]: the n-step return G (the reward when n_step = 1)
    terminal: np.ndarray  # bool [B]: done, the episode ended within the horizon (no bootstrap)
    state1: np.ndarray  # uint8 [B, window, H, W]: the stack at entry j + horizon
    indices: np.ndarray  # int64 [B]: global positions (stream * capacity_per_stream + slot)
    horizon: np.ndarray  # int32 [B]: m, the steps from state0 to state1 (discount gamma ** m)
    weight: np.ndarray  # float32 [B]: importance-sampling weight (1 for uniform sampling)
    keys: np.ndarray  # int64 [B]: the entry's position in its stream, for update_priorities


class PackedBatch(NamedTuple):
    """A batch whose states share frames: row ``b`` covers entries ``j-window+1 .. j+n_step``.

    ``state0 = frames[:, :window]``, ``state1[b] = frames[b, m_b : m_b + window]``; frames
    after entry ``j + m_b`` are all-zero (they may be another episode's or not exist yet).
    ``window`` is a field because the frame count alone (``window + n_step``) does not say it.
    """

    frames: np.ndarray  # uint8 [B, window + n_step, H, W]
    action: np.ndarray  # int32 [B]
    reward: np.ndarray  # float32 [B]: the n-step return G
    terminal: np.ndarray  # bool [B]: done
    indices: np.ndarray  # int64 [B]
    horizon: np.ndarray  # int32 [B]: m; state1 starts at frame m
    weight: np.ndarray  # float32 [B]
    keys: np.ndarray  # int64 [B]
    window: int = WINDOW  # frames per state

    @property
    def state0(self) -> np.ndarray:
        return self.frames[:, : self.window]

    @property
    def state1(self) -> np.ndarray:
        rows = np.arange(len(self.frames))[:, None]
        return self.frames[rows, np.asarray(self.horizon)[:, None] + np.arange(self.window)]


class ReplayMemory:
    """Replay over ``num_streams`` rings with keras-rl ``SequentialMemory`` semantics.

    Uniform sampling when ``priority_alpha`` is None, else proportional prioritized sampling
    with exponent ``priority_alpha``. ``n_step`` (1..10) is the largest horizon an entry may
    have; it sets how many frames past an entry a packed batch carries.

    Memory per transition: one uint8 frame (84*84 = 7,056 bytes) + action int16 (2) + n-step
    return float32 (4) + horizon uint8 (1) + flags uint8 (1, the done bit included) = 7,064
    bytes; 1M transitions: 7.06 GB. Prioritized adds a float64 sum tree of ``2 * P`` nodes
    (``P`` = capacity rounded up to a power of two): 16.8 MB at 1M. The 1-step rewards and
    terminals are not kept per entry: sampling needs only G and done, and the terminals'
    role (episode boundaries) lives in the flags. Arrays are preallocated with ``np.zeros``,
    so pages are only committed as they are filled.
    """

    def __init__(
        self,
        capacity: int,
        num_streams: int,
        window: int = WINDOW,
        frame_shape: tuple[int, int] = FRAME_SHAPE,
        seed: int | None = None,
        n_step: int = 1,
        priority_alpha: float | None = None,
        continued_streams: bool = False,
    ) -> None:
        if num_streams < 1:
            raise ValueError(f"num_streams must be >= 1, got {num_streams}")
        if window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        if not 1 <= n_step <= MAX_N_STEP:
            raise ValueError(f"n_step must lie in 1..{MAX_N_STEP}, got {n_step}")
        if priority_alpha is not None and not (np.isfinite(priority_alpha) and priority_alpha >= 0):
            raise ValueError(f"priority_alpha must be None or >= 0, got {priority_alpha}")
        per_stream = capacity // num_streams
        if per_stream < window + n_step + 1:
            raise ValueError(
                f"capacity {capacity} gives {per_stream} entries per stream for {num_streams} streams; "
                f"need at least window + n_step + 1 = {window + n_step + 1}"
            )
        self.window = window
        self.n_step = n_step
        self.priority_alpha = priority_alpha
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
        self._returns = np.zeros(n, np.float32)
        self._horizons = np.zeros(n, np.uint8)
        self._flags = np.zeros(n, np.uint8)
        # Per-stream bookkeeping: entries ever added, the last two terminals, whether the last
        # entry started a segment, and a pending cut from an empty new_segment chunk.
        self._count = np.zeros(num_streams, np.int64)
        self._last_terms = np.zeros((num_streams, 2), bool)
        self._last_seg = np.zeros(num_streams, bool)
        # a stream's first entry starts a segment; a continued stream's are UNKNOWN until a start
        self._pending_seg = np.full(num_streams, not continued_streams)
        self._known = np.full(num_streams, not continued_streams)
        # Leaf = global position; slots never written and terminal-observation entries hold 0.
        self._tree = SumTree(n) if priority_alpha is not None else None
        self._max_priority = 0.0  # largest stored leaf value so far (0: none yet)
        self._rng = np.random.default_rng(seed)
        self._added = 0
        self._sampled = 0
        self._evicted = 0
        self._refresh_sizes()
        # Offsets relative to the transition entry: -(window-1) .. +n_step (stack, then horizon).
        self._win = np.arange(-(window - 1), n_step + 1, dtype=np.int64)
        self._ahead = np.arange(1, n_step + 1, dtype=np.int64)
        self._stack = np.arange(window, dtype=np.int64)

    @property
    def prioritized(self) -> bool:
        return self._tree is not None

    # --- footprint ------------------------------------------------------------------------
    @staticmethod
    def bytes_per_transition(frame_shape: tuple[int, int] = FRAME_SHAPE, prioritized: bool = False) -> int:
        """Bytes one stored entry costs: frame + action int16 + return f32 + horizon + flags
        (+ 16 for the sum tree's two float64 nodes per leaf, before power-of-two padding)."""
        return int(np.prod(frame_shape)) + 2 + 4 + 1 + 1 + (16 if prioritized else 0)

    @classmethod
    def estimate_nbytes(
        cls,
        capacity: int,
        num_streams: int = 1,
        frame_shape: tuple[int, int] = FRAME_SHAPE,
        prioritized: bool = False,
    ) -> int:
        """Footprint of a memory of this size, computed without allocating it."""
        n = (capacity // num_streams) * num_streams
        per_stream_state = 8 + 2 + 1 + 1 + 1
        nbytes = n * cls.bytes_per_transition(frame_shape) + int(np.prod(frame_shape)) + num_streams * per_stream_state
        if prioritized:
            nbytes += 2 * (1 << (n - 1).bit_length()) * 8
        return nbytes

    @property
    def nbytes(self) -> int:
        """Bytes held by the preallocated arrays (reserved; pages commit as they fill)."""
        arrays = (self._frames, self._actions, self._returns, self._horizons, self._flags,
                  self._count, self._last_terms, self._last_seg, self._pending_seg, self._known)
        return int(sum(a.nbytes for a in arrays)) + (self._tree.nbytes if self._tree is not None else 0)

    # --- priorities -----------------------------------------------------------------------
    def _priority_values(self, priorities: Any, n: int) -> np.ndarray:
        """Raw |td| priorities -> stored leaf values ``(p + eps) ** alpha`` (validated)."""
        p = np.asarray(priorities, np.float64).ravel()
        if len(p) != n:
            raise ValueError(f"expected {n} priorities, got {len(p)}")
        if p.size and not (np.isfinite(p).all() and p.min() >= 0):
            raise ValueError("priorities must be finite and >= 0")
        return (p + PRIORITY_EPS) ** self.priority_alpha

    def _default_priority(self) -> float:
        return self._max_priority if self._max_priority > 0 else 1.0

    def update_priorities(self, indices: np.ndarray, keys: np.ndarray, priorities: np.ndarray) -> None:
        """New raw priorities (|td|) from the learner for the transitions it sampled.

        ``keys`` are the batch's ``keys``: a position whose slot holds another entry by now
        (evicted and overwritten) is skipped, as are terminal-observation entries. For a
        position given twice the last priority wins. No-op for uniform replay.
        """
        if self._tree is None:
            return
        indices = np.asarray(indices, np.int64).ravel()
        keys = np.asarray(keys, np.int64).ravel()
        if len(keys) != len(indices):
            raise ValueError(f"{len(indices)} indices but {len(keys)} keys")
        values = self._priority_values(priorities, len(indices))
        stream, offset, live = self._locate(indices)
        current = live & (self._lo[stream] + offset == keys) & (self._flags[indices] & NOT_A_TRANSITION == 0)
        if current.any():
            values = values[current]
            self._tree.update(indices[current], values)
            self._max_priority = max(self._max_priority, float(values.max()))

    def priorities(self, indices: np.ndarray) -> np.ndarray:
        """Stored leaf values ``(p + eps) ** alpha`` at global positions (diagnostics, tests)."""
        if self._tree is None:
            raise ValueError("uniform replay stores no priorities")
        return self._tree.get(indices)

    @property
    def priority_total(self) -> float:
        """Sum of all stored leaf values (0 for uniform replay)."""
        return self._tree.total if self._tree is not None else 0.0

    # --- adding ---------------------------------------------------------------------------
    def add(self, stream: int, frames: np.ndarray, actions: np.ndarray, rewards: np.ndarray, terminals: np.ndarray,
            new_segment: bool = False, returns: np.ndarray | None = None, horizons: np.ndarray | None = None,
            dones: np.ndarray | None = None, priorities: np.ndarray | None = None) -> None:
        """Append ``T`` consecutive entries of one stream (keras-rl layout, see the module doc).

        ``new_segment=True``: the first entry does not continue this stream's previous entries.
        Per entry ``j`` (computed by the actor, stored as given): ``returns`` the n-step return
        (default ``rewards``), ``horizons`` ``m_j`` in ``1..n_step`` (default 1), ``dones``
        whether the episode ended within the horizon (default ``terminals``), ``priorities``
        the raw |td| (prioritized replay only; default: the largest priority stored so far).
        """
        self._add_all([(stream, frames, actions, rewards, terminals, new_segment, returns, horizons, dones,
                         priorities)])

    def _add_all(self, calls: Iterable[tuple]) -> None:
        """:meth:`add` for each argument tuple in turn, one sum-tree update for all (as costly for 400 leaves
        as for 50: a numpy pass per level). The tree is the same to the bit (a slot written twice keeps
        the later value; inner nodes are recomputed from their final children); a call that raises
        leaves the ones before it added."""
        leaves: list[tuple[np.ndarray, np.ndarray]] = []
        try:
            for args in calls:
                self._append(*args, leaves)
        finally:
            if leaves:
                self._tree.update(np.concatenate([i for i, _ in leaves]), np.concatenate([v for _, v in leaves]))
            self._refresh_sizes()

    def _append(self, stream: int, frames: Any, actions: Any, rewards: Any, terminals: Any, new_segment: bool,
                returns: Any, horizons: Any, dones: Any, priorities: Any, leaves: list) -> None:
        """:meth:`add` with its new sum-tree leaves appended to ``leaves`` instead of written."""
        if not 0 <= stream < self.num_streams:
            raise ValueError(f"stream {stream} outside 0..{self.num_streams - 1}")
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.shape[1:] != self.frame_shape:
            raise ValueError(f"frames must be uint8 [T, {self.frame_shape}], got {frames.dtype} {frames.shape}")
        t_len = len(frames)
        actions = np.asarray(actions)
        rewards = np.asarray(rewards, np.float32)
        terminals = np.asarray(terminals, bool)
        returns = rewards if returns is None else np.asarray(returns, np.float32)
        horizons = np.ones(t_len, np.uint8) if horizons is None else np.asarray(horizons)
        dones = terminals if dones is None else np.asarray(dones, bool)
        lengths = {len(a) for a in (actions, rewards, terminals, returns, horizons, dones)}
        if lengths != {t_len}:
            raise ValueError("frames, actions, rewards, terminals, returns, horizons and dones need one length each")
        if t_len and (horizons.min() < 1 or horizons.max() > self.n_step):
            raise ValueError(f"horizons must lie in 1..{self.n_step}")
        values = None
        if self._tree is not None and priorities is not None:
            values = self._priority_values(priorities, t_len)
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
        unknown = np.zeros(t_len, bool)
        if not self._known[stream]:
            starts = np.flatnonzero(start)
            unknown[: starts[0] if len(starts) else t_len] = True
            self._known[stream] = len(starts) > 0
        flags = (start * START | seg * SEGMENT | after_terminal * AFTER_TERMINAL | dones * DONE
                 | unknown * UNKNOWN).astype(np.uint8)

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
            self._returns[dst] = returns[src]
            self._horizons[dst] = horizons[src]
            self._flags[dst] = flags[src]

        if self._tree is not None:
            # the new entries' leaves replace the evicted ones': the tree sums live entries only
            if values is None:
                values = np.full(t_len, self._default_priority())
            values[after_terminal | unknown] = 0.0  # never a transition: never drawn
            values = values[skip:]
            leaves.append((base + (count + np.arange(skip, t_len)) % cap, values))
            self._max_priority = max(self._max_priority, float(values.max()))

        new_count = count + t_len
        self._evicted += max(0, new_count - cap) - max(0, count - cap)
        self._count[stream] = new_count
        self._added += t_len

    def add_chunk(self, chunk: dict[str, Any]) -> None:
        """Add ``{"stream", "frames", "actions", "rewards", "terminals", "new_segment"}`` and the
        optional ``"returns", "horizons", "dones", "priorities"`` (see :meth:`add`)."""
        self.add_chunks([chunk])

    def add_chunks(self, chunks: list[dict[str, Any]]) -> None:
        """Add several chunks in order (the unit one actor pushes per Ray call), one tree update for all."""
        self._add_all((int(c["stream"]), c["frames"], c["actions"], c["rewards"], c["terminals"],
                       bool(c.get("new_segment", False)), c.get("returns"), c.get("horizons"), c.get("dones"),
                       c.get("priorities")) for c in chunks)

    def _refresh_sizes(self) -> None:
        self._sizes = np.minimum(self._count, self.capacity_per_stream)
        self._lo = self._count - self._sizes  # absolute index of each stream's oldest live entry
        self._ends = np.cumsum(self._sizes)
        self._total = int(self._ends[-1])

    # --- persistence ----------------------------------------------------------------------
    _STATE = ("_frames", "_actions", "_returns", "_horizons", "_flags", "_count", "_last_terms", "_last_seg",
              "_pending_seg", "_known")

    def state_dict(self) -> dict[str, np.ndarray]:
        """Every array and counter (and the sum tree's leaves), for saving with the run's checkpoint."""
        state = {name.lstrip("_"): getattr(self, name) for name in self._STATE}
        state["shape"] = np.array([self.capacity, self.num_streams, self.window, *self.frame_shape])
        state["totals"] = np.array([self._added, self._sampled, self._evicted])
        state["n_step"] = np.array(self.n_step)
        if self._tree is not None:
            state["priorities"] = self._tree.state()
            state["priority_max"] = np.array(self._max_priority)
        return state

    def check_state(self, state: dict[str, np.ndarray]) -> None:
        """ValueError unless :meth:`load_state_dict` can restore ``state`` into this memory."""
        shape = [self.capacity, self.num_streams, self.window, *self.frame_shape]
        if list(state["shape"]) != shape:
            raise ValueError(f"saved replay has shape {list(state['shape'])}, this one {shape}")
        if "returns" in state and int(np.max(state["horizons"])) > self.n_step:
            raise ValueError(f"saved replay has horizons up to {int(np.max(state['horizons']))} > n_step {self.n_step}")

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        """Restore :meth:`state_dict`; the memory must have the same shape.

        Also takes a save from before n-step storage (``rewards``/``terminals`` arrays: horizon 1),
        a save with a smaller ``n_step``, and a uniform save into a prioritized memory (every
        live entry then gets priority 1).
        """
        self.check_state(state)
        old_format = "returns" not in state
        state = {"known": np.True_, **state}  # a save from before continued streams knows every stream
        for name in self._STATE:
            key = name.lstrip("_")
            if state.get(key) is getattr(self, name) or (old_format and key in ("returns", "horizons")):
                continue  # frames already read in place (replay.npz_io), or an old format's
            getattr(self, name)[...] = state[key]
        if old_format:
            self._returns[...] = state["rewards"]
            self._horizons[...] = 1
            self._flags |= (np.asarray(state["terminals"], bool) * DONE).astype(np.uint8)
        self._added, self._sampled, self._evicted = (int(x) for x in state["totals"])
        self._refresh_sizes()
        if self._tree is not None:
            self._max_priority = float(state.get("priority_max", 0.0))
            if "priorities" in state:
                self._tree.restore(state["priorities"])
            else:
                live = np.arange(self.capacity_per_stream) < self._sizes[:, None]
                leaves = live.ravel() & (self._flags & NOT_A_TRANSITION == 0)
                self._tree.restore(leaves * self._default_priority())

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
        positions of entries ``j-window+1 .. j+n_step`` (masked ones -> the zero frame) and the
        horizons. Columns: state0 = ``:window``, state1 = ``m : m + window``."""
        w = self.window
        cap = self.capacity_per_stream
        off = offset[:, None] + self._win  # [B, w+n] offsets of the stack and the horizon
        pos = stream[:, None] * cap + (self._lo[stream][:, None] + off) % cap
        f = self._flags[pos]
        m = self._horizons[pos[:, w - 1]].astype(np.int64)
        valid = (offset + m < self._sizes[stream]) & (f[:, w - 1] & NOT_A_TRANSITION == 0)
        # entries j+1 .. j+m continue j's episode: no cut, no episode start (also zero-fills
        # state1's history exactly as state0's); frames past j+m are masked
        ahead = self._ahead <= m[:, None]
        valid &= ~((f[:, w:] & (SEGMENT | START) != 0) & ahead).any(axis=1)
        pos[:, w:][~ahead] = self._zero
        if w > 1:
            # frame at col c < w-1 is history iff no START among cols c+1 .. w-1
            start = (f[:, w - 1:0:-1] & START) != 0
            incl = ~np.logical_or.accumulate(start, axis=1)[:, ::-1]
            valid &= ~(incl & (off[:, : w - 1] < 0)).any(axis=1)  # history already evicted
            pos[:, : w - 1][~incl] = self._zero
        return valid, pos, m

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
            horizon=np.empty(batch_size, np.int32),
            weight=np.empty(batch_size, np.float32),
            keys=np.empty(batch_size, np.int64),
        )

    def _batch(self, pos: np.ndarray, m: np.ndarray, keys: np.ndarray, weight: np.ndarray | None,
               out: Batch | None) -> Batch:
        w = self.window
        entry = pos[:, w - 1]
        if out is None:
            out = self.empty_batch(len(entry))
        elif len(out.indices) != len(entry):
            raise ValueError(f"out holds {len(out.indices)} transitions, not {len(entry)}")
        # indices are in range by construction; mode="clip" skips take's buffered bounds check
        self._frames.take(pos[:, :w], axis=0, out=out.state0, mode="clip")
        pos1 = np.take_along_axis(pos, m[:, None] + self._stack, axis=1)
        self._frames.take(pos1, axis=0, out=out.state1, mode="clip")
        out.action[:] = self._actions[entry]
        self._returns.take(entry, out=out.reward, mode="clip")
        np.not_equal(self._flags[entry] & DONE, 0, out=out.terminal)
        out.indices[:] = entry
        out.horizon[:] = m
        out.weight[:] = 1.0 if weight is None else weight
        out.keys[:] = keys
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
        """Which global positions hold a sampleable transition now."""
        stream, offset, live = self._locate(indices)
        return live & self._resolve(stream, offset)[0]

    def gather(self, indices: np.ndarray, out: Batch | None = None) -> Batch:
        """The transitions at these global positions (weight 1); ValueError if any is not valid.

        ``out``: arrays from :meth:`empty_batch` to fill instead of allocating.
        """
        stream, offset, live = self._locate(indices)
        valid, pos, m = self._resolve(stream, offset)
        if not (valid & live).all():
            bad = np.asarray(indices)[~(valid & live)]
            raise ValueError(f"not valid transitions: {bad[:10].tolist()}")
        self._sampled += len(pos)
        return self._batch(pos, m, self._lo[stream] + offset, None, out)

    def _draw(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """Uniform over stored entries: (stream, offset)."""
        u = self._rng.integers(0, self._total, n)
        if self.num_streams == 1:
            return np.zeros(n, np.int64), u
        stream = np.searchsorted(self._ends, u, side="right")
        return stream, u - (self._ends[stream] - self._sizes[stream])

    def _draw_prioritized(self, n: int, stratified: bool) -> tuple[np.ndarray, np.ndarray]:
        """Proportional to the leaves; ``stratified``: one draw in each of ``n`` equal slices of the
        total (lower variance, Schaul et al. 2016), else ``n`` independent draws (for redraws)."""
        total = self._tree.total
        u = self._rng.random(n)
        if stratified:
            u += np.arange(n)
            u *= total / n
        else:
            u *= total
        stream, offset, _ = self._locate(self._tree.find(u))
        return stream, offset

    def _weights(self, entry: np.ndarray, beta: float) -> np.ndarray:
        """Importance-sampling weights ``(N * P(i)) ** -beta`` divided by the batch's largest.

        The division (as in Ape-X and Reverb-based agents) keeps weights in (0, 1], so they only
        scale updates down; it makes ``N`` and the total cancel, leaving
        ``(p_min_in_batch / p_i) ** beta``.
        """
        if beta == 0:
            return np.ones(len(entry), np.float32)
        prob = self._tree.get(entry) / self._tree.total
        w = (self._total * prob) ** -float(beta)
        return (w / w.max()).astype(np.float32)

    def _pick(self, batch_size: int, beta: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
        """``batch_size`` valid transitions, drawn with replacement: frame positions, horizons,
        keys, IS weights (None for uniform).

        Draws over stored entries (uniformly, or proportionally to priority) and redraws the
        invalid ones in vectorised rounds, which is exactly uniform (proportional) over valid
        transitions; after many rounds the rest comes from a full scan of the valid ones.
        """
        if self._total == 0:
            raise ValueError("the replay memory is empty")
        tree = self._tree
        if tree is None:
            draw = self._draw
            stream, offset = draw(batch_size)
        elif tree.total > 0:
            def draw(k: int) -> tuple[np.ndarray, np.ndarray]:
                return self._draw_prioritized(k, stratified=False)

            stream, offset = self._draw_prioritized(batch_size, stratified=True)
        else:  # only terminal-observation entries stored: the scan says whether anything is valid
            draw = self._draw_from_valid
            stream, offset = draw(batch_size)
        valid, pos, m = self._resolve(stream, offset)
        rounds = 0
        while not valid.all():
            bad = np.flatnonzero(~valid)
            rounds += 1
            s2, o2 = draw(len(bad)) if rounds <= _MAX_REJECTION_ROUNDS else self._draw_from_valid(len(bad))
            v2, p2, m2 = self._resolve(s2, o2)
            valid[bad] = v2
            pos[bad] = p2
            m[bad] = m2
            stream[bad] = s2
            offset[bad] = o2
        self._sampled += batch_size
        keys = self._lo[stream] + offset
        weight = None if tree is None else self._weights(pos[:, self.window - 1], beta)
        return pos, m, keys, weight

    def _draw_from_valid(self, n: int) -> tuple[np.ndarray, np.ndarray]:
        """``n`` draws from a full scan of the valid transitions (uniform, or by priority)."""
        s_all, o_all = self._valid_entries()
        if self._tree is None:
            pick = self._rng.integers(0, len(s_all), n)
        else:
            cum = np.cumsum(self._tree.get(s_all * self.capacity_per_stream
                                           + (self._lo[s_all] + o_all) % self.capacity_per_stream))
            if not cum[-1] > 0:
                raise ValueError("no valid transition has a positive priority")
            pick = np.minimum(np.searchsorted(cum, self._rng.random(n) * cum[-1], side="right"), len(cum) - 1)
        return s_all[pick], o_all[pick]

    def sample(self, batch_size: int, beta: float = 0.4, out: Batch | None = None) -> Batch:
        """``batch_size`` transitions drawn with replacement over all valid ones: uniformly, or
        (prioritized) proportionally to priority with IS weights of exponent ``beta``.

        Uniform sampling ignores ``beta``. ``out``: arrays from :meth:`empty_batch` to fill (the
        caller must be done with their previous contents).
        """
        pos, m, keys, weight = self._pick(batch_size, beta)
        return self._batch(pos, m, keys, weight, out)

    def sample_packed(self, batch_size: int, beta: float = 0.4) -> PackedBatch:
        """Like :meth:`sample`, with state0 and state1 sharing their frames: ``window + n_step``
        frames per transition instead of ``2 * window`` (n_step 1: 37% fewer bytes to ship)."""
        pos, m, keys, weight = self._pick(batch_size, beta)
        entry = pos[:, self.window - 1]
        return PackedBatch(
            frames=self._frames.take(pos, axis=0, mode="clip"),
            action=self._actions[entry].astype(np.int32),
            reward=self._returns.take(entry, mode="clip"),
            terminal=self._flags[entry] & DONE != 0,
            indices=entry,
            horizon=m.astype(np.int32),
            weight=np.ones(batch_size, np.float32) if weight is None else weight,
            keys=keys,
            window=self.window,
        )

    def _valid_entries(self) -> tuple[np.ndarray, np.ndarray]:
        stream = np.repeat(np.arange(self.num_streams), self._sizes)
        offset = np.arange(self._total) - np.repeat(self._ends - self._sizes, self._sizes)
        valid = self._resolve(stream, offset)[0]
        if not valid.any():
            raise ValueError("no valid transition stored yet (each needs the entry its horizon reaches)")
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
