"""Replay memory benchmark: add rate, sampling latency, footprint, against the project's targets.

Targets: 1M transitions in under 8 GB; in-process sampling of a batch of 32 under 1 ms.

    ./dqn bench/replay.py                 # about 10 s
    ./dqn bench/replay.py --ray           # also through the Ray actor (starts a local Ray)
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402
from replay.memory import ReplayMemory, tune_malloc  # noqa: E402

FOOTPRINT_TARGET = 8e9
SAMPLE_TARGET_S = 1e-3


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def median_seconds(fn: Callable[[], object], repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def make_chunks(rng: np.random.Generator, pool: np.ndarray, streams: int, chunk: int, step: int) -> list[dict]:
    """One chunk per stream, as an explorer pushes them (episodes end about every 400 steps)."""
    out = []
    for s in range(streams):
        start = (step + s * chunk) % (len(pool) - chunk)
        out.append({
            "stream": s,
            "frames": pool[start:start + chunk],
            "actions": rng.integers(0, 4, chunk, dtype=np.uint8),
            "rewards": rng.integers(0, 2, chunk).astype(np.float32),
            "terminals": rng.random(chunk) < 1 / 400,
            "new_segment": step == 0,
        })
    return out


def main(argv: list[str] | None = None) -> None:
    p = common.parser(__doc__)
    p.add_argument("--capacity", type=int, default=100_000, help="transitions held (default: %(default)s)")
    p.add_argument("--streams", type=int, default=8, help="emulator streams (default: %(default)s)")
    p.add_argument("--chunk", type=int, default=50, help="transitions per chunk per stream (default: %(default)s)")
    p.add_argument("--fill", type=float, default=1.2,
                   help="transitions added, as a multiple of --capacity (>1 exercises eviction; default: %(default)s)")
    p.add_argument("--repeats", type=int, default=2000, help="sample calls timed at batch 32 (default: %(default)s)")
    p.add_argument("--big-repeats", type=int, default=100,
                   help="sample calls timed at batch 512 (default: %(default)s)")
    p.add_argument("--no-tune-malloc", action="store_true",
                   help="keep glibc's default trim threshold (shows the page-fault cost of fresh batch arrays)")
    p.add_argument("--ray", action="store_true", help="also time add_chunks / sample through the Ray actor")
    args = common.parse(p, argv, json_path=False)

    tuned = False if args.no_tune_malloc else tune_malloc()
    rng = np.random.default_rng(args.seed)
    per_t = ReplayMemory.bytes_per_transition()
    est = ReplayMemory.estimate_nbytes(1_000_000, args.streams)
    print(f"bytes per transition          {per_t:,} (one 84x84 frame + 8 bytes)")
    print(f"footprint of 1M transitions   {est / 1e9:.3f} GB   target < 8 GB   {verdict(est < FOOTPRINT_TARGET)}")

    mem = ReplayMemory(args.capacity, args.streams, seed=args.seed)
    pool = rng.integers(0, 256, (4096, 84, 84), dtype=np.uint8)
    total = int(args.capacity * args.fill)
    batches = [make_chunks(rng, pool, args.streams, args.chunk, i) for i in range(8)]  # reused inputs
    t0 = time.perf_counter()
    added, i = 0, 0
    while added < total:
        mem.add_chunks(batches[i % 8] if i else make_chunks(rng, pool, args.streams, args.chunk, 0))
        added += args.streams * args.chunk
        i += 1
    add_s = time.perf_counter() - t0
    c = mem.counters()
    print(f"add rate                      {added / add_s:,.0f} transitions/s "
          f"({args.streams} streams x {args.chunk}-transition chunks; size {c['size']:,}, evicted {c['evicted']:,})")
    print(f"this memory                   {mem.nbytes / 1e9:.3f} GB for {mem.capacity:,} transitions")

    note = "" if tuned else " (malloc not tuned)"
    for batch, repeats in ((32, args.repeats), (512, args.big_repeats)):
        mem.sample(batch)  # warm-up
        fresh = median_seconds(lambda b=batch: mem.sample(b), repeats)
        out = mem.empty_batch(batch)
        reuse = median_seconds(lambda b=batch, o=out: mem.sample(b, out=o), repeats)
        target = f"   target < 1 ms   {verdict(fresh < SAMPLE_TARGET_S)}" if batch == 32 else ""
        print(f"sample batch {batch:<4} (in-process) {fresh * 1e3:7.3f} ms median, new arrays{note}; "
              f"{reuse * 1e3:.3f} ms into reused out= buffers{target}")

    if args.ray:
        bench_ray(args, rng, pool)


def bench_ray(args: argparse.Namespace, rng: np.random.Generator, pool: np.ndarray) -> None:
    from distributed.topology import replay_actor

    with common.ray_session(num_cpus=2, quiet=False) as ray:
        actor = replay_actor(args.capacity, args.streams, seed=args.seed)
        chunks = make_chunks(rng, pool, args.streams, args.chunk, 0)
        ray.get(actor.add_chunks.remote(chunks))
        n = args.streams * args.chunk
        add = median_seconds(lambda: ray.get(actor.add_chunks.remote(chunks)), 50)
        print(f"ray add_chunks                {add * 1e3:7.3f} ms per call of {n} transitions "
              f"({n / add:,.0f} transitions/s, one pusher)")
        for batch, k in ((32, 1), (32, 8), (512, 1)):
            ray.get(actor.sample.remote(batch, k))
            lat = median_seconds(lambda b=batch, kk=k: ray.get(actor.sample.remote(b, kk)), 50)
            print(f"ray sample {batch} x {k} batches      {lat * 1e3:7.3f} ms per call "
                  f"({lat / k * 1e3:.3f} ms per batch)")

if __name__ == "__main__":
    main()
