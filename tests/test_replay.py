"""replay/: ReplayMemory against keras-rl's SequentialMemory, sampling, eviction, segments, footprint, Ray."""

from __future__ import annotations

import io
import time
from typing import Any

import numpy as np
import pytest

import kerasrl_compat

kerasrl_compat.prepare_rl()
from rl.memory import SequentialMemory  # noqa: E402

from replay.memory import Batch, PackedBatch, ReplayMemory  # noqa: E402
from replay.sumtree import SumTree  # noqa: E402

SHAPE = (6, 6)  # small frames keep keras-rl's Python loops fast; one test uses 84x84


def frame_id(stream: int, t: int, rng: np.random.Generator, shape: tuple[int, int] = SHAPE) -> np.ndarray:
    """A frame that says which stream and step it is: [255 marker, stream, t as 4 bytes, noise...]."""
    f = rng.integers(0, 256, int(np.prod(shape)), dtype=np.uint8)
    f[0] = 255
    f[1] = stream
    f[2:6] = np.frombuffer(np.uint32(t).tobytes(), np.uint8)
    return f.reshape(shape)


def decode(frames: np.ndarray) -> np.ndarray:
    """Step ids of frames [..., H, W]; -1 for zero-filled frames."""
    flat = frames.reshape(*frames.shape[:-2], -1)
    ids = np.ascontiguousarray(flat[..., 2:6]).view(np.uint32)[..., 0].astype(np.int64)
    return np.where(flat[..., 0] == 255, ids, -1)


def make_stream(rng: np.random.Generator, n: int, stream: int = 0, shape: tuple[int, int] = SHAPE) -> dict:
    """``n`` entries laid out the way keras-rl's ``fit`` fills SequentialMemory.

    Also returns ``first``: the first entry of each entry's episode (its stack context), and
    ``is_x``: the terminal-observation entries.
    """
    actions, rewards, terminals, first, is_x = [], [], [], [], []
    while len(actions) < n:
        length = int(rng.choice([1, 2, 3])) if rng.random() < 0.4 else int(rng.integers(4, 16))
        start = len(actions)
        for step in range(length):
            actions.append(int(rng.integers(0, 6)))
            rewards.append(float(np.float32(rng.normal())))
            terminals.append(step == length - 1)
            first.append(start)
            is_x.append(False)
        # the extra entry after a terminal step: terminal observation, dummy action, reward 0
        actions.append(int(rng.integers(0, 6)))
        rewards.append(0.0)
        terminals.append(False)
        first.append(len(actions) - 1)
        is_x.append(True)
    return {
        "frames": np.stack([frame_id(stream, t, rng, shape) for t in range(n)]),
        "actions": np.asarray(actions[:n], np.uint8),
        "rewards": np.asarray(rewards[:n], np.float32),
        "terminals": np.asarray(terminals[:n], bool),
        "first": np.asarray(first[:n]),
        "is_x": np.asarray(is_x[:n]),
    }


def chunks_of(data: dict, stream: int, rng: np.random.Generator, max_len: int = 20) -> list[dict]:
    out, i, n = [], 0, len(data["actions"])
    while i < n:
        j = min(n, i + int(rng.integers(1, max_len + 1)))
        out.append({"stream": stream, "frames": data["frames"][i:j], "actions": data["actions"][i:j],
                    "rewards": data["rewards"][i:j], "terminals": data["terminals"][i:j],
                    "new_segment": i == 0})
        i = j
    return out


def sequential_memory(data: dict, window: int, limit: int = 100_000) -> SequentialMemory:
    mem = SequentialMemory(limit=limit, window_length=window)
    for f, a, r, t in zip(data["frames"], data["actions"], data["rewards"], data["terminals"], strict=True):
        mem.append(f, int(a), float(r), bool(t))
    return mem


def kerasrl_valid(data: dict, window: int, offset: int = 0) -> np.ndarray:
    """keras-rl ``batch_idxs`` it returns without resampling (``offset``: deque start)."""
    n = len(data["actions"]) - offset
    b = np.arange(window, n - 1)
    return b[~data["terminals"][offset + b - 1]]


def kerasrl_sample(mem: SequentialMemory, idxs: np.ndarray) -> Batch:
    exps = mem.sample(len(idxs), batch_idxs=idxs)
    return Batch(
        state0=np.array([np.array(e.state0) for e in exps]),
        action=np.array([e.action for e in exps]),
        reward=np.array([e.reward for e in exps], np.float32),
        terminal=np.array([e.terminal1 for e in exps]),
        state1=np.array([np.array(e.state1) for e in exps]),
        indices=idxs,
        horizon=np.ones(len(idxs), np.int32),
        weight=np.ones(len(idxs), np.float32),
        keys=idxs,
    )


def assert_same(ours: Batch, ref: Batch) -> None:
    for name in ("state0", "action", "reward", "terminal", "state1", "horizon", "weight"):
        a, b = getattr(ours, name), getattr(ref, name)
        assert a.shape == b.shape, name
        assert np.array_equal(a, b), name


def reference_valid(data: dict) -> np.ndarray:
    n = len(data["actions"])
    return (np.arange(n) + 1 < n) & ~data["is_x"]


def reference_stack_ids(data: dict, t: np.ndarray, window: int) -> np.ndarray:
    """Step ids of state0 for entries ``t`` (-1: zero-filled), from the episode bookkeeping."""
    k = t[:, None] + np.arange(-(window - 1), 1)
    return np.where(k >= data["first"][t][:, None], k, -1)


