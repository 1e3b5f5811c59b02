"""Replay ceiling: the real replay actor under many explorer streams and a learner-side sampler.

The replay actor is built by distributed.topology as launch.py builds it (apex settings: 3-step
returns, proportional priorities). Synthetic explorers push what actors/explorer.py pushes every
--weight-sync-every agent steps (one chunk per emulator, made by the explorer's own stream buffers:
frames, actions, n-step returns, horizons, dones, priorities), at --stream-rate agent steps/s per
stream and at most 2 pushes in flight per explorer, as explorers do. The chunks are built and
put in the object store once, and their refs are resent: a few writer processes with many calls in
flight cost far less CPU than the replay (their share is printed). A learner-side client asks for
batches of --batch as learner/learner.py does (4 per call, 3 calls in flight, priorities back
every 4 batches) at --learner-rate batches/s. The streams grow until the replay saturates; the
last rows push unpaced (the ceiling) and sample alone, unpaced.

On a 2-core machine the replay gets one core to itself (pinned) and everything else (writers,
learner client, Ray's own processes, this driver) shares the other.

    ./dqn python bench/replay_ceiling.py                  # about 2 minutes
    ./dqn python bench/replay_ceiling.py --json docs/bench/replay_ceiling.json
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402

APEX_INSERT = 12_500  # agent steps/s inserted into one replay (Horgan et al. 2018)
APEX_BATCHES = 19  # batches of 512 sampled per second by its learner
TARGET_INSERT = 4 * APEX_INSERT
RUN_MARK = "DQN_REPLAY_CEILING_RUN"  # every process of this run inherits it: CPU by role from /proc


def explorer_pushes(cfg: Any, first_stream: int, per_stream: int, variants: int, rng: np.random.Generator,
                    frames: np.ndarray) -> list[list[dict]]:
    """``1 + variants`` pushes of one explorer, each a list of one chunk per emulator stream made by
    the explorer's own buffers (actors.explorer._Stream): the first starts the streams' segments,
    the others are resent in turn. Episodes end about every 400 steps (a terminal-observation entry)."""
    from actors.explorer import _Stream

    streams = [_Stream(None) for _ in range(cfg.envs_per_actor)]
    pushes = []
    for _ in range(1 + variants):
        chunks = []
        for j, buf in enumerate(streams):
            while len(buf.frames) < per_stream + cfg.n_step - 1:  # n - 1 entries wait for the next push
                q = rng.normal(size=4).astype(np.float32)
                terminal = bool(rng.random() < 1 / 400)
                buf.record(frames[rng.integers(len(frames))], int(rng.integers(4)), float(rng.random() < 0.05),
                           terminal, q)
                if terminal:
                    buf.record(frames[rng.integers(len(frames))], 0, 0.0, False)
            chunks.append(buf.take_chunk(first_stream + j, cfg, float(rng.normal())))
        pushes.append(chunks)
    return pushes


class SyntheticExplorers:
    """Several explorers' pushes from one process: prebuilt chunks, put once, refs resent."""

    def __init__(self, replay: Any, cfg: Any, explorers: list[int], variants: int, seed: int) -> None:
        import ray

        rng = np.random.default_rng(seed)
        frames = rng.integers(0, 256, (64, 84, 84), dtype=np.uint8)
        per_stream = cfg.weight_sync_every // cfg.envs_per_actor
        self.replay, self.per_stream, self.steps = replay, per_stream, per_stream * cfg.envs_per_actor
        self.pushes = [[ray.put(p) for p in explorer_pushes(cfg, e * cfg.envs_per_actor, per_stream, variants,
                                                            rng, frames)] for e in explorers]
        self.sent = [0] * len(explorers)

    def pid(self) -> int:
        return os.getpid()

    def _next(self, e: int) -> Any:
        k = self.sent[e]
        self.sent[e] += 1
        return self.pushes[e][0 if k == 0 else 1 + (k - 1) % (len(self.pushes[e]) - 1)]

    def run(self, active: int, rate: float, seconds: float) -> dict:
        """Push for ``seconds`` from the first ``active`` explorers, each ``rate`` agent steps/s per
        stream (0: as fast as the replay takes them), at most MAX_PUSHES_IN_FLIGHT in flight each."""
        import ray

        from actors.explorer import MAX_PUSHES_IN_FLIGHT

        period = self.per_stream / rate if rate > 0 else 0.0  # seconds between one explorer's pushes
        c0, t0 = time.process_time(), time.time()
        due = [t0 + period * i / max(1, active) for i in range(active)]  # staggered starts
        inflight: dict[Any, tuple[int, float]] = {}
        per_explorer = [0] * active
        done_steps, latencies = 0, []
        while True:
            now = time.time()
            if now - t0 >= seconds:
                break
            for e in range(active):
                if due[e] <= now and per_explorer[e] < MAX_PUSHES_IN_FLIGHT:
                    inflight[self.replay.add_chunks.remote(self._next(e))] = (e, now)
                    per_explorer[e] += 1
                    due[e] = max(due[e] + period, now - period)  # a blocked explorer catches up one push at most
            waiting = [due[e] for e in range(active) if per_explorer[e] < MAX_PUSHES_IN_FLIGHT]
            timeout = max(0.0, min(waiting, default=now + 0.05) - time.time())
            if inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1, timeout=timeout, fetch_local=False)
                if ready:
                    ready, _ = ray.wait(list(inflight), num_returns=len(inflight), timeout=0, fetch_local=False)
                t = time.time()
                for ref in ready:
                    e, sent = inflight.pop(ref)
                    per_explorer[e] -= 1
                    done_steps += self.steps
                    latencies.append((t, t - sent))
            else:
                time.sleep(timeout)
        if inflight:
            ray.wait(list(inflight), num_returns=len(inflight), timeout=30)
        return {"steps": done_steps, "latencies": latencies, "cpu_s": time.process_time() - c0}


