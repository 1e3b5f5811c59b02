"""One explorer's acting throughput per core, against the raw emulator on the same core, same run.

The explorer is the product's ``actors.explorer.Explorer``, run in-process (not as a Ray actor)
and pinned to one core with one TensorFlow thread: K emulators with our preprocessing
(make_env(training=True)), one batched Q-network forward pass per step, keras-rl's EpsGreedyQPolicy
per stream (the Ape-X ladder), transitions recorded and cut into chunks. Its replay handle is a
stub whose ``add_chunks.remote`` does nothing, so the figure excludes the Ray push (serialising
about 7 KB per transition into the object store, on the order of 1 ms per 400-step push: see
bench/replay.py --ray and bench/scaling.py for the real path). Runs of --sync-every steps
(the weight-refresh cadence, as launch.py issues them) are timed; a new weights version is
loaded before every run, as in launch.py.

Target: at its best K, at least 60% of the raw emulator rate per core. Raw = ale_py act() x4
(the physical limit); the ratio to gymnasium ALE/Breakout-v5 rgb is printed too.

    ./dqn bench/actor.py                         # about 1.5 minutes
    ./dqn bench/actor.py --envs 8,32 --profile 32 --json runs/bench/actor.json
"""

from __future__ import annotations

import cProfile
import io
import os
import pstats
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402

TARGET = 0.60


class _Discard:
    """A replay handle whose ``add_chunks.remote(chunks)`` drops the chunks."""

    class _Method:
        @staticmethod
        def remote(chunks: list) -> None:
            return None

    add_chunks = _Method()


def make_explorer(k: int, seed: int, sync_every: int, precision: str = "auto"):
    import actors.explorer as explorer_mod
    from config import Config

    explorer_mod._wait_quietly = lambda refs: None  # the stub returns no object refs to wait for
    cfg = Config(num_actors=1, envs_per_actor=k, weight_sync_every=sync_every, seed=seed,
                 replay_capacity=max(100, 10 * k), actor_precision=precision,
                 explorer_priority="normal")  # same priority as the raw-emulator loop it is compared with
    return explorer_mod.Explorer(cfg, 0, _Discard())


def explorer_rate(k: int, seed: int, sync_every: int, precision: str = "auto"):
    """A callable(seconds) -> (agent steps per wall s, per CPU s) of an explorer with ``k`` emulators."""
    ex = make_explorer(k, seed, sync_every, precision)
    weights = [w.astype(np.float32) for w in ex.model.get_weights()]  # float32, as the learner sends them
    version = [0]

    def run(seconds: float) -> tuple[float, float]:
        n = 0
        c0, t0 = time.process_time(), time.perf_counter()
        while True:
            version[0] += 1
            n += ex.run((version[0], weights), sync_every)["steps"]
            dt = time.perf_counter() - t0
            if dt >= seconds:
                return n / dt, n / max(time.process_time() - c0, 1e-9)

    return run, ex


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--envs", default="1,4,16,32",
                   help="comma-separated emulator counts K per explorer to measure (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=4.0,
                   help="seconds per timed measurement of each setting (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3,
                   help="interleaved rounds (raw, K=1, K=4, ...); medians are reported (default: %(default)s)")
    p.add_argument("--sync-every", type=int, default=400,
                   help="agent steps per Explorer.run call, launch.py's --weight-sync-every (default: %(default)s)")
    p.add_argument("--precision", default="auto",
                   help="comma-separated --actor-precision settings (auto, float32, bfloat16); the first is "
                        "judged, auto being the product default (default: %(default)s)")
    p.add_argument("--core", type=int, default=0, help="CPU core to pin to (default: %(default)s)")
    p.add_argument("--profile", type=int, default=0, metavar="K",
                   help="also print a cProfile of the explorer loop with K emulators, its CPU time per step "
                        "by part, and the target as a time budget beyond the env (0: none)")
    args = common.parse(p, argv)

    cores = common.pin([args.core])
    tf = common.tf_threads(1)
    m = common.machine()
    common.print_machine(m)
    print(f"pinned to core {cores}; TensorFlow intra-op threads "
          f"{tf.config.threading.get_intra_op_parallelism_threads()}, inter-op "
          f"{tf.config.threading.get_inter_op_parallelism_threads()}; in-process Explorer, replay push stubbed")
    ks = [int(k) for k in args.envs.split(",")]
    precisions = args.precision.split(",")
    from core.network import resolve_precision

    print("explorer inference: " + ", ".join(f"{pr} = {resolve_precision(pr)}" for pr in precisions))
    settings = {f"K={k}" + (f" {pr}" if pr != precisions[0] else ""): (k, pr) for pr in precisions for k in ks}
    measures = {"ale": common.ale_direct(args.seed), "gym": common.gym_raw(args.seed)}
    for name, (k, pr) in settings.items():
        measures[name] = explorer_rate(k, args.seed, args.sync_every, pr)[0]
    res = common.interleave(measures, args.rounds, args.seconds, warmup=1.0, log=print)
    med = {name: {b: res[name][b]["median"] for b in ("cpu", "wall")} for name in res}
    ale, gym = med["ale"]["cpu"], med["gym"]["cpu"]
    print("ratios are per CPU second of this pinned process (the per-core figure); wall-clock ratios in brackets")
    print(common.rate_line("raw ALE act() x4 (one core)", res["ale"]))
    print(common.rate_line("raw gymnasium ALE/Breakout-v5 rgb", res["gym"]))
    rows = {}
    for name, (k, pr) in settings.items():
        r, mk = res[name], med[name]
        rows[name] = {"envs": k, "precision": pr, "steps_per_s": r, "ratio_ale": mk["cpu"] / ale,
                      "ratio_gym": mk["cpu"] / gym, "wall_ratio_ale": mk["wall"] / med["ale"]["wall"],
                      "wall_ratio_gym": mk["wall"] / med["gym"]["wall"]}
        print(common.rate_line(f"explorer, {k} emulator(s), {pr}, one core", r,
                               extra=f"= {rows[name]['ratio_ale']:.2f} x ALE [{rows[name]['wall_ratio_ale']:.2f}], "
                                     f"{rows[name]['ratio_gym']:.2f} x gym [{rows[name]['wall_ratio_gym']:.2f}]"))
    best = max((f"K={k}" for k in ks), key=lambda name: rows[name]["ratio_ale"])  # judged: the default precision
    ratio = rows[best]["ratio_ale"]
    ok = ratio >= TARGET
    print(f"target: best setting ({best}, {precisions[0]}) >= {TARGET:.0%} of raw ALE per core: {ratio:.0%}  "
          f"{common.verdict(ok)}  (wall-clock: {rows[best]['wall_ratio_ale']:.0%}; "
          f"vs gym: {rows[best]['ratio_gym']:.0%})")
    result = {"machine": m, "args": vars(args), "cores": cores, "raw": {"ale": res["ale"], "gym": res["gym"]},
              "explorer": rows, "best_k": best, "best_ratio_ale": ratio, "target": TARGET, "pass": ok,
              "method": "in-process Explorer, replay push stubbed, one core, one TF thread",
              "ratio_basis": "agent steps per CPU second of the pinned process"}
    if args.profile:
        result["profile"] = profile(args.profile, args.seed, args.sync_every)
        result["breakdown"] = breakdown(args.profile, args.seed, args.sync_every)
    common.write_json(args.json, result)
    return result