# --- 1. differential against keras-rl ----------------------------------------------------------
@pytest.mark.parametrize("window", [1, 2, 4])
def test_matches_sequential_memory_single_stream(window: int) -> None:
    rng = np.random.default_rng(window)
    data = make_stream(rng, 400)
    mem = ReplayMemory(1000, 1, window=window, frame_shape=SHAPE, seed=0)
    for chunk in chunks_of(data, 0, rng):
        mem.add_chunk(chunk)
    assert len(mem) == 400
    ref = sequential_memory(data, window)

    idxs = kerasrl_valid(data, window)
    assert len(idxs) > 250 and data["terminals"].sum() > 20
    assert_same(mem.gather(idxs), kerasrl_sample(ref, idxs))

    # our valid set: keras-rl's, plus the first entries keras-rl never samples (j < window)
    ours = mem.valid(np.arange(1000))
    assert np.array_equal(ours[:400], reference_valid(data)) and not ours[400:].any()
    assert set(idxs) <= set(np.flatnonzero(ours))
    early = np.flatnonzero(ours[:window])
    if len(early):
        assert np.array_equal(decode(mem.gather(early).state0), reference_stack_ids(data, early, window))


def test_matches_sequential_memory_three_streams_interleaved() -> None:
    rng = np.random.default_rng(7)
    window, cap = 4, 500
    streams = [make_stream(rng, n, s) for s, n in enumerate((300, 220, 260))]
    chunks = [chunks_of(d, s, rng) for s, d in enumerate(streams)]
    mem = ReplayMemory(3 * cap, 3, window=window, frame_shape=SHAPE, seed=0)
    while any(chunks):  # interleave the streams' chunks in random order, each in its own order
        s = int(rng.choice([i for i, c in enumerate(chunks) if c]))
        mem.add_chunks([chunks[s].pop(0)])
    assert len(mem) == 780
    for s, data in enumerate(streams):
        idxs = kerasrl_valid(data, window)
        ours = mem.gather(s * cap + idxs)
        assert np.array_equal(ours.indices, s * cap + idxs)
        assert_same(ours, kerasrl_sample(sequential_memory(data, window), idxs))
        present = decode(ours.state0) >= 0
        assert present[:, -1].all() and (ours.state0[:, :, 0, 1][present] == s).all()


# --- 2. sampling --------------------------------------------------------------------------------
def test_sampling_is_valid_and_uniform() -> None:
    rng = np.random.default_rng(3)
    cap = 80
    streams = [make_stream(rng, n, s) for s, n in enumerate((80, 50, 65))]
    mem = ReplayMemory(3 * cap, 3, frame_shape=SHAPE, seed=123)
    for s, data in enumerate(streams):
        mem.add_chunks(chunks_of(data, s, rng))
    valid_pos = np.concatenate([s * cap + np.flatnonzero(reference_valid(d)) for s, d in enumerate(streams)])
    assert mem.num_valid() == len(valid_pos)

    counts = np.zeros(3 * cap, np.int64)
    draws = 0
    for _ in range(100):
        b = mem.sample(256)
        assert b.state0.shape == (256, 4, *SHAPE) and b.state0.dtype == np.uint8
        assert b.state1.shape == (256, 4, *SHAPE) and b.state1.dtype == np.uint8
        assert b.action.dtype == np.int32 and b.reward.dtype == np.float32 and b.terminal.dtype == bool
        assert b.indices.dtype == np.int64
        assert_same(b, mem.gather(b.indices))
        # no stack crosses an episode start; state1 is state0 shifted plus the next entry
        s, t = np.divmod(b.indices, cap)
        for k, data in enumerate(streams):
            m = s == k
            assert np.array_equal(decode(b.state0[m]), reference_stack_ids(data, t[m], 4))
        assert np.array_equal(b.state1[:, :3], b.state0[:, 1:])
        assert np.array_equal(decode(b.state1[:, 3]), t + 1)
        np.add.at(counts, b.indices, 1)
        draws += 256
    assert mem.counters()["sampled"] >= draws
    invalid = np.ones(3 * cap, bool)
    invalid[valid_pos] = False
    assert counts[invalid].sum() == 0
    expected = draws / len(valid_pos)
    chi2 = float(((counts[valid_pos] - expected) ** 2 / expected).sum())
    dof = len(valid_pos) - 1
    assert chi2 < dof + 5 * np.sqrt(2 * dof), (chi2, dof)


def test_sample_84x84_and_errors() -> None:
    rng = np.random.default_rng(0)
    mem = ReplayMemory(1000, 2, seed=0)
    with pytest.raises(ValueError):
        mem.sample(4)
    assert not mem.can_sample()
    data = make_stream(rng, 50, 0, shape=(84, 84))
    mem.add(0, data["frames"], data["actions"], data["rewards"], data["terminals"])
    b = mem.sample(32)
    assert b.state0.shape == (32, 4, 84, 84) and b.state1.shape == (32, 4, 84, 84)
    assert mem.can_sample()
    buf = mem.empty_batch(32)
    assert mem.sample(32, out=buf) is buf
    assert_same(buf, mem.gather(buf.indices))
    assert mem.gather(buf.indices[:5], out=mem.empty_batch(5)).state0.shape == (5, 4, 84, 84)
    with pytest.raises(ValueError):
        mem.add(0, data["frames"].astype(np.float32), data["actions"], data["rewards"], data["terminals"])
    with pytest.raises(ValueError):
        mem.add(2, data["frames"], data["actions"], data["rewards"], data["terminals"])
    with pytest.raises(ValueError):
        mem.gather(np.array([49]))  # the newest entry: its next observation is not stored yet
    with pytest.raises(ValueError):
        ReplayMemory(10, 2)


def test_sample_when_almost_nothing_is_valid() -> None:
    """One valid transition among many single-entry streams: the fallback still finds it."""
    rng = np.random.default_rng(0)
    mem = ReplayMemory(40 * 6, 40, frame_shape=SHAPE, seed=0)
    for s in range(40):
        n = 2 if s == 17 else 1
        mem.add(s, np.stack([frame_id(s, t, rng) for t in range(n)]), np.zeros(n), np.ones(n), np.zeros(n, bool))
    b = mem.sample(8)
    assert (b.indices == 17 * 6).all()