class LearnerClient:
    """The learner's side of the replay (learner/learner.py) without the network: ``sample_for_learner``
    calls of BATCHES_PER_REQUEST batches with PREFETCH + 1 in flight, each batch "trained" for
    1/``rate`` s, and every BATCHES_PER_REQUEST batches their priorities go back in one call."""

    def __init__(self, replay: Any, seed: int) -> None:
        self.replay, self.rng = replay, np.random.default_rng(seed)

    def pid(self) -> int:
        return os.getpid()

    def run(self, rate: float, batch: int, seconds: float, beta: float) -> dict:
        import ray

        from learner.learner import BATCHES_PER_REQUEST, PREFETCH

        c0, t0 = time.process_time(), time.time()
        pending: dict[Any, float] = {}  # call -> issued
        done: list[tuple[Any, float, float]] = []  # (call, issued, completed): drawn, not trained on yet
        calls: list[tuple[float, float, int]] = []  # (completed, latency, batches)
        held: list[tuple[np.ndarray, np.ndarray]] = []
        next_use = t0  # when the "learner" is free for its next batches
        while time.time() - t0 < seconds:
            while len(pending) + len(done) < PREFETCH + 1:
                pending[self.replay.sample_for_learner.remote(batch, BATCHES_PER_REQUEST, beta)] = time.time()
            now = time.time()
            if done and now >= next_use:
                ref, issued, completed = done.pop(0)
                _, batches = ray.get(ref)
                calls.append((completed, completed - issued, len(batches or [])))
                for b in batches or []:
                    held.append((b.indices, b.keys))
                    if len(held) == BATCHES_PER_REQUEST:
                        idx, keys = (np.concatenate(parts) for parts in zip(*held, strict=True))
                        self.replay.update_priorities.remote(idx, keys, np.abs(self.rng.normal(size=len(idx))))
                        held = []
                del batches
                next_use = max(next_use, now) + (BATCHES_PER_REQUEST / rate if rate > 0 else 0.0)
                continue
            timeout = max(0.0, min(next_use if done else t0 + seconds, t0 + seconds) - now)
            if not pending:
                time.sleep(timeout)
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=timeout, fetch_local=False)
            t = time.time()
            for ref in ready:
                done.append((ref, pending.pop(ref), t))
        for ref, issued, completed in done:  # drawn in time, not trained on yet: served all the same
            calls.append((completed, completed - issued, len(ray.get(ref)[1] or [])))
        if pending:
            ray.wait(list(pending), num_returns=len(pending), timeout=60)
        return {"calls": calls, "cpu_s": time.process_time() - c0}


# --- the driver ------------------------------------------------------------------------------------
def pin_process(pid: int, cores: set[int]) -> None:
    """Every thread of ``pid`` onto ``cores`` (sched_setaffinity on a pid moves only its main thread)."""
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            os.sched_setaffinity(int(tid), cores)
        except OSError:  # a thread that just ended
            pass


