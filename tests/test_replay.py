"""replay/: ReplayMemory against keras-rl's SequentialMemory, sampling, eviction, segments, footprint, Ray."""

from __future__ import annotations

import time

import numpy as np
import pytest

import kerasrl_compat

kerasrl_compat.prepare_rl()
from rl.memory import SequentialMemory  # noqa: E402

from replay.memory import Batch, ReplayMemory  # noqa: E402

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
    )


def assert_same(ours: Batch, ref: Batch) -> None:
    for name in ("state0", "action", "reward", "terminal", "state1"):
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
    assert time.perf_counter() - t0 < 2.0
    assert mem.nbytes < 8e9
    assert mem.nbytes == ReplayMemory.estimate_nbytes(1_000_000, 16)
    assert mem.counters()["capacity"] == 1_000_000
    del mem


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