# --- 3. eviction --------------------------------------------------------------------------------
def test_eviction_oldest_first() -> None:
    rng = np.random.default_rng(11)
    window, cap = 4, 50
    data = make_stream(rng, 300)
    # end the stream so that the oldest live entry is mid-episode: its stack history is evicted
    lo = int(np.flatnonzero((data["first"] < np.arange(300) - 3) & (np.arange(300) > 130))[0])
    n = lo + cap
    data = {k: v[:n] for k, v in data.items()}
    mem = ReplayMemory(cap, 1, window=window, frame_shape=SHAPE, seed=1)
    chunks = chunks_of(data, 0, rng, max_len=15)
    for chunk in chunks:
        mem.add_chunk(chunk)
        c = mem.counters()
        assert c["size"] == min(c["added"], cap) and c["evicted"] == max(0, c["added"] - cap)
    assert mem.counters() == {"added": n, "sampled": 0, "evicted": n - cap, "size": cap, "capacity": cap}

    # every slot holds one of the newest `cap` entries, each exactly once
    ids = decode(mem._frames[:cap])
    assert sorted(ids) == list(range(lo, n))

    # valid: not the newest, not a terminal-observation entry, history not evicted
    slots = np.arange(cap)
    t = lo + (slots - lo) % cap
    hist_evicted = np.array([data["first"][x] < lo and x - (window - 1) < lo for x in t])
    assert hist_evicted.any()
    expected = (t + 1 < n) & ~data["is_x"][t] & ~hist_evicted
    assert np.array_equal(mem.valid(slots), expected)

    # sampled states contain only live frames, and equal keras-rl's SequentialMemory(limit=cap)
    ref = sequential_memory(data, window, limit=cap)
    for _ in range(20):
        b = mem.sample(64)
        got = decode(np.concatenate([b.state0, b.state1], axis=1))
        assert ((got == -1) | ((got >= lo) & (got < n))).all()
        tt = lo + (b.indices - lo) % cap
        assert np.array_equal(decode(b.state0), reference_stack_ids(data, tt, window))
    kr = kerasrl_valid(data, window, offset=lo)
    assert_same(mem.gather((lo + kr) % cap), kerasrl_sample(ref, kr))

    # a chunk longer than the ring keeps its newest entries
    mem.add_chunk({**chunks[0], "frames": data["frames"][:0], "actions": [], "rewards": [], "terminals": [],
                   "new_segment": False})  # empty chunk: a no-op
    assert mem.counters()["added"] == n
    long = make_stream(rng, 130)
    mem.add(0, long["frames"], long["actions"], long["rewards"], long["terminals"])
    assert mem.counters()["evicted"] == n + 130 - cap and len(mem) == cap
    assert sorted(decode(mem._frames[:cap])) == list(range(80, 130))


# --- 4. segments --------------------------------------------------------------------------------
def test_new_segment_cuts_stacks_and_transitions() -> None:
    rng = np.random.default_rng(5)
    mem = ReplayMemory(100, 1, frame_shape=SHAPE, seed=0)
    f = np.stack([frame_id(0, t, rng) for t in range(20)])
    z = np.zeros(20, bool)
    a = np.arange(20, dtype=np.uint8)
    r = np.zeros(20, np.float32)
    mem.add(0, f[:6], a[:6], r[:6], z[:6])  # an episode in progress ...
    mem.add(0, f[6:10], a[6:10], r[6:10], z[6:10], new_segment=True)  # ... an actor restart
    mem.add(0, f[10:10], a[10:10], r[10:10], z[10:10], new_segment=True)  # empty chunk: cut pending
    mem.add(0, f[10:14], a[10:14], r[10:14], z[10:14])
    valid = mem.valid(np.arange(14))
    assert list(np.flatnonzero(~valid)) == [5, 9, 13]  # last of each segment, and the newest
    b = mem.gather(np.array([4, 6, 8, 10, 12]))
    assert decode(b.state0).tolist() == [
        [1, 2, 3, 4], [-1, -1, -1, 6], [-1, 6, 7, 8], [-1, -1, -1, 10], [-1, 10, 11, 12]]
    assert decode(b.state1[:, -1]).tolist() == [5, 7, 9, 11, 13]


def test_truncated_episode_as_the_explorer_pushes_it() -> None:
    """Cut by a step limit: last step not terminal, terminal-observation entry, then a new segment."""
    rng = np.random.default_rng(6)
    mem = ReplayMemory(100, 1, frame_shape=SHAPE, seed=0)
    f = np.stack([frame_id(0, t, rng) for t in range(12)])
    a = np.zeros(12, np.uint8)
    r = np.ones(12, np.float32)
    mem.add(0, f[:6], a[:6], r[:6], np.zeros(6, bool))  # entries 0..4 steps, 5 = final observation
    mem.add(0, f[6:12], a[6:12], r[6:12], np.zeros(6, bool), new_segment=True)
    valid = mem.valid(np.arange(12))
    assert list(np.flatnonzero(~valid)) == [5, 11]
    b = mem.gather(np.array([4, 7]))
    assert not b.terminal.any()  # bootstrapped: the episode did not end
    assert decode(b.state1).tolist() == [[2, 3, 4, 5], [-1, 6, 7, 8]]


# --- 5. footprint -------------------------------------------------------------------------------
def test_one_million_transitions_fit_in_8_gb() -> None:
    assert ReplayMemory.bytes_per_transition() == 84 * 84 + 8
    assert ReplayMemory.estimate_nbytes(1_000_000) < 8e9
    t0 = time.perf_counter()
    mem = ReplayMemory(1_000_000, 16, seed=0)  # np.zeros: pages are committed only when written
    assert time.perf_counter() - t0 < 10.0  # 0.01 s: nothing is touched (a filled 7 GB would take far longer)
    assert mem.nbytes < 8e9
    assert mem.nbytes == ReplayMemory.estimate_nbytes(1_000_000, 16)
    assert mem.counters()["capacity"] == 1_000_000
    del mem
    # prioritized: a float64 tree of 2 * 2**20 nodes, 16.8 MB
    prio = ReplayMemory.estimate_nbytes(1_000_000, 16, prioritized=True)
    assert prio - ReplayMemory.estimate_nbytes(1_000_000, 16) == 2 * 2**20 * 8 and prio < 8e9
    assert ReplayMemory.bytes_per_transition(prioritized=True) == 84 * 84 + 24
    small = ReplayMemory(1000, 3, frame_shape=SHAPE, n_step=3, priority_alpha=0.6)
    assert small.nbytes == ReplayMemory.estimate_nbytes(1000, 3, SHAPE, prioritized=True)