def profiler(pid: int, path: str | None) -> subprocess.Popen | None:
    """py-spy sampling ``pid`` until SIGINT, without pausing it (--nonblocking), or None."""
    if not path:
        return None
    exe = shutil.which("py-spy") or os.path.join(os.path.dirname(sys.executable), "py-spy")
    if not os.path.exists(exe):
        sys.exit("error: --profile needs py-spy (pip install py-spy)")
    return subprocess.Popen([exe, "record", "--pid", str(pid), "--format", "raw", "--nonblocking",
                             "--rate", "200", "--output", path], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def percentile(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) if values else float("nan")


def measure(ray: Any, replay: Any, writers: list[Any], client: Any, level: dict, args: Any) -> dict:
    """One row: the writers push (``level``'s streams and rate) while the client samples; the
    figures are taken over ``--seconds`` after ``--warmup``."""
    explorers = level["streams"] // args.envs_per_actor
    share = [explorers // len(writers) + (i < explorers % len(writers)) for i in range(len(writers))]
    span = args.warmup + args.seconds + 1.0  # a second past the window: its edges see steady traffic
    runs = [w.run.remote(n, level["rate"], span) for w, n in zip(writers, share, strict=True) if n]
    sampler = client.run.remote(level["learner_rate"], args.batch, span, 0.4)
    time.sleep(args.warmup)
    t0, added0 = time.time(), ray.get(replay.counters.remote())["added"]
    cpu = common.cpu_by_role(RUN_MARK, os.environ[RUN_MARK], args.seconds)
    t1, added1 = time.time(), ray.get(replay.counters.remote())["added"]
    pushed, sampled = ray.get(runs), ray.get(sampler)
    window = [c for c in sampled["calls"] if t0 <= c[0] <= t1]
    adds = [lat for r in pushed for t, lat in r["latencies"] if t0 <= t <= t1]
    row = {
        "streams": level["streams"], "stream_rate": level["rate"], "learner_rate": level["learner_rate"],
        "offered_steps_s": level["streams"] * level["rate"] if level["rate"] else None,
        "inserted_steps_s": (added1 - added0) / (t1 - t0),
        "batches_s": sum(c[2] for c in window) / (t1 - t0),
        "sample_ms_median": 1e3 * percentile([c[1] for c in window], 50),
        "sample_ms_p99": 1e3 * percentile([c[1] for c in window], 99),
        "add_ms_median": 1e3 * percentile(adds, 50), "add_ms_p99": 1e3 * percentile(adds, 99),
        "cpu": cpu,
    }
    row["saturated"] = bool((row["offered_steps_s"] and row["inserted_steps_s"] < 0.95 * row["offered_steps_s"])
                            or (level["learner_rate"] and row["batches_s"] < 0.95 * level["learner_rate"]))
    return row


def print_row(row: dict) -> None:
    cpu = row["cpu"]
    offered = f"{row['offered_steps_s']:>7,.0f}" if row["offered_steps_s"] else "unpaced"
    wanted = f"{row['learner_rate']:>4.0f}" if row["learner_rate"] else " max"
    print(f"{row['streams']:>7} {offered} {row['inserted_steps_s']:>9,.0f} {wanted} {row['batches_s']:>6.1f} "
          f"{row['sample_ms_median']:>7.1f} {row['sample_ms_p99']:>7.1f} {row['add_ms_median']:>6.1f} "
          f"{row['add_ms_p99']:>7.1f} {cpu.get('replay', 0):>6.2f} {cpu.get('writers', 0):>7.2f} "
          f"{cpu.get('learner client', 0):>6.2f} {cpu.get('Ray (raylet, GCS, ...)', 0):>5.2f}"
          f"{'  saturated' if row['saturated'] else ''}", flush=True)


def main(argv: list[str] | None = None) -> None:
    from config import Config, apply_preset

    p = common.parser(__doc__)
    p.add_argument("--streams", default="16,32,64,128,256",
                   help="emulator streams per row, multiples of --envs-per-actor (default: %(default)s)")
    p.add_argument("--stream-rate", type=float, default=250.0,
                   help="agent steps/s each stream offers (> 0; default: %(default)s: 256 streams offer 64,000)")
    p.add_argument("--learner-rate", type=float, default=APEX_BATCHES + 1,
                   help="batches/s the learner client asks for while the writers push (> 0; default: "
                        "%(default)s, one more than Ape-X's 19, so that serving >= 19 is measured)")
    p.add_argument("--batch", type=int, default=512, help="transitions per batch (default: %(default)s)")
    p.add_argument("--capacity", type=int, default=250_000,
                   help="replay capacity in transitions, filled before the first row (about 7 KB each; "
                        "default: %(default)s)")
    p.add_argument("--envs-per-actor", type=int, default=8, help="streams per explorer push (default: %(default)s)")
    p.add_argument("--weight-sync-every", type=int, default=400,
                   help="agent steps per explorer push, over its streams (default: %(default)s)")
    p.add_argument("--writers", type=int, default=2, help="writer processes (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before each row's window (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=10.0, help="seconds measured per row (default: %(default)s)")
    p.add_argument("--profile", metavar="PATH",
                   help="record the replay process with py-spy over all rows (collapsed stacks, --nonblocking)")
    p.add_argument("--no-pin", action="store_true",
                   help="do not pin the replay to core 0 and everything else to the other cores")
    args = common.parse(p, argv)
    try:
        levels = [int(s) for s in args.streams.split(",")]
    except ValueError:
        levels = []
    if not levels or any(n < args.envs_per_actor or n % args.envs_per_actor for n in levels) \
            or min(args.stream_rate, args.learner_rate, args.batch, args.writers, args.seconds) <= 0 \
            or args.warmup < 0 or args.capacity < 16 * max(levels):
        sys.exit("error: --streams must be a comma-separated list of multiples of --envs-per-actor; --stream-rate, "
                 "--learner-rate, --batch, --writers and --seconds positive; --capacity at least 16 per stream")

    cfg = apply_preset(Config(preset="apex", num_actors=max(levels) // args.envs_per_actor,
                              envs_per_actor=args.envs_per_actor, weight_sync_every=args.weight_sync_every,
                              seed=args.seed), set())
    cores = sorted(os.sched_getaffinity(0))
    pinned = not args.no_pin and len(cores) >= 2
    if pinned:
        os.sched_setaffinity(0, set(cores[1:]))  # Ray's processes, started next, inherit this
    os.environ[RUN_MARK] = uuid.uuid4().hex
    info = common.machine()
    common.print_machine(info)
    with common.ray_session(num_cpus=len(cores)) as ray:
        from distributed.topology import replay_actor

        replay = replay_actor(args.capacity, cfg.num_streams, seed=args.seed, n_step=cfg.n_step,
                              priority_alpha=cfg.priority_alpha if cfg.prioritized else None)
        replay_pid = ray.get(replay.__ray_call__.remote(lambda self: os.getpid()))
        if pinned:
            pin_process(replay_pid, {cores[0]})
        remote = ray.remote(num_cpus=0)
        ids = list(range(cfg.num_actors))
        writers = [remote(SyntheticExplorers).remote(replay, cfg, ids[w::args.writers], 4, args.seed + w)
                   for w in range(args.writers)]
        client = remote(LearnerClient).remote(replay, args.seed)
        ray.get([w.pid.remote() for w in writers] + [client.pid.remote()])
        print(f"replay: capacity {args.capacity:,}, {cfg.num_streams} streams, n-step {cfg.n_step}, "
              f"prioritized (alpha {cfg.priority_alpha}); "
              + (f"pinned to core {cores[0]}, the rest on {cores[1:]}" if pinned else "not pinned"), flush=True)
        t = time.time()
        while ray.get(replay.size.remote()) < args.capacity * 0.98:  # fill: the rings wrap from here on
            ray.get([w.run.remote(cfg.num_actors // args.writers, 0.0, 2.0) for w in writers])
        print(f"filled in {time.time() - t:.0f} s; each row: {args.warmup:.0f} s warm-up, {args.seconds:.0f} s "
              f"measured; sample latency per call of 4 batches of {args.batch}", flush=True)
        print(" streams offered  inserted want batch/s smp_med smp_p99 add_med add_p99 replay writers client   Ray")
        print("         steps/s   steps/s                   ms      ms      ms      ms  cores   cores  cores cores")
        spy = profiler(replay_pid, args.profile)
        rows = []
        for n in levels:
            rows.append(measure(ray, replay, writers, client,
                                {"streams": n, "rate": args.stream_rate, "learner_rate": args.learner_rate}, args))
            print_row(rows[-1])
        for level in ({"streams": max(levels), "rate": 0.0, "learner_rate": args.learner_rate},
                      {"streams": 0, "rate": 0.0, "learner_rate": 0.0}):
            rows.append(measure(ray, replay, writers, client, level, args))
            print_row(rows[-1])
        if spy:
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            print(f"py-spy profile of the replay written to {args.profile}")
    report(rows, args, info)


def report(rows: list[dict], args: Any, info: dict) -> None:
    ceiling = rows[-2]
    ok = ceiling["inserted_steps_s"] >= TARGET_INSERT and ceiling["batches_s"] >= APEX_BATCHES
    writers = max(r["cpu"].get("writers", 0.0) for r in rows)
    print(f"ceiling (unpaced writers, learner at {args.learner_rate:g} batches/s): "
          f"{ceiling['inserted_steps_s']:,.0f} agent steps/s inserted, {ceiling['batches_s']:.1f} batches/s = "
          f"{ceiling['inserted_steps_s'] / APEX_INSERT:.2f}x Ape-X's {APEX_INSERT:,} inserted; target "
          f">= {TARGET_INSERT:,} with >= {APEX_BATCHES} batches/s: {common.verdict(ok)}")
    print(f"sampling alone, unpaced: {rows[-1]['batches_s']:.1f} batches of {args.batch}/s; the writers used at "
          f"most {writers:.2f} of a core")
    print(f"load at end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    common.write_json(args.json, {"machine": info, "args": vars(args), "rows": rows,
                                  "load_at_end": os.getloadavg(),
                                  "ceiling": {"inserted_steps_s": ceiling["inserted_steps_s"],
                                              "batches_s": ceiling["batches_s"], "target_met": ok}})


if __name__ == "__main__":
    main()
