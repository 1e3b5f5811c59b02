"""The keras-rl baseline: train.py's steps/s after warm-up, stock keras-rl2 batching and with our fix,
beside the raw emulator's steps/s, all measured in this run.

keras-rl's ``rl.agents`` switches TensorFlow to graph mode for the whole process, so each keras-rl
measurement runs in a child process (this script with --child). The child builds exactly what
train.py builds, with the same function (learner.classic.classic_training: train every 4 steps,
batch 32) and times
``agent.fit`` with a callback: the warm-up (acting and storing only), then --skip training steps
untimed (graph building), then --measure training steps timed.

    ./dqn bench/baseline.py                    # about 2 minutes
    ./dqn bench/baseline.py --measure 4000 --json runs/bench/baseline.json
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402


def child(args: argparse.Namespace) -> None:
    """One keras-rl fit, timed; prints the result as one JSON line."""
    common.pin(common.parse_cores(args.cores))
    import kerasrl_compat

    tf = kerasrl_compat.load_tensorflow()
    kerasrl_compat.prepare_rl()  # rl.callbacks needs fix 1 before its import
    from rl.callbacks import Callback

    from learner.classic import classic_training

    env, agent = classic_training(  # train.py's defaults, with this run's sizes
        "Breakout", seed=args.seed, memory_limit=args.memory_limit, warmup=args.warmup,
        fast_state_batch=args.child == "fixed")
    # rl.core calls on_step_end before incrementing agent.step: agent.step is the 0-based index of
    # the step just finished; keras-rl trains at indices > warmup that are multiples of 4.
    marks = {0: "start", args.warmup: "warm", args.warmup + args.skip: "train0",
             args.warmup + args.skip + args.measure: "end"}
    times: dict[str, float] = {}
    cpu: dict[str, float] = {}

    class Timer(Callback):
        def on_step_end(self, step: int, logs: dict) -> None:
            name = marks.get(int(agent.step))
            if name:
                times[name] = time.perf_counter()
                cpu[name] = time.process_time()

    total = args.warmup + args.skip + args.measure + 1
    agent.fit(env, nb_steps=total, callbacks=[Timer()], verbose=0)
    common.child_report({
        "variant": args.child,
        "warmup_steps_per_s": args.warmup / (times["warm"] - times["start"]),
        "train_steps_per_s": args.measure / (times["end"] - times["train0"]),
        "train_steps_per_cpu_s": args.measure / (cpu["end"] - cpu["train0"]),
        "train_cpu_cores_busy": (cpu["end"] - cpu["train0"]) / (times["end"] - times["train0"]),
        "steps": total,
        "tf_threads": tf.config.threading.get_intra_op_parallelism_threads(),
        "cores": sorted(os.sched_getaffinity(0)),
    })


def main(argv: list[str] | None = None) -> dict | None:
    p = common.parser(__doc__)
    p.add_argument("--warmup", type=int, default=1000,
                   help="keras-rl nb_steps_warmup: random-ish acting that fills the memory (default: %(default)s)")
    p.add_argument("--skip", type=int, default=100,
                   help="training steps after the warm-up left untimed (graph building) (default: %(default)s)")
    p.add_argument("--measure", type=int, default=2000,
                   help="training steps timed (train every 4 steps, batch 32) (default: %(default)s)")
    p.add_argument("--memory-limit", type=int, default=100_000,
                   help="SequentialMemory limit in transitions (default: %(default)s)")
    p.add_argument("--cores", default="",
                   help="comma-separated cores for the keras-rl children; empty: all cores, as train.py runs "
                        "(default: all)")
    p.add_argument("--raw-core", type=int, default=0,
                   help="core the raw-emulator reference runs pinned to (default: %(default)s)")
    p.add_argument("--raw-seconds", type=float, default=3.0,
                   help="seconds per raw-emulator measurement; one before and one after the children "
                        "(default: %(default)s)")
    p.add_argument("--variants", default="stock,fixed",
                   help="which keras-rl variants to run: stock (keras-rl2's object-array state batching), "
                        "fixed (kerasrl_compat fix 4, what train.py uses) (default: %(default)s)")
    args = common.parse(p, argv, timeout=1200, child=("stock", "fixed"))  # --child: one keras-rl run
    if args.child:
        child(args)
        return None

    m = common.machine()
    common.print_machine(m)
    raw: dict[str, list[tuple[float, float]]] = {"ale": [], "gym": []}
    pinned = common.pin([args.raw_core])
    ale, gym = common.ale_direct(args.seed), common.gym_raw(args.seed)

    def measure_raw() -> None:
        common.pin([args.raw_core])
        ale(0.3)
        gym(0.3)
        raw["ale"].append(ale(args.raw_seconds))
        raw["gym"].append(gym(args.raw_seconds))
        os.sched_setaffinity(0, range(os.cpu_count() or 1))

    measure_raw()
    runs = {}
    for variant in args.variants.split(","):
        print(f"keras-rl fit, {variant} batching: warm-up {args.warmup}, then {args.skip} + {args.measure} "
              f"training steps ...", flush=True)
        child_argv = [__file__, "--child", variant, "--warmup", str(args.warmup), "--skip", str(args.skip),
                      "--measure", str(args.measure), "--memory-limit", str(args.memory_limit),
                      "--cores", args.cores, "--seed", str(args.seed)]
        runs[variant] = common.run_child(child_argv, args.timeout)
    measure_raw()
    raw_s = {k: {"wall": common.summary([w for w, _ in v]), "cpu": common.summary([c for _, c in v])}
             for k, v in raw.items()}
    r_ale, r_gym = raw_s["ale"]["cpu"]["median"], raw_s["gym"]["cpu"]["median"]

    print(f"\nraw emulator on core {pinned}, median of before/after (ratios use its rate per CPU second):")
    print(common.rate_line("raw ALE act() x4", raw_s["ale"]))
    print(common.rate_line("raw gymnasium ALE/Breakout-v5 rgb", raw_s["gym"]))
    print(f"keras-rl train.py-equivalent (cores: {args.cores or 'all'}):")
    for variant, r in runs.items():
        print(f"  {variant:<6} warm-up {r['warmup_steps_per_s']:7.1f} steps/s | after warm-up "
              f"{r['train_steps_per_s']:6.1f} steps/s = {r['train_steps_per_s'] / r_ale:.3f} x raw ALE, "
              f"{r['train_steps_per_s'] / r_gym:.3f} x raw gym; {r['train_steps_per_cpu_s']:.1f} steps per CPU s "
              f"({r['train_cpu_cores_busy']:.2f} cores busy)")
    result = {"machine": m, "args": {k: v for k, v in vars(args).items() if k != "child"}, "raw": raw_s,
              "kerasrl": runs}
    if "stock" in runs and "fixed" in runs:
        speedup = runs["fixed"]["train_steps_per_s"] / runs["stock"]["train_steps_per_s"]
        result["fix_speedup"] = speedup
        print(f"speed-up of our fix over stock keras-rl2 batching: {speedup:.2f}x   "
              f"check: fix faster than stock  {common.verdict(speedup > 1.0)}")
    print("target: none of its own; this is the baseline the other benchmarks compare against")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