# --- 6. the Ray actor ---------------------------------------------------------------------------
def test_replay_actor(ray_session) -> None:
    from replay.server import ReplayActor

    ray = ray_session
    rng = np.random.default_rng(9)
    actor = ReplayActor.remote(600, 2, seed=0)
    assert ray.get(actor.ready.remote(1)) is False
    size = 0
    for s in range(2):
        data = make_stream(rng, 120, s, shape=(84, 84))
        size = ray.get(actor.add_chunks.remote(chunks_of(data, s, rng, max_len=60)))
    assert size == 240 and ray.get(actor.size.remote()) == 240
    assert ray.get(actor.ready.remote(200)) and not ray.get(actor.ready.remote(241))
    batches = ray.get(actor.sample.remote(32, 3))
    assert len(batches) == 3
    for b in batches:
        assert isinstance(b, Batch)
        assert b.state0.shape == (32, 4, 84, 84) and b.state0.dtype == np.uint8
        assert b.state1.shape == (32, 4, 84, 84) and b.action.shape == (32,)
        assert b.reward.dtype == np.float32 and b.terminal.dtype == bool
    again = ray.get(actor.gather.remote(batches[0].indices))
    assert np.array_equal(again.state0, batches[0].state0)
    c = ray.get(actor.counters.remote())
    assert c == {"added": 240, "sampled": 128, "evicted": 0, "size": 240, "capacity": 600}
    ray.kill(actor)


def test_packed_batches_share_frames_exactly() -> None:
    """sample_packed's frames are gather's state0 plus state1's newest frame, for the same draws."""
    rng = np.random.default_rng(11)
    mem = ReplayMemory(200, 2, frame_shape=SHAPE, seed=5)
    for s in range(2):
        mem.add_chunks(chunks_of(make_stream(rng, 100, s), s, rng))
    packed = mem.sample_packed(64)
    ref = mem.gather(packed.indices)
    assert packed.frames.shape == (64, 5, *SHAPE) and packed.frames.dtype == np.uint8
    assert np.array_equal(packed.state0, ref.state0) and np.array_equal(packed.state1, ref.state1)
    assert np.array_equal(packed.action, ref.action) and np.array_equal(packed.reward, ref.reward)
    assert np.array_equal(packed.terminal, ref.terminal)


# --- 7. the sum tree ----------------------------------------------------------------------------
@pytest.mark.parametrize("size", [1, 5, 8, 1000])
def test_sumtree_matches_brute_force(size: int) -> None:
    """Integer leaf values keep every sum exact, so find must equal searchsorted on the prefix sums."""
    rng = np.random.default_rng(size)
    tree, ref = SumTree(size), np.zeros(size)
    for _ in range(25):
        k = int(rng.integers(1, 2 * size + 2))
        idx = rng.integers(0, size, k)  # duplicates are likely: the last write must win
        vals = rng.integers(0, 5, k).astype(np.float64)  # zeros are frequent
        tree.update(idx, vals)
        for i, v in zip(idx, vals, strict=True):
            ref[i] = v
        assert np.array_equal(tree.get(np.arange(size)), ref)
        assert tree.total == ref.sum()
        if ref.sum() == 0:
            with pytest.raises(ValueError):
                tree.find(np.array([0.0]))
            continue
        cum = np.cumsum(ref)
        total = cum[-1]
        u = np.concatenate([rng.uniform(0, total, 300), cum[:-1],  # every prefix boundary exactly
                            [0.0, -3.0, np.nextafter(total, 0), total, total + 7]])
        got = tree.find(u)
        expected = np.searchsorted(cum, np.clip(u, 0, np.nextafter(total, 0)), side="right")
        assert np.array_equal(got, expected)
        assert (ref[got] > 0).all()

    # float leaves: the prefix property up to rounding, and never a zero leaf
    vals = rng.random(size) * (rng.random(size) < 0.7)
    vals[0] += 0.5
    tree.update(np.arange(size), vals)
    u = rng.uniform(0, tree.total, 2000)
    got = tree.find(u)
    cum = np.cumsum(vals)
    assert (vals[got] > 0).all()
    assert np.all(cum[got] - vals[got] <= u + 1e-9) and np.all(u < cum[got] + 1e-9)
    assert np.isclose(tree.total, vals.sum(), rtol=1e-12)

    copy = SumTree(size)
    copy.restore(tree.state())
    assert np.array_equal(copy._tree, tree._tree)
    for bad in (lambda: tree.update([0], [-1.0]), lambda: tree.update([size], [1.0]),
                lambda: tree.update([0], [np.nan]), lambda: copy.restore(np.zeros(size + 1))):
        with pytest.raises(ValueError):
            bad()


def test_sumtree_never_returns_a_zero_leaf_under_rounding() -> None:
    """Values over 16 decades with zeros, queries at prefix boundaries and one ulp either side:
    a plain ``u >= left`` descent lands on zero (or padding) leaves in some of these trees."""
    rng = np.random.default_rng(0)
    for _ in range(400):
        size = int(rng.integers(2, 64))
        vals = 10.0 ** rng.uniform(-8, 8, size) * (rng.random(size) < 0.5)
        vals[rng.integers(0, size)] = 1.0
        tree = SumTree(size)
        tree.update(np.arange(size), vals)
        cum = np.cumsum(vals)
        u = np.concatenate([cum, np.nextafter(cum, 0), np.nextafter(cum, np.inf), rng.uniform(0, tree.total, 50)])
        got = tree.find(u)
        assert got.max() < size and (vals[got] > 0).all()


