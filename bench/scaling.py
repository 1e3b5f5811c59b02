"""Acting throughput against the number of explorers on a local Ray: real Explorer actors pushing
into the real replay actor (replay.server.ReplayServer), no learner.

Each explorer is the product's ``actors.explorer.Explorer`` as launch.py creates it (a Ray actor made by
``distributed.topology``; it takes a CPU share of min(1, CPUs / explorers)), with --envs emulators and runs of
--sync-every agent steps; before every run it gets a new weights version through the object
store, as under launch.py. An explorer's throughput is its agent steps between its first and last
completed run inside the measuring window; the total is the sum over explorers. The raw emulator
(ale_py act() x4, one core) is measured in this process before Ray starts: the per-core reference.

Writes the scaling curve as a PNG (matplotlib, Agg) and the data as JSON.

    ./dqn bench/scaling.py                                  # about 2 minutes
    ./dqn bench/scaling.py --explorers 1,2,4,8 --seconds 30
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402


def explorer_config(n: int, args: argparse.Namespace):  # -> config.Config
    """The apex preset (launch.py's defaults from 8 explorers on) for ``n`` explorers with this run's sizes."""
    from config import Config, apply_preset

    return apply_preset(Config(preset="apex", num_actors=n, envs_per_actor=args.envs, weight_sync_every=args.sync_every,
                               seed=args.seed, replay_capacity=args.capacity), set())


def measure(ray, n: int, args: argparse.Namespace, replay, weights: list) -> dict:
    from distributed.topology import explorer_actors

    cpus = ray.cluster_resources().get("CPU", 1.0)
    cfg = explorer_config(n, args)
    share = min(1.0, cpus / n)
    explorers = explorer_actors(cfg, replay, generation=0, cpus=share)
    ray.get([e.flush.remote() for e in explorers])  # built (TF loaded, emulators reset)
    version = 0

    def weights_ref():
        nonlocal version
        version += 1
        return ray.put((version, weights))

    running = {e.run.remote(weights_ref(), args.sync_every): i for i, e in enumerate(explorers)}
    t0 = time.monotonic()
    w0, w1 = t0 + args.warmup, t0 + args.warmup + args.seconds
    first: dict[int, float] = {}
    last: dict[int, float] = {}
    steps = dict.fromkeys(range(n), 0)
    while True:
        ready, _ = ray.wait(list(running), num_returns=1)
        now = time.monotonic()
        i = running.pop(ready[0])
        report = ray.get(ready[0])
        if w0 <= now <= w1:
            if i in first:
                steps[i] += report["steps"]
                last[i] = now
            else:
                first[i] = now
        if now > w1 and not running:
            break
        if now <= w1:
            running[explorers[i].run.remote(weights_ref(), args.sync_every)] = i
    ray.get([e.flush.remote() for e in explorers])
    for e in explorers:
        ray.kill(e)
    per = {i: steps[i] / (last[i] - first[i]) for i in range(n) if i in last and last[i] > first[i]}
    if len(per) < n:
        raise RuntimeError(f"{n - len(per)} explorer(s) completed fewer than two runs in the window; "
                           "raise --seconds")
    return {"explorers": n, "cpu_share": share, "env_steps_per_s": sum(per.values()),
            "per_explorer": list(per.values())}


def plot(points: list[dict], raw: float, cores: int, path: str, envs: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    xs = [p["explorers"] for p in points]
    ys = [p["env_steps_per_s"] for p in points]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    ax.plot(xs, ys, "o-", label=f"explorers ({envs} emulators each), into the replay actor")
    ax.plot(xs, [raw * min(x, cores) for x in xs], "k--", label=f"raw ALE act() x4, {cores} core(s) max")
    if points and points[0]["explorers"] == 1:
        ax.plot(xs, [ys[0] * min(x, cores) for x in xs], ":", color="gray",
                label="linear from 1 explorer, capped at the cores")
    ax.axvline(cores, color="lightgray", lw=1)
    ax.set_xscale("log", base=2)
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.set_xlabel("explorers (Ray actors)")
    ax.set_ylabel("agent steps/s (4 frames each)")
    ax.set_ylim(bottom=0)
    ax.set_title(f"Acting throughput on a local Ray, {cores} cores (shared, noisy machine)", fontsize=9)
    ax.legend(fontsize=7, loc="center right")
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path)
    print(f"plot written to {path}")


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--explorers", default="1,2,4",
                   help="comma-separated explorer counts to measure (default: %(default)s)")
    p.add_argument("--envs", type=int, default=8, help="emulators per explorer (default: %(default)s)")
    p.add_argument("--sync-every", type=int, default=400,
                   help="agent steps per run call, launch.py's --weight-sync-every (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=20.0,
                   help="measuring window per explorer count (default: %(default)s)")
    p.add_argument("--warmup", type=float, default=5.0,
                   help="seconds of acting before the window opens (default: %(default)s)")
    p.add_argument("--capacity", type=int, default=50_000,
                   help="replay capacity in transitions (default: %(default)s)")
    p.add_argument("--num-cpus", type=int, default=0,
                   help="CPUs of the local Ray; 0: this machine's cores (default: %(default)s)")
    p.add_argument("--raw-seconds", type=float, default=3.0,
                   help="seconds of the raw-emulator reference, one core (default: %(default)s)")
    p.add_argument("--plot", default="runs/bench/scaling.png",
                   help="where the PNG goes; docs/scaling.png is the committed one (default: %(default)s)")
    args = common.parse(p, argv, json_path="runs/bench/scaling.json")

    m = common.machine()
    common.print_machine(m)
    cores = args.num_cpus or os.cpu_count() or 1
    common.pin([0])
    ale = common.ale_direct(args.seed)
    ale(0.3)
    raw_wall, raw = ale(args.raw_seconds)  # the per-CPU-second rate: what one core gives
    os.sched_setaffinity(0, range(os.cpu_count() or 1))
    print(f"raw ALE act() x4 on one core: {raw:,.0f} steps per CPU second ({raw_wall:,.0f} per wall second); "
          f"{cores} cores: at most {raw * cores:,.0f}")

    from core.network import build_q_network
    from distributed.topology import replay_actor

    counts = [int(x) for x in args.explorers.split(",")]
    cfg = explorer_config(max(counts), args)
    weights = build_q_network(4, dueling=cfg.dueling).get_weights()
    points = []
    with common.ray_session(num_cpus=cores) as ray:
        replay = replay_actor(args.capacity, cfg.num_streams, seed=args.seed, n_step=cfg.n_step,
                              priority_alpha=cfg.priority_alpha if cfg.prioritized else None)
        for n in counts:
            r = measure(ray, n, args, replay, weights)
            r["ratio_to_raw_one_core"] = r["env_steps_per_s"] / raw
            r["ratio_to_raw_all_cores"] = r["env_steps_per_s"] / (raw * min(n, cores))
            r["per_core"] = r["env_steps_per_s"] / min(n, cores)
            points.append(r)
            print(f"{n} explorer(s) x {args.envs} emulators: {r['env_steps_per_s']:8,.0f} env steps/s "
                  f"(per explorer {', '.join(f'{x:,.0f}' for x in r['per_explorer'])}) = "
                  f"{r['ratio_to_raw_one_core']:.2f} x raw ALE on one core, "
                  f"{r['ratio_to_raw_all_cores']:.2f} x raw on the {min(n, cores)} core(s) in use", flush=True)
        counters = ray.get(replay.counters.remote())
    base = points[0]["env_steps_per_s"]
    for r in points:
        r["speedup_vs_first"] = r["env_steps_per_s"] / base
    ideal = ", ".join(f"{min(r['explorers'], cores) / min(counts[0], cores):.0f}x" for r in points)
    print("scaling: " + ", ".join(f"{r['explorers']}: {r['speedup_vs_first']:.2f}x" for r in points)
          + f" (ideal on {cores} cores: {ideal})")
    two = [r for r in points if r["explorers"] == min(cores, max(counts))]
    if two and points[0]["explorers"] == 1:
        eff = two[0]["speedup_vs_first"] / min(cores, max(counts))
        ok = eff >= 0.8
        print(f"check (no project target): {two[0]['explorers']} explorers on {cores} cores >= 80% of linear "
              f"scaling from one: {eff:.0%}  {common.verdict(ok)}")
    else:
        eff, ok = None, None
    if args.plot:
        plot(points, raw, cores, args.plot, args.envs)
    result = {"machine": m, "args": vars(args), "raw_ale_one_core": raw, "raw_ale_one_core_wall": raw_wall,
              "points": points,
              "replay_counters": counters, "scaling_efficiency_at_cores": eff, "pass": ok,
              "method": "real Explorer Ray actors pushing into the real ReplayServer actor; no learner"}
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
