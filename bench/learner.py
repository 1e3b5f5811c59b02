"""Learner updates/s against keras-rl DQNAgent's own train step, on the same synthetic batches, same run.

Ours: ``learner.learner.Learner.update`` (one tf.function: targets, Huber loss, gradient clipping,
Adam), eager TensorFlow, with and without double DQN, at batch 32 and 512, on uint8 batches.
keras-rl (in a child process, because ``rl.agents`` switches TensorFlow to graph mode): a
``DQNAgent`` from ``learner.classic.make_dqn_agent`` whose ``backward()`` is called with its step
counter set so that it trains on every call. Its memory hands back the same batches as ours
(variant ``train-step``: keras-rl's own code from the batch to ``train_on_batch``, with our
state-batching fix) or is a real ``SequentialMemory`` filled with random frames (variant
``with-sampling``: plus keras-rl's sampling). ``enable_double_dqn`` matches ours.

Target: ours >= 1.5x keras-rl's train step at batch 32 (same double-DQN setting, default on).

GFLOP/s are counted analytically from the network (multiply-adds x 2): forward on s0, forward on
s1 (target; plus online for double DQN), backward = 2 x forward minus conv1's input gradient;
beside a measured float32 matmul (the practical peak of these cores) and the theoretical FMA peak.

    ./dqn bench/learner.py                       # about 3 minutes
    ./dqn bench/learner.py --ray                 # plus the learner as launch.py runs it, through Ray
    ./dqn bench/learner.py --batches 32 --seconds 3 --json runs/bench/learner.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402

TARGET = 1.5
N_ACTIONS = 4  # Breakout's minimal action set
POOL = 4  # distinct batches per size, cycled


def make_batches(batch_size: int, seed: int) -> list:
    """``POOL`` synthetic batches of random uint8 frames, same seed, same data: replay.memory's
    PackedBatch (state0 and state1 share 3 frames: 5 frames per transition, what the replay hands the
    learner) where the product has it, else replay.memory.Batch."""
    import replay.memory as rm

    rng = np.random.default_rng(seed + batch_size)
    out = []
    for _ in range(POOL):
        frames = rng.integers(0, 256, (batch_size, 5, 84, 84), dtype=np.uint8)  # s1 = s0 shifted by one
        action = rng.integers(0, N_ACTIONS, batch_size).astype(np.int32)
        reward = rng.choice(np.float32([-1, 0, 0, 0, 1]), batch_size)
        terminal = rng.random(batch_size) < 0.01
        ones = {"horizon": np.ones(batch_size, np.int32), "weight": np.ones(batch_size, np.float32),
                "keys": np.arange(batch_size)}  # 1-step, uniform: the same work as keras-rl's
        out.append(rm.PackedBatch(frames=frames, action=action, reward=reward, terminal=terminal,
                                  indices=np.arange(batch_size), **ones))
    return out


# --- FLOPs ----------------------------------------------------------------------------------------
def flops_per_update(model, batch_size: int, double: bool) -> dict:
    macs = common.layer_macs(model)
    fwd = 2 * sum(m for _, m in macs)
    conv1_input_grad = 2 * macs[0][1]  # the first layer needs no gradient w.r.t. its input
    bwd = 2 * fwd - conv1_input_grad
    forwards = 3 if double else 2  # s0 online; s1 target; (s1 online)
    per_sample = forwards * fwd + bwd
    return {"forward_per_sample": fwd, "backward_per_sample": bwd, "per_sample": per_sample,
            "per_update": per_sample * batch_size, "layer_macs": macs}


def matmul_peak(seconds: float, n: int = 2048) -> dict:
    """Practical float32 peak: large square matmuls with numpy (BLAS) and TensorFlow on all cores,
    as GFLOP per wall second and per CPU second of this process. On a shared machine the
    per-CPU-second figure is the robust one: it is the rate of one core while we hold it; times the
    cores it is the practical peak of the whole machine."""
    import tensorflow as tf

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    b = np.random.default_rng(1).random((n, n), dtype=np.float32)
    flop = 2 * n**3

    def rate(fn) -> tuple[float, float]:
        fn()
        k, c0, t0 = 0, time.process_time(), time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            fn()
            k += 1
        return flop * k / (time.perf_counter() - t0) / 1e9, flop * k / max(time.process_time() - c0, 1e-9) / 1e9

    ta, tb = tf.constant(a), tf.constant(b)
    mm = tf.function(lambda x, y: tf.linalg.matmul(x, y))
    np_wall, np_cpu = rate(lambda: a @ b)
    tf_wall, tf_cpu = rate(lambda: mm(ta, tb).numpy())
    cores = os.cpu_count() or 1
    per_core = max(np_cpu, tf_cpu)
    return {"numpy_gflops": np_wall, "numpy_gflops_per_cpu_s": np_cpu, "tf_gflops": tf_wall,
            "tf_gflops_per_cpu_s": tf_cpu, "per_core": per_core, "all_cores": per_core * cores, "n": n}


def theoretical_peak(m: dict, practical_per_core: float) -> dict:
    """FMA peak from the clock: Zen 4 (AMD family 25, model >= 16) and Intel AVX-512 parts with two
    FMA units do 32 float32 FLOP per cycle per core (Zen 4 runs 512-bit ops on 256-bit halves).
    A VM reports the base (TSC) clock; when a measured matmul beats the peak at that clock, the
    clock it implies (matmul / 32) is shown as well."""
    per_cycle = 32 if ("avx512f" in m["flags"] or "fma" in m["flags"]) else 16
    ghz = m["cpu_mhz"] / 1e3
    implied = practical_per_core / per_cycle
    return {"flop_per_cycle_per_core": per_cycle, "reported_ghz": ghz, "cores": m["cores"],
            "gflops_at_reported_clock": per_cycle * ghz * m["cores"], "implied_min_ghz": implied,
            "gflops": per_cycle * max(ghz, implied) * m["cores"],
            "note": "reported clock = TSC; turbo runs higher: the peak uses max(reported, implied by the matmul)"}


# --- ours -------------------------------------------------------------------------------------------
def our_learner(double: bool, seed: int, precision: str = "float32"):
    from config import Config
    from learner.learner import Learner

    # keras-rl's problem: plain network, 1-step targets, uniform replay (the apex defaults differ)
    cfg = Config(num_actors=1, double_dqn=double, seed=seed, dueling=False, n_step=1, prioritized=False,
                 learner_precision=precision)
    return Learner(cfg, N_ACTIONS, replay=None)


def update_rate(learner, batches: list):
    def run(seconds: float) -> tuple[float, float]:
        n, c0, t0 = 0, time.process_time(), time.perf_counter()
        while True:
            learner.update(batches[n % POOL])
            n += 1
            dt = time.perf_counter() - t0
            if dt >= seconds and n >= 3:
                return n / dt, n / max(time.process_time() - c0, 1e-9)
    return run


def breakdown(learner, batches: list, seconds: float, rounds: int) -> dict:
    """Milliseconds per part of one update, each part its own tf.function on the learner's networks,
    timed in interleaved rounds (medians)."""
    import tensorflow as tf

    online, target, opt = learner.online, learner.target, learner.optimizer
    b = batches[0]
    s0 = tf.constant(b.state0)
    s1 = tf.constant(b.state1)
    action = tf.constant(b.action, tf.int32)

    @tf.function
    def cast(x):
        return tf.cast(x, tf.float32) / 255.0

    @tf.function
    def forward(x):
        return online(tf.cast(x, tf.float32) / 255.0, training=False)

    @tf.function
    def targets(x):
        x = tf.cast(x, tf.float32) / 255.0
        return target(x, training=False), online(x, training=False)

    @tf.function
    def grads(x, a):
        x = tf.cast(x, tf.float32) / 255.0
        with tf.GradientTape() as tape:
            q = tf.gather(online(x, training=True), a, batch_dims=1)
            loss = tf.reduce_mean(q)
        return tape.gradient(loss, online.trainable_variables)

    g = [tf.identity(v) for v in grads(s0, action)]

    @tf.function
    def apply(gs):
        gs, _ = tf.clip_by_global_norm(gs, 10.0)
        opt.apply_gradients(zip(gs, online.trainable_variables, strict=True))

    def ms(fn):
        def run(seconds: float) -> tuple[float, float]:  # calls per wall s and per CPU s, for common.interleave
            n, c0, t0 = 0, time.process_time(), time.perf_counter()
            while time.perf_counter() - t0 < seconds or n < 3:
                fn()
                n += 1
            return n / (time.perf_counter() - t0), n / max(time.process_time() - c0, 1e-9)
        return run

    step_args = (b.frames, np.asarray(b.action, np.int32), np.asarray(b.reward, np.float32),
                 np.asarray(b.terminal, np.float32), b.horizon, b.weight)
    parts = {
        "cast_uint8_to_float": ms(lambda: cast(s0).numpy()),
        "forward_s0": ms(lambda: forward(s0).numpy()),
        "targets_s1_target_and_online": ms(lambda: [t.numpy() for t in targets(s1)]),
        "forward_backward_s0": ms(lambda: [t.numpy() for t in grads(s0, action)]),
        "clip_and_adam": ms(lambda: apply(g)),
        "train_step_tf_function": ms(lambda: [t.numpy() for t in learner._train_step(*step_args)]),
        "whole_update": ms(lambda: learner.update(b)),
    }
    rates = common.interleave(parts, rounds, seconds, warmup=0.2)
    out = {k: 1e3 / v["wall"]["median"] for k, v in rates.items()}
    out["sum_of_parts"] = out["targets_s1_target_and_online"] + out["forward_backward_s0"] + out["clip_and_adam"]
    out["python_overhead_of_update"] = out["whole_update"] - out["train_step_tf_function"]
    return out


# --- ours through Ray (the launch.py path) ---------------------------------------------------------------
def ray_pipeline(args: argparse.Namespace, double: bool) -> dict:
    """``Learner.train`` as launch.py runs it: a Ray actor pulling batches of 32 from a real
    ReplayServer actor (filled with random frames), calls of --updates-per-call updates, the
    driver fetching the weights after every call. No explorers: this is the learner's own ceiling
    under Ray on this machine, to set beside the in-process rate."""
    from bench.replay import make_chunks
    from config import Config
    from distributed.topology import learner_actor, replay_actor

    cores = os.cpu_count() or 2
    with common.ray_session(num_cpus=cores) as ray:
        streams = 8
        replay = replay_actor(20_000, streams, seed=args.seed)
        rng = np.random.default_rng(args.seed)
        pool = rng.integers(0, 256, (4096, 84, 84), dtype=np.uint8)
        for i in range(5):
            ray.get(replay.add_chunks.remote(make_chunks(rng, pool, streams, 400, i * 400)))
        cfg = Config(num_actors=1, double_dqn=double, seed=args.seed, updates_per_call=args.updates_per_call)
        learner = learner_actor(cfg, N_ACTIONS, replay, threads=cores)  # TensorFlow's default: every core
        ray.get(learner.train.remote(args.updates_per_call))  # trace and warm
        calls, t0 = [], time.perf_counter()
        while time.perf_counter() - t0 < 3 * args.seconds or len(calls) < 3:
            calls.append(ray.get(learner.train.remote(args.updates_per_call)))
            ray.get(learner.get_weights.remote())  # as the driver does after every call
        wall = time.perf_counter() - t0
    n = sum(c["updates"] for c in calls)
    inside = sum(c["seconds"] for c in calls)
    waited = sum(c["wait_seconds"] for c in calls)
    return {"updates_per_s": n / wall, "updates_per_s_inside_train": n / inside, "wait_fraction": waited / inside,
            "outside_train_fraction": 1 - inside / wall, "calls": len(calls), "updates_per_call": args.updates_per_call}


# --- keras-rl (child process) -------------------------------------------------------------------------
def child(args: argparse.Namespace) -> None:
    if args.threads:
        common.tf_threads(args.threads)
    import kerasrl_compat

    tf = kerasrl_compat.load_tensorflow()
    from rl.memory import Experience, SequentialMemory
    from rl.policy import EpsGreedyQPolicy

    from learner.classic import make_dqn_agent

    class FixedMemory:
        """Hands back the benchmark's batches as keras-rl Experiences; stores nothing."""

        def __init__(self, batches: list) -> None:
            self.exps = [self.experiences(b) for b in batches]
            self.n = 0

        @staticmethod
        def experiences(b: Any) -> list:
            # PackedBatch.state1 gathers a new array on every access: take it once per batch (taking it
            # per transition kept a whole batch alive per transition: 23 GB at batch 512)
            s0, s1 = b.state0, b.state1
            return [Experience(state0=s0[i], action=int(b.action[i]), reward=float(b.reward[i]), state1=s1[i],
                               terminal1=bool(b.terminal[i])) for i in range(len(b.action))]

        def append(self, *a, **k) -> None:
            pass

        def sample(self, batch_size: int) -> list:
            self.n += 1
            return self.exps[self.n % len(self.exps)]

    def filled_sequential_memory(size: int, seed: int) -> SequentialMemory:
        mem = SequentialMemory(limit=size, window_length=4)
        rng = np.random.default_rng(seed)
        frames = rng.integers(0, 256, (256, 84, 84), dtype=np.uint8)
        for i in range(size):
            mem.append(frames[i % 256], int(rng.integers(N_ACTIONS)), 0.0, bool(rng.random() < 0.01))
        return mem

    results: dict[str, dict] = {}
    agents = {}
    for bs in args.batch_sizes:
        batches = make_batches(bs, args.seed)
        for variant in args.variants:
            for double in args.doubles:
                memory = FixedMemory(batches) if variant == "train-step" else filled_sequential_memory(
                    args.memory_size, args.seed)
                agent = make_dqn_agent(N_ACTIONS, policy=EpsGreedyQPolicy(), memory=memory, warmup=100,
                                       target_update=10_000, train_interval=4, batch_size=bs)
                agent.enable_double_dqn = double
                agent.training = True
                agent.step = 104  # > warm-up, a multiple of train_interval, not of target_update
                agent.recent_observation, agent.recent_action = batches[0].state0[0, -1], 0
                agents[(bs, variant, double)] = agent
    tf_threads = tf.config.threading.get_intra_op_parallelism_threads()
    for _ in range(args.rounds):
        for (bs, variant, double), agent in agents.items():
            agent.backward(0.0, terminal=False)  # warm
            n, c0, t0 = 0, time.process_time(), time.perf_counter()
            while time.perf_counter() - t0 < args.seconds or n < 3:
                agent.backward(0.0, terminal=False)
                n += 1
            key = f"{variant}/b{bs}/{'double' if double else 'dqn'}"
            r = results.setdefault(key, {"wall": [], "cpu": []})
            r["wall"].append(n / (time.perf_counter() - t0))
            r["cpu"].append(n / max(time.process_time() - c0, 1e-9))
    common.child_report({"results": {k: common.summary(v["wall"]) for k, v in results.items()},
                         "results_cpu": {k: common.summary(v["cpu"]) for k, v in results.items()},
                         "tf_threads": tf_threads})