# --- 8. prioritized sampling --------------------------------------------------------------------
def chi2_critical(dof: int, z: float = 3.090) -> float:
    """Upper 0.999 quantile of chi-square (Wilson-Hilferty approximation; z = the normal 0.999 quantile)."""
    return dof * (1 - 2 / (9 * dof) + z * np.sqrt(2 / (9 * dof))) ** 3


def add_with_priorities(mem: ReplayMemory, data: dict, stream: int, rng: np.random.Generator,
                        priorities: np.ndarray) -> None:
    i = 0
    for chunk in chunks_of(data, stream, rng):
        n = len(chunk["actions"])
        mem.add_chunk({**chunk, "priorities": priorities[i:i + n]})
        i += n


def test_prioritized_frequencies_match_priorities() -> None:
    """Counts over 51,200 draws against P(i) = p_i^alpha / sum over valid transitions (chi-square,
    critical value at 0.999); stratification only lowers the statistic. Invalid entries never come up."""
    rng = np.random.default_rng(21)
    alpha, cap = 0.7, 80
    streams = [make_stream(rng, n, s) for s, n in enumerate((60, 45))]
    raw = [rng.uniform(0.05, 3.0, len(d["actions"])) for d in streams]
    mem = ReplayMemory(2 * cap, 2, frame_shape=SHAPE, seed=4, priority_alpha=alpha)
    for s, data in enumerate(streams):
        add_with_priorities(mem, data, s, rng, raw[s])
    valid_pos = np.concatenate([s * cap + np.flatnonzero(reference_valid(d)) for s, d in enumerate(streams)])
    stored = np.zeros(2 * cap)
    for s, data in enumerate(streams):
        stored[s * cap:s * cap + len(raw[s])] = (raw[s] + 1e-6) ** alpha * ~data["is_x"]
    got = mem.priorities(np.arange(2 * cap))
    assert np.array_equal(got == 0, stored == 0) and np.allclose(got, stored, rtol=1e-13, atol=0)

    counts = np.zeros(2 * cap, np.int64)
    draws = 0
    for _ in range(200):
        b = mem.sample(256)
        np.add.at(counts, b.indices, 1)
        draws += 256
    invalid = np.ones(2 * cap, bool)
    invalid[valid_pos] = False
    assert counts[invalid].sum() == 0
    expected = draws * stored[valid_pos] / stored[valid_pos].sum()
    assert expected.min() > 20
    dof = len(valid_pos) - 1
    chi2 = float(((counts[valid_pos] - expected) ** 2 / expected).sum())
    assert chi2 < chi2_critical(dof), (chi2, dof)
    # the same statistic rejects uniform sampling by a wide margin: the test has power
    flat = np.full(len(valid_pos), draws / len(valid_pos))
    assert float(((counts[valid_pos] - flat) ** 2 / flat).sum()) > 10 * chi2_critical(dof)


def test_update_priorities_takes_effect_and_ignores_stale_keys() -> None:
    rng = np.random.default_rng(8)
    cap, alpha = 60, 0.5
    mem = ReplayMemory(cap, 1, frame_shape=SHAPE, seed=2, priority_alpha=alpha)
    f = np.stack([frame_id(0, t, rng) for t in range(200)])
    z = np.zeros(200, bool)
    mem.add(0, f[:40], np.zeros(40), np.zeros(40), z[:40], priorities=np.ones(40))
    b = mem.sample(16)
    target, key = int(b.indices[0]), int(b.keys[0])
    assert key == target  # one stream, no wrap yet: position == slot

    def frequency() -> float:
        return float(np.mean([(mem.sample(64).indices == target).mean() for _ in range(100)]))

    before = frequency()
    mem.update_priorities([target], [key + cap], [99.0])  # a key from another generation: ignored
    assert np.isclose(mem.priorities([target])[0], (1 + 1e-6) ** alpha, rtol=1e-13, atol=0)
    mem.update_priorities([target, target], [key, key], [5.0, 99.0])  # the last one wins
    assert np.isclose(mem.priorities([target])[0], (99 + 1e-6) ** alpha, rtol=1e-13, atol=0)
    after = frequency()
    share = (99 + 1e-6) ** alpha / ((99 + 1e-6) ** alpha + 38 * (1 + 1e-6) ** alpha)  # 39 valid transitions
    assert before < 0.05 and abs(after - share) < 0.03, (before, after, share)

    # new entries without priorities get the largest stored so far
    mem.add(0, f[40:45], np.zeros(5), np.zeros(5), z[40:45])
    assert np.allclose(mem.priorities(np.arange(40, 45)), (99 + 1e-6) ** alpha, rtol=1e-13, atol=0)

    # wrap the ring: the slot now holds entry key + cap; the old key no longer applies
    mem.add(0, f[45:45 + cap], np.zeros(cap), np.zeros(cap), z[45:45 + cap], priorities=np.full(cap, 2.0))
    assert np.isclose(mem.priorities([target])[0], (2 + 1e-6) ** alpha, rtol=1e-13, atol=0)
    mem.update_priorities([target], [key], [50.0])
    assert np.isclose(mem.priorities([target])[0], (2 + 1e-6) ** alpha, rtol=1e-13, atol=0)
    mem.update_priorities([target], [key + cap], [50.0])
    assert np.isclose(mem.priorities([target])[0], (50 + 1e-6) ** alpha, rtol=1e-13, atol=0)
    with pytest.raises(ValueError):
        mem.update_priorities([target], [key + cap], [-1.0])

    uniform = ReplayMemory(cap, 1, frame_shape=SHAPE)
    uniform.add(0, f[:10], np.zeros(10), np.zeros(10), z[:10])
    uniform.update_priorities([3], [3], [7.0])  # a no-op
    assert np.all(uniform.sample(32, beta=1.0).weight == 1)