def profile(k: int, seed: int, sync_every: int, seconds: float = 6.0) -> str:
    run, _ = explorer_rate(k, seed, sync_every)
    run(1.0)
    prof = cProfile.Profile()
    prof.enable()
    run(seconds)
    prof.disable()
    out = io.StringIO()
    pstats.Stats(prof, stream=out).sort_stats("tottime").print_stats(15)
    text = "\n".join(line for line in out.getvalue().splitlines() if line.strip())
    print(f"cProfile of the explorer loop, K={k} (cProfile adds overhead; look at the shares):\n{text}")
    return text


def breakdown(k: int, seed: int, sync_every: int, seconds: float = 2.0, rounds: int = 3) -> dict:
    """CPU time per agent step of the explorer's parts, each measured on its own in interleaved
    rounds (medians): the whole explorer loop, emulator + preprocessing (make_env alone), the
    batched forward pass (per step = per call / K), EpsGreedyQPolicy; the rest is bookkeeping."""
    import numpy as np

    run, ex = explorer_rate(k, seed, sync_every)
    states = ex.state.copy()
    q = np.random.default_rng(seed).normal(size=(k, ex.n_actions)).astype(np.float32)

    def per_step(fn, steps_per_call: int):
        def measure(secs: float) -> tuple[float, float]:
            n, c0, t0 = 0, time.process_time(), time.perf_counter()
            while time.perf_counter() - t0 < secs:
                fn()
                n += steps_per_call
            return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)
        return measure

    def policies() -> None:
        for j in range(k):
            ex.policies[j].select_action(q_values=q[j])

    res = common.interleave({"total": run, "env": common.ours_env(seed), "ale": common.ale_direct(seed),
                             "forward": per_step(lambda: ex.q_values(states), k),
                             "policy": per_step(policies, k)}, rounds, seconds, warmup=1.0)
    us = {name: 1e6 / r["cpu"]["median"] for name, r in res.items()}
    total, env, fwd, pol = us["total"], us["env"], us["forward"], us["policy"]
    rest = total - env - fwd - pol
    print(f"CPU time per agent step, K={k} (parts timed apart, medians of {rounds} rounds): total {total:.0f} us = "
          f"emulator+preprocessing {env:.0f} us ({env / total:.0%}) + forward {fwd:.0f} us ({fwd / total:.0%}) + "
          f"EpsGreedyQPolicy {pol:.0f} us ({pol / total:.0%}) + bookkeeping {rest:.0f} us ({rest / total:.0%})")
    # the target as a time budget: what it leaves for everything but the environment
    allowed = us["ale"] / TARGET
    budget = allowed - env
    flop = 2 * sum(m for _, m in common.layer_macs(ex.model))  # forward pass per agent step
    need = f"{flop / budget / 1e3:,.0f} GFLOP/s" if budget > 0 else "less than no time"
    print(f"target as a budget: {TARGET:.0%} of raw ALE ({us['ale']:.0f} us per step) allows {allowed:.0f} us per "
          f"step; the env alone takes {env:.0f} us, leaving {budget:.0f} us for the network, the policy and the "
          f"bookkeeping. The forward pass ({flop / 1e6:.1f} MFLOP per step) runs at {flop / fwd / 1e3:.0f} GFLOP/s; "
          f"to fit that budget it would need {need}")
    return {"total_us": total, "env_us": env, "forward_us": fwd, "policy_us": pol, "rest_us": rest,
            "raw_ale_us": us["ale"], "target_allows_us": allowed, "budget_beyond_env_us": budget,
            "forward_mflop_per_step": flop / 1e6, "forward_gflops": flop / fwd / 1e3}


if __name__ == "__main__":
    main()