def main(argv: list[str] | None = None) -> dict | None:
    p = common.parser(__doc__)
    p.add_argument("--batches", default="32,512", help="comma-separated batch sizes (default: %(default)s)")
    p.add_argument("--double", default="on,off",
                   help="double-DQN settings to measure: on, off or both (default: %(default)s)")
    p.add_argument("--precision", default="auto,float32",
                   help="our learner's --learner-precision settings to measure (auto, float32, bfloat16), the "
                        "first is the one judged: auto is the product default, bfloat16 where the CPU has "
                        "AVX-512 BF16 or AMX (keras-rl is float32 only) (default: %(default)s)")
    p.add_argument("--variants", default="train-step,with-sampling",
                   help="keras-rl variants: train-step (its backward() on our batches), with-sampling (its "
                        "backward() on a filled SequentialMemory) (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=1.5,
                   help="seconds per timed measurement (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3,
                   help="keras-rl child runs, each between two rounds of ours (ours gets rounds + 1) "
                        "(default: %(default)s)")
    p.add_argument("--memory-size", type=int, default=5000,
                   help="transitions in keras-rl's SequentialMemory for with-sampling (default: %(default)s)")
    p.add_argument("--threads", type=int, default=0,
                   help="TensorFlow intra/inter-op threads for both sides; 0: TF's default (all cores, as "
                        "train.py runs; launch.py's learner takes the cores its explorers leave free, see "
                        "--learner-threads) (default: %(default)s)")
    p.add_argument("--no-breakdown", action="store_true",
                   help="skip the per-part timing of our update at the smallest batch size")
    p.add_argument("--peak-seconds", type=float, default=2.0,
                   help="seconds per matmul peak measurement (default: %(default)s)")
    p.add_argument("--ray", action="store_true",
                   help="also run Learner.train as a Ray actor on batches from a real ReplayServer actor (the "
                        "launch.py path, no explorers) and compare with the in-process rate")
    p.add_argument("--updates-per-call", type=int, default=20,
                   help="updates per Learner.train call with --ray, launch.py's default (default: %(default)s)")
    args = common.parse(p, argv, seed="random seed for the synthetic batches", timeout=1200, child=True)
    def listed(flag: str, text: str, allowed: Sequence[str]) -> list[str]:
        items = text.split(",")
        if bad := [x for x in items if x not in allowed]:
            p.error(f"{flag}: {bad[0]!r} is not one of {', '.join(allowed)}")
        return items

    try:
        args.batch_sizes = [int(b) for b in args.batches.split(",")]
    except ValueError:
        p.error(f"--batches takes sizes such as 32,512, not {args.batches!r}")
    args.doubles = [d == "on" for d in listed("--double", args.double, ("on", "off"))]
    args.variants = listed("--variants", args.variants, ("train-step", "with-sampling"))
    args.precisions = listed("--precision", args.precision, ("auto", "float32", "bfloat16"))
    if args.child:
        child(args)
        return None

    tf = common.tf_threads(args.threads)
    m = common.machine()
    common.print_machine(m)
    threads = tf.config.threading.get_intra_op_parallelism_threads() or "default (all cores)"
    print(f"TensorFlow intra-op threads: {threads}")
    learners = {(d, pr): our_learner(d, args.seed, pr) for pr in args.precisions for d in args.doubles}
    for pr in args.precisions:
        print(f"ours, --learner-precision {pr}: {learners[(args.doubles[0], pr)].arithmetic()}")
    batches = {bs: make_batches(bs, args.seed) for bs in args.batch_sizes}
    ours = {(bs, d, pr): update_rate(learners[(d, pr)], batches[bs])
            for bs in args.batch_sizes for d in args.doubles for pr in args.precisions}
    for fn in ours.values():
        fn(0.5)  # trace and warm
    samples: dict[tuple, list[float]] = {k: [] for k in ours}
    cpu_samples: dict[tuple, list[float]] = {k: [] for k in ours}

    def our_round() -> None:
        for k, fn in ours.items():
            w, c = fn(args.seconds)
            samples[k].append(w)
            cpu_samples[k].append(c)

    # ours, keras-rl, ours, keras-rl, ..., ours: each keras-rl child sits between two rounds of ours,
    # so that a change in the machine's load during the run falls on both sides.
    child_argv = [__file__, "--child", "--batches", args.batches, "--double", args.double, "--variants",
                  ",".join(args.variants), "--seconds", str(args.seconds), "--rounds", "1",
                  "--memory-size", str(args.memory_size), "--threads", str(args.threads), "--seed", str(args.seed)]
    children = []
    our_round()
    for r in range(args.rounds):
        print(f"keras-rl DQNAgent.backward in a child process ({r + 1}/{args.rounds}) ...", flush=True)
        children.append(common.run_child(child_argv, args.timeout))
        our_round()
    kr = {"tf_threads": children[0]["tf_threads"], "results": {}, "results_cpu": {}}
    for key in children[0]["results"]:
        for part in ("results", "results_cpu"):
            kr[part][key] = common.summary([c[part][key]["median"] for c in children])

    peak = matmul_peak(args.peak_seconds)
    theo = theoretical_peak(m, peak["per_core"])
    print(f"float32 matmul {peak['n']}^2 on all cores: numpy {peak['numpy_gflops']:.0f} GFLOP/s wall "
          f"({peak['numpy_gflops_per_cpu_s']:.0f} per CPU s), TF {peak['tf_gflops']:.0f} GFLOP/s wall "
          f"({peak['tf_gflops_per_cpu_s']:.0f} per CPU s): practical peak {peak['per_core']:.0f} per core, "
          f"{peak['all_cores']:.0f} on {m['cores']} cores")
    print(f"theoretical FMA peak: {theo['flop_per_cycle_per_core']} FLOP/cycle/core x {m['cores']} cores = "
          f"{theo['gflops_at_reported_clock']:.0f} GFLOP/s at the reported {theo['reported_ghz']:.2f} GHz; the matmul "
          f"implies >= {theo['implied_min_ghz']:.2f} GHz, i.e. >= {theo['gflops']:.0f} GFLOP/s")
    practical = peak["all_cores"]
    rows = []
    ok32 = None
    for bs in args.batch_sizes:
        for d in args.doubles:
            mode = "double" if d else "dqn"
            for pr in args.precisions:
                o = common.summary(samples[(bs, d, pr)])
                oc = common.summary(cpu_samples[(bs, d, pr)])
                fl = flops_per_update(learners[(d, pr)].online, bs, d)
                gf = o["median"] * fl["per_update"] / 1e9
                row = {"batch": bs, "double_dqn": d, "precision": pr, "ours_updates_per_s": o,
                       "ours_updates_per_cpu_s": oc, "gflop_per_update": fl["per_update"] / 1e9,
                       "ours_gflops": gf, "fraction_of_practical_peak": gf / practical,
                       "fraction_of_theoretical_peak": gf / theo["gflops"]}
                print(f"batch {bs:>3} {mode:>6} {pr:>8}: ours {o['median']:7.1f} upd/s [{o['min']:.1f}..{o['max']:.1f}]"
                      f" = {gf:5.1f} GFLOP/s ({fl['per_update'] / 1e9:.2f} GFLOP/update; {gf / practical:.0%} of the "
                      f"{m['cores']}-core fp32 matmul peak; per CPU s {oc['median'] * fl['per_update'] / 1e9:.0f} GFLOP"
                      f" = {oc['median'] * fl['per_update'] / 1e9 / peak['per_core']:.0%} of one core's)")
                for variant in args.variants:
                    k = kr["results"][f"{variant}/b{bs}/{mode}"]
                    kc = kr["results_cpu"][f"{variant}/b{bs}/{mode}"]
                    ratio = o["median"] / k["median"]
                    row[f"kerasrl_{variant}"] = k
                    row[f"kerasrl_{variant}_per_cpu_s"] = kc
                    row[f"ratio_vs_{variant}"] = ratio
                    row[f"cpu_ratio_vs_{variant}"] = oc["median"] / kc["median"]
                    print(f"                     keras-rl {variant:<13} {k['median']:7.1f} upd/s "
                          f"[{k['min']:.1f}..{k['max']:.1f}]  ours/keras-rl = {ratio:.2f}x  (per CPU s: ours "
                          f"{oc['median']:.1f}, keras-rl {kc['median']:.1f}: {oc['median'] / kc['median']:.2f}x)")
                if bs == 32 and "train-step" in args.variants:
                    row["meets_target"] = row["ratio_vs_train-step"] >= TARGET
                    if d == args.doubles[0] and pr == args.precisions[0]:
                        ok32 = row["meets_target"]
                rows.append(row)
    if ok32 is not None:
        for r in rows:
            if r["batch"] == 32 and r["double_dqn"] == args.doubles[0]:
                mode = "double" if r["double_dqn"] else "dqn"
                judged = " (the target's figure: the default settings)" if r["precision"] == args.precisions[0] else \
                    " (option)"
                print(f"target: ours >= {TARGET}x keras-rl's train step at batch 32 ({mode}, {r['precision']}): "
                      f"{r['ratio_vs_train-step']:.2f}x  {common.verdict(r['meets_target'])}{judged}")
    result = {"machine": m, "args": {k: v for k, v in vars(args).items() if k != "child"}, "rows": rows,
              "kerasrl_tf_threads": kr["tf_threads"], "matmul_peak": peak, "theoretical_peak": theo,
              "target": TARGET, "pass": ok32}
    if not args.no_breakdown:
        bs = min(args.batch_sizes)
        d = args.doubles[0]
        parts = breakdown(learners[(d, args.precisions[0])], batches[bs], max(0.5, args.seconds / 3),
                          max(3, args.rounds))
        whole = parts["whole_update"]
        print(f"where one update goes, batch {bs}, {'double' if d else 'dqn'} (each part timed alone, ms):")
        fl = flops_per_update(learners[(d, args.precisions[0])].online, 1, d)
        part_flops = {"forward_s0": fl["forward_per_sample"] * bs,
                      "targets_s1_target_and_online": 2 * fl["forward_per_sample"] * bs,
                      "forward_backward_s0": (fl["forward_per_sample"] + fl["backward_per_sample"]) * bs,
                      "train_step_tf_function": fl["per_sample"] * bs, "whole_update": fl["per_sample"] * bs}
        for name, v in parts.items():
            rate = f"{part_flops[name] / v / 1e6:6.1f} GFLOP/s" if name in part_flops else ""
            print(f"  {name:<30} {v:7.2f} ms  {v / whole:5.0%}  {rate}")
        result["breakdown_gflops"] = {k: part_flops[k] / parts[k] / 1e6 for k in part_flops}
        result["breakdown_ms"] = parts
    if args.ray and 32 in args.batch_sizes:
        d = args.doubles[0]
        rp = ray_pipeline(args, d)
        inproc = common.summary(samples[(32, d, args.precisions[0])])["median"]
        rp["ratio_to_in_process"] = rp["updates_per_s"] / inproc
        result["ray_pipeline"] = rp
        print(f"through Ray (learner actor + replay actor, batch 32, {'double' if d else 'dqn'}, "
              f"{rp['updates_per_call']} updates per call): {rp['updates_per_s']:.1f} upd/s = "
              f"{rp['ratio_to_in_process']:.2f} x in-process; inside train() {rp['updates_per_s_inside_train']:.1f} "
              f"upd/s, {rp['wait_fraction']:.0%} of it waiting for batches, {rp['outside_train_fraction']:.0%} of the "
              f"wall time outside train() (driver round trip, get_weights)")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