def test_eviction_keeps_the_tree_equal_to_live_entries() -> None:
    """Through several wraps, interleaved streams, default priorities and stale updates the leaves
    equal a brute-force record of the live entries' priorities (0 for terminal observations)."""
    rng = np.random.default_rng(13)
    alpha, cap, n_streams = 0.6, 25, 3
    mem = ReplayMemory(cap * n_streams, n_streams, frame_shape=SHAPE, seed=0, priority_alpha=alpha)
    streams = [make_stream(rng, 160, s) for s in range(n_streams)]
    chunks = [chunks_of(d, s, rng, max_len=40 if s == 0 else 12) for s, d in enumerate(streams)]
    assert max(len(c["actions"]) for c in chunks[0]) > cap  # some chunk is longer than its ring
    ref = np.zeros(cap * n_streams)  # leaf per global position
    ref_max = 0.0
    count = [0] * n_streams
    while any(chunks):
        s = int(rng.choice([i for i, c in enumerate(chunks) if c]))
        chunk = chunks[s].pop(0)
        n = len(chunk["actions"])
        if rng.random() < 0.7:
            raw = rng.uniform(0, 4, n)
            chunk = {**chunk, "priorities": raw}
            vals = (raw + 1e-6) ** alpha
        else:
            vals = np.full(n, ref_max if ref_max > 0 else 1.0)
        mem.add_chunk(chunk)
        t = count[s] + np.arange(n)
        kept = t >= count[s] + n - cap  # a chunk longer than the ring keeps its newest entries
        stored = np.where(streams[s]["is_x"][t[kept]], 0.0, vals[kept])
        ref[s * cap + t[kept] % cap] = stored
        ref_max = max(ref_max, float(stored.max()))
        count[s] += n
        # learner updates: about half with the current key, the rest with the slot's previous occupant's
        live = [(q, x) for q in range(n_streams) for x in range(max(0, count[q] - cap), count[q])]
        pick = [live[i] for i in rng.integers(0, len(live), 6)]
        keys = np.array([x - cap * int(rng.random() < 0.5) for _, x in pick])
        idx = np.array([q * cap + x % cap for q, x in pick])
        raw = rng.uniform(0, 4, 6)
        mem.update_priorities(idx, keys, raw)
        for (q, x), k, p, i in zip(pick, keys, raw, idx, strict=True):
            if k == x and not streams[q]["is_x"][x]:
                ref[i] = (p + 1e-6) ** alpha
                ref_max = max(ref_max, ref[i])
        got = mem.priorities(np.arange(cap * n_streams))
        # (p + eps) ** alpha may differ in the last bit between numpy's scalar and array paths
        assert np.array_equal(got == 0, ref == 0) and np.allclose(got, ref, rtol=1e-13, atol=0)
        assert np.isclose(mem.priority_total, ref.sum(), rtol=1e-12)
    assert min(count) > 3 * cap and mem.counters()["evicted"] == sum(count) - n_streams * cap


def test_importance_weights_follow_the_formula() -> None:
    rng = np.random.default_rng(17)
    alpha = 0.8
    data = make_stream(rng, 70)
    mem = ReplayMemory(100, 1, frame_shape=SHAPE, seed=6, priority_alpha=alpha)
    add_with_priorities(mem, data, 0, rng, rng.uniform(0, 5, 70))
    for beta in (0.0, 0.4, 1.0):
        for b in (mem.sample(64, beta=beta), mem.sample_packed(64, beta=beta)):
            prob = mem.priorities(b.indices) / mem.priority_total
            w = (len(mem) * prob) ** -beta
            assert b.weight.dtype == np.float32
            assert np.allclose(b.weight, w / w.max(), rtol=1e-6) and b.weight.max() == 1
        assert beta == 0 or np.ptp(b.weight) > 0.05
    assert np.all(mem.gather(b.indices).weight == 1)

    uniform = ReplayMemory(100, 1, frame_shape=SHAPE, seed=6)
    uniform.add_chunks(chunks_of(data, 0, rng))
    assert np.all(uniform.sample(64, beta=1.0).weight == 1) and np.all(uniform.sample_packed(8).weight == 1)


# --- 9. n-step storage --------------------------------------------------------------------------
def make_nstep_stream(rng: np.random.Generator, n: int, n_step: int, stream: int) -> dict:
    """``n`` entries with episodes that end (terminal step + terminal observation), are truncated
    (final observation, then a new segment) or are cut by an actor restart (new segment at once),
    and per-entry returns/horizons/dones as an actor computes them; about 15% of the horizons are
    random instead (possibly crossing an episode or segment: those transitions must be invalid).

    ``inst``: which episode piece (between starts and cuts) an entry belongs to; ``first``: that
    piece's first entry; ``seg``: the entry starts a segment.
    """
    terminals, seg, inst, is_x = [], [], [], []
    piece, cut = 0, True
    while len(terminals) < n:
        kind = rng.choice(["terminal", "truncated", "restart"], p=[0.6, 0.2, 0.2])
        length = int(rng.integers(1, 9))
        for k in range(length):
            terminals.append(kind == "terminal" and k == length - 1)
            seg.append(cut)
            inst.append(piece)
            is_x.append(False)
            cut = False
        if kind != "restart":  # the terminal (or final) observation entry
            terminals.append(False)
            seg.append(False)
            inst.append(piece)
            is_x.append(kind == "terminal")
        cut = kind != "terminal"
        piece += 1
    terminals, seg, inst, is_x = (np.asarray(a[:n]) for a in (terminals, seg, inst, is_x))
    horizons = np.ones(n, np.uint8)
    dones = np.zeros(n, bool)
    for t in range(n):
        m = 0
        for k in range(n_step):
            if t + k + 1 >= n or inst[t + k + 1] != inst[t]:
                break
            m = k + 1
            if terminals[t + k]:
                dones[t] = True
                break
        horizons[t] = max(m, 1)
        if rng.random() < 0.15:
            horizons[t] = rng.integers(1, n_step + 1)
            dones[t] = rng.random() < 0.3
    first = np.array([np.flatnonzero(inst == inst[t])[0] for t in range(n)])
    return {
        "frames": np.stack([frame_id(stream, t, rng) for t in range(n)]),
        "actions": rng.integers(0, 6, n).astype(np.uint8),
        "rewards": rng.normal(size=n).astype(np.float32),
        "terminals": terminals.astype(bool),
        "returns": rng.normal(size=n).astype(np.float32),
        "horizons": horizons,
        "dones": dones,
        "priorities": rng.uniform(0, 3, n),
        "seg": seg.astype(bool),
        "inst": inst,
        "first": first,
        "is_x": is_x.astype(bool),
    }


