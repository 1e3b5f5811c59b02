"""replay/: the replay's exact behaviour pinned, so that speed work cannot change what a run learns from.

A scripted sequence of explorer pushes (made by the real ``actors.explorer`` stream buffers, so the
chunks have the explorer's dtypes, n-step returns, cuts and segments), learner samples, priority
updates (some stale), gathers and eviction runs through :class:`replay.server.ReplayServer` and a
uniform :class:`replay.memory.ReplayMemory`. Every output is reduced to a SHA-256 per field and
compared with ``tests/data/replay_pinned.json``, which was recorded from the replay code as of
commit 9117f07 (before the replay-ceiling optimisations). A mismatch names the step and field.

Regenerate the file (``./dqn python tests/test_replay_pinned.py --write``) only for a change that is
*meant* to alter what the replay stores or samples; a learning series depends on it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from actors.explorer import _Stream  # noqa: E402
from config import Config  # noqa: E402
from replay.memory import ReplayMemory  # noqa: E402
from replay.server import ReplayServer  # noqa: E402

GOLDEN = Path(__file__).resolve().parent / "data" / "replay_pinned.json"


def digest(value: Any) -> str:
    """SHA-256 of an output: arrays by dtype, shape and bytes; tuples field by field."""
    h = hashlib.sha256()
    if isinstance(value, tuple):  # Batch / PackedBatch
        for field in value:
            h.update(digest(field).encode())
    elif isinstance(value, np.ndarray | np.generic):
        a = np.ascontiguousarray(value)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    else:
        h.update(repr(value).encode())
    return h.hexdigest()[:16]


class Pusher:
    """Explorer-made chunks for ``streams`` streams: the explorer's own buffers (``_Stream``), with
    terminals, terminal-observation entries and step-limit cuts, and q-values for the priorities."""

    def __init__(self, rng: np.random.Generator, streams: int, shape: tuple[int, int], cfg: Config) -> None:
        self.rng, self.shape, self.cfg = rng, shape, cfg
        self.buffers = [_Stream(None) for _ in range(streams)]

    def chunks(self, which: list[int], steps: int) -> list[dict]:
        out = []
        for s in which:
            buf = self.buffers[s]
            for _ in range(steps):
                q = self.rng.normal(size=4).astype(np.float32)
                frame = self.rng.integers(0, 256, self.shape, dtype=np.uint8)
                terminal = bool(self.rng.random() < 0.04)
                buf.record(frame, int(self.rng.integers(0, 4)), float(self.rng.integers(0, 2)), terminal, q)
                if terminal:
                    buf.record(self.rng.integers(0, 256, self.shape, dtype=np.uint8), 0, 0.0, False)
            cut = bool(self.rng.random() < 0.05)
            chunk = buf.take_chunk(s, self.cfg, float(self.rng.normal()), cut=cut)
            if cut:
                buf.new_segment = True
            if s == 1 and chunk is not None and chunk["new_segment"] and len(out) == 0:
                chunk["new_segment"] = False  # a stream pushing into a restarted replay: UNKNOWN entries
            if chunk is not None:
                out.append(chunk)
        return out


def server_script(shape: tuple[int, int], capacity: int, streams: int, batch: int, rounds: int) -> list[dict]:
    """The replay actor's calls as the explorers and the learner make them (prioritized, 3-step)."""
    rng = np.random.default_rng(11)
    cfg = Config(num_actors=1, n_step=3, prioritized=True, gamma=0.99)
    server = ReplayServer(capacity, streams, seed=5, n_step=3, priority_alpha=0.6, frame_shape=shape)
    pusher = Pusher(rng, streams, shape, cfg)
    held: list[Any] = []  # batches whose priorities come back later (some after their slot is reused)
    log = []
    for r in range(rounds):
        which = sorted(rng.choice(streams, size=int(rng.integers(1, streams + 1)), replace=False).tolist())
        size = server.add_chunks(pusher.chunks(which, int(rng.integers(1, 40))))
        step: dict[str, Any] = {"size": size}
        _, batches = server.sample_for_learner(batch, 2, 0.4 + 0.01 * r)
        if batches is not None:
            for i, b in enumerate(batches):
                step[f"packed{i}"] = digest(b)
            held.extend(batches)
        if len(held) >= 4 and r % 3 == 0:
            old = held.pop(0)  # from several rounds ago: some keys are stale by now
            td = np.abs(rng.normal(size=len(old.indices))) * (1 + r % 5)
            server.update_priorities(old.indices, old.keys, td)
            step["old_priorities"] = digest(server.priorities(old.indices))
        if held:
            new = held.pop()
            server.update_priorities(new.indices, new.keys, np.abs(rng.normal(size=len(new.indices))))
        if r % 4 == 1 and server.memory.can_sample():
            step["batch"] = digest(server.sample(batch // 2, 1, 0.0 if r % 8 == 1 else 0.7)[0])
            valid = np.flatnonzero(server.memory.valid(np.arange(server.memory.capacity)))
            step["valid"] = digest(valid)
            if len(valid):
                step["gather"] = digest(server.gather(valid[:: max(1, len(valid) // 7)]))
        step["counters"] = digest(np.array(list(server.counters().values())))
        step["priority_total"] = repr(round(server.memory.priority_total, 9))
        log.append(step)
    step = {"state": {k: digest(v) for k, v in sorted(server.memory.state_dict().items())}}
    log.append(step)
    return log


def uniform_script() -> list[dict]:
    """The classic preset's replay: uniform, 1-step, sampled into reused buffers."""
    rng = np.random.default_rng(23)
    cfg = Config(num_actors=1, n_step=1, prioritized=False)
    mem = ReplayMemory(300, 3, frame_shape=(6, 6), seed=9)
    pusher = Pusher(rng, 3, (6, 6), cfg)
    out = mem.empty_batch(24)
    log = []
    for _ in range(50):
        mem.add_chunks(pusher.chunks([0, 1, 2], int(rng.integers(1, 30))))
        if mem.can_sample():
            log.append({"batch": digest(mem.sample(24, out=out)), "packed": digest(mem.sample_packed(8)),
                        "valid": mem.num_valid()})
    return log


def scripts() -> dict[str, list[dict]]:
    return {
        "prioritized_small": server_script((6, 6), 400, 5, 32, 80),
        "prioritized_84x84": server_script((84, 84), 3000, 16, 512, 24),
        "uniform": uniform_script(),
    }


def test_replay_outputs_match_the_pinned_record() -> None:
    expected = json.loads(GOLDEN.read_text())
    got = scripts()
    assert got.keys() == expected.keys()
    for name, steps in expected.items():
        assert len(got[name]) == len(steps), name
        for i, (want, have) in enumerate(zip(steps, got[name], strict=True)):
            assert have == want, f"{name}: step {i} differs: " + ", ".join(
                k for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k))


def test_the_record_covers_the_paths_it_pins() -> None:
    """The script exercises eviction, stale priority updates, unknown entries and both sample calls,
    so a change in any of them shows up in the record (a script that missed them would pin little)."""
    expected = json.loads(GOLDEN.read_text())
    small = expected["prioritized_small"]
    assert sum("packed0" in s for s in small) > 60 and sum("batch" in s for s in small) > 15
    assert sum("old_priorities" in s for s in small) > 15
    server = ReplayServer(400, 5, seed=5, n_step=3, priority_alpha=0.6, frame_shape=(6, 6))
    rng = np.random.default_rng(11)
    pusher = Pusher(rng, 5, (6, 6), Config(num_actors=1, n_step=3, prioritized=True))
    for _ in range(40):
        server.add_chunks(pusher.chunks(list(range(5)), 30))
    c = server.counters()
    assert c["evicted"] > c["capacity"]  # the rings wrapped more than once


def test_one_push_of_many_chunks_equals_the_chunks_one_at_a_time() -> None:
    """add_chunks writes the sum tree once per push: the tree (inner nodes included) and every array
    must equal adding the same chunks one by one, also when a push writes a slot twice (two chunks
    of one stream wrapping its ring) and when a bad chunk stops a push halfway."""
    rng = np.random.default_rng(4)
    cfg = Config(num_actors=1, n_step=3, prioritized=True)
    pusher = Pusher(rng, 3, (6, 6), cfg)
    pushes = [pusher.chunks([0, 1, 2], int(rng.integers(5, 30))) for _ in range(30)]
    first = pushes[-1][0]
    assert first["stream"] == 0
    pushes.append(pushes[-1] + [first] * (60 // len(first["frames"]) + 1))  # stream 0's ring (60) wraps in one push
    together = ReplayMemory(180, 3, frame_shape=(6, 6), seed=1, n_step=3, priority_alpha=0.6)
    apart = ReplayMemory(180, 3, frame_shape=(6, 6), seed=1, n_step=3, priority_alpha=0.6)
    bad = dict(pushes[0][0], horizons=np.full(len(pushes[0][0]["frames"]), 9, np.uint8))
    for i, push in enumerate(pushes):
        if i == 20:
            push = [*push[:2], bad, *push[2:]]
        try:
            together.add_chunks(push)
        except ValueError:
            assert i == 20
        for chunk in push:
            try:
                apart.add_chunk(chunk)
            except ValueError:
                assert chunk is bad
                break
        np.testing.assert_array_equal(together._tree._tree, apart._tree._tree)
    a, b = together.state_dict(), apart.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert together.counters()["evicted"] > 0
    assert together.priority_total > 0 and together.sample(64).indices.tolist() == apart.sample(64).indices.tolist()


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit("usage: tests/test_replay_pinned.py --write   (re-records the pinned outputs)")
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps(scripts(), indent=0, sort_keys=True) + "\n")
    print(f"wrote {GOLDEN}")