def nstep_chunks(data: dict, stream: int, rng: np.random.Generator, max_len: int = 9) -> list[dict]:
    """Chunks that start at every segment start (with ``new_segment``) and at random places."""
    keys = ("frames", "actions", "rewards", "terminals", "returns", "horizons", "dones", "priorities")
    n = len(data["actions"])
    cuts = set(np.flatnonzero(data["seg"]).tolist()) | {n}
    i = 0
    while i < n:
        i = min(n, i + int(rng.integers(1, max_len + 1)))
        cuts.add(i)
    bounds = sorted(cuts)
    return [{"stream": stream, "new_segment": bool(data["seg"][a]), **{k: data[k][a:b] for k in keys}}
            for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def nstep_reference(data: dict, t: int, size: int, lo: int, window: int) -> tuple[bool, bool]:
    """(valid, waiting) of entry ``t`` when entries ``lo .. size-1`` are live; waiting: valid but
    for its bootstrap entry, which has not arrived yet."""
    m = int(data["horizons"][t])
    reach = range(t + 1, min(t + m, size - 1) + 1)
    ok = (not data["is_x"][t] and all(data["inst"][k] == data["inst"][t] for k in reach)
          and max(data["first"][t], t - window + 1) >= lo)
    return ok and t + m < size, ok and t + m >= size


def check_nstep_rows(b: Batch | PackedBatch, streams: list[dict], cap: int, window: int, n_step: int) -> None:
    """Every row against frame ids rebuilt from the plain per-stream lists."""
    s, slot = np.divmod(b.indices, cap)
    assert np.array_equal(b.keys % cap, slot)
    for row in range(len(b.indices)):
        data, t = streams[s[row]], int(b.keys[row])
        m = int(data["horizons"][t])
        assert b.horizon[row] == m and b.action[row] == data["actions"][t]
        assert b.reward[row] == data["returns"][t] and b.terminal[row] == data["dones"][t]
        first = data["first"][t]
        k0 = np.arange(t - window + 1, t + 1)
        k1 = k0 + m
        assert np.array_equal(decode(b.state0[row]), np.where(k0 >= first, k0, -1))
        assert np.array_equal(decode(b.state1[row]), np.where(k1 >= first, k1, -1))
        if isinstance(b, PackedBatch):
            k = np.arange(t - window + 1, t + n_step + 1)
            assert np.array_equal(decode(b.frames[row]), np.where((k >= first) & (k <= t + m), k, -1))
            zero = decode(b.frames[row]) == -1
            assert not b.frames[row][zero].any()  # masked frames are all-zero
        present = decode(b.state1[row]) >= 0
        assert (b.state1[row][:, 0, 1][present] == s[row]).all()


@pytest.mark.parametrize("alpha,cap", [(None, 400), (0.6, 400), (None, 29), (0.6, 29)])
def test_nstep_matches_brute_force(alpha: float | None, cap: int) -> None:
    """n_step 3, two interleaved streams: validity after every chunk (episode ends, segments, eviction
    with cap 29, bootstrap entries not yet arrived), then Batch/PackedBatch rows against the lists."""
    rng = np.random.default_rng(31 + cap)
    window, n_step, n_streams, n = 4, 3, 2, 150
    streams = [make_nstep_stream(rng, n, n_step, s) for s in range(n_streams)]
    chunks = [nstep_chunks(d, s, rng) for s, d in enumerate(streams)]
    mem = ReplayMemory(cap * n_streams, n_streams, window=window, frame_shape=SHAPE, seed=2, n_step=n_step,
                       priority_alpha=alpha)
    size = [0] * n_streams
    waiting: set[tuple[int, int]] = set()
    arrived = 0
    while any(chunks):
        s = int(rng.choice([i for i, c in enumerate(chunks) if c]))
        chunk = chunks[s].pop(0)
        mem.add_chunk(chunk)
        size[s] += len(chunk["actions"])
        expected = np.zeros(cap * n_streams, bool)
        for q, data in enumerate(streams):
            lo = max(0, size[q] - cap)
            for t in range(lo, size[q]):
                valid, wait = nstep_reference(data, t, size[q], lo, window)
                expected[q * cap + t % cap] = valid
                if wait:
                    waiting.add((q, t))
                elif (q, t) in waiting:
                    waiting.discard((q, t))
                    arrived += valid
        assert np.array_equal(mem.valid(np.arange(cap * n_streams)), expected)
    assert arrived > 20  # transitions that were invalid until their bootstrap entry came, then valid
    cross = [(d["horizons"] > 1) & ~d["is_x"] & (d["inst"][np.minimum(np.arange(n) + d["horizons"], n - 1)]
                                                 != d["inst"]) for d in streams]
    assert sum(c.sum() for c in cross) >= 3  # horizons that cross a cut or an episode start occur

    for _ in range(4):
        check_nstep_rows(mem.sample(96, beta=0.5), streams, cap, window, n_step)
        packed = mem.sample_packed(96, beta=0.5)
        assert packed.frames.shape == (96, window + n_step, *SHAPE) and packed.horizon.dtype == np.int32
        check_nstep_rows(packed, streams, cap, window, n_step)
        again = mem.gather(packed.indices)
        assert np.array_equal(again.state0, packed.state0) and np.array_equal(again.state1, packed.state1)
        assert np.array_equal(again.keys, packed.keys)
    assert (packed.horizon < n_step).any() and (packed.horizon == n_step).any() and packed.terminal.any()
    buf = mem.empty_batch(16)
    assert mem.sample(16, out=buf) is buf
    check_nstep_rows(buf, streams, cap, window, n_step)


def test_nstep_add_errors_and_defaults() -> None:
    rng = np.random.default_rng(3)
    mem = ReplayMemory(60, 1, frame_shape=SHAPE, n_step=3, priority_alpha=0.5)
    f = np.stack([frame_id(0, t, rng) for t in range(10)])
    z = np.zeros(10, bool)
    for bad in ({"horizons": np.full(10, 4)}, {"horizons": np.zeros(10)}, {"returns": np.zeros(9)},
                {"priorities": -np.ones(10)}, {"priorities": np.full(10, np.nan)}, {"dones": z[:3]}):
        with pytest.raises(ValueError):
            mem.add(0, f, np.zeros(10), np.ones(10), z, **bad)
    assert len(mem) == 0 and mem.priority_total == 0
    mem.add(0, f, np.zeros(10), np.arange(10), z)  # defaults: G = reward, m = 1, done = terminal
    b = mem.gather(np.arange(9))
    assert np.array_equal(b.reward, np.arange(9)) and (b.horizon == 1).all() and not b.terminal.any()
    assert np.array_equal(decode(b.state1[:, -1]), np.arange(1, 10))
    for kwargs in ({"n_step": 0}, {"n_step": 11}, {"priority_alpha": -1.0}):
        with pytest.raises(ValueError):
            ReplayMemory(60, 1, frame_shape=SHAPE, **kwargs)
    with pytest.raises(ValueError):
        ReplayMemory(8, 1, frame_shape=SHAPE, n_step=4)  # fewer than window + n_step + 1 entries


# --- 10. persistence ----------------------------------------------------------------------------
def npz_round_trip(state: dict) -> dict:
    buf = io.BytesIO()
    np.savez(buf, **state)
    buf.seek(0)
    with np.load(buf) as data:
        return {k: data[k] for k in data.files}


def test_state_dict_round_trip_prioritized_nstep() -> None:
    rng = np.random.default_rng(41)
    cap, n_step, alpha = 40, 3, 0.6
    streams = [make_nstep_stream(rng, 90, n_step, s) for s in range(2)]

    def fresh(**kw: Any) -> ReplayMemory:
        return ReplayMemory(2 * cap, 2, frame_shape=SHAPE, seed=5, **{"n_step": n_step, "priority_alpha": alpha, **kw})

    mem = fresh()
    for s, data in enumerate(streams):
        mem.add_chunks(nstep_chunks(data, s, rng))  # wraps each ring twice
    b = mem.sample(32)
    mem.update_priorities(b.indices, b.keys, np.full(32, 7.0))  # the largest priority: the default next
    loaded = fresh()
    loaded.load_state_dict(npz_round_trip(mem.state_dict()))
    everything = np.arange(2 * cap)
    assert np.array_equal(loaded.priorities(everything), mem.priorities(everything))
    assert loaded.priority_total == mem.priority_total and loaded.counters() == mem.counters()
    valid = np.flatnonzero(mem.valid(everything))
    assert len(valid) > 20 and np.array_equal(loaded.valid(everything), mem.valid(everything))
    for x, y in zip(loaded.gather(valid), mem.gather(valid), strict=True):
        assert np.array_equal(x, y)
    extra = {**nstep_chunks(streams[0], 0, rng)[0], "priorities": None, "new_segment": True}
    for m in (mem, loaded):
        m.add_chunk(extra)
    assert np.array_equal(loaded.priorities(everything), mem.priorities(everything))
    assert np.isclose(loaded.priorities([len(extra["actions"]) - 1 + (90 % cap)])[0], (7 + 1e-6) ** alpha)

    with pytest.raises(ValueError):
        fresh(n_step=2).load_state_dict(mem.state_dict())  # stored horizons reach 3
    with pytest.raises(ValueError):
        ReplayMemory(2 * cap + 2, 2, frame_shape=SHAPE, n_step=n_step).load_state_dict(mem.state_dict())


def test_loads_a_save_from_before_nstep_storage() -> None:
    """A pre-n-step save (rewards and terminals arrays) loads with horizon 1; into a prioritized
    memory every live entry but terminal observations gets priority 1."""
    rng = np.random.default_rng(43)
    data = make_stream(rng, 120)
    mem = ReplayMemory(100, 1, frame_shape=SHAPE, seed=0)
    mem.add_chunks(chunks_of(data, 0, rng))
    old = {k: v for k, v in mem.state_dict().items() if k not in ("returns", "horizons", "n_step")}
    old["rewards"] = mem._returns.copy()
    old["terminals"] = (mem._flags & 8) != 0
    old["flags"] = mem._flags & 7
    for kw in ({}, {"priority_alpha": 0.5, "n_step": 2}):
        loaded = ReplayMemory(100, 1, frame_shape=SHAPE, **kw)
        loaded.load_state_dict(old)
        valid = np.flatnonzero(mem.valid(np.arange(100)))
        for x, y in zip(loaded.gather(valid), mem.gather(valid), strict=True):
            assert np.array_equal(x, y)
    lo = 20  # 120 entries in a ring of 100
    assert np.array_equal(loaded.priorities(np.arange(100)), (~data["is_x"][lo + (np.arange(100) - lo) % 100]) * 1.0)


def test_replay_server_prioritized_without_ray() -> None:
    from replay.server import ReplayServer

    rng = np.random.default_rng(44)
    server = ReplayServer(200, 2, frame_shape=SHAPE, seed=0, n_step=2, priority_alpha=0.6)
    for s in range(2):
        server.add_chunks(nstep_chunks(make_nstep_stream(rng, 60, 2, s), s, rng))
    batches = server.sample_packed(16, 2, beta=1.0)
    assert len(batches) == 2 and batches[0].frames.shape == (16, 6, *SHAPE)
    assert batches[0].weight.min() < 1
    server.update_priorities(batches[0].indices, batches[0].keys, np.zeros(16))
    assert np.allclose(server.memory.priorities(batches[0].indices), 1e-6 ** 0.6)
    assert server.sample(8, beta=0.0)[0].weight.tolist() == [1.0] * 8
