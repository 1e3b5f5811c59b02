"""Learner updates/s by batch size on whatever device TensorFlow has here: a GPU if one is visible,
else the CPU. The device comes first in the output, with what ``--learner-precision auto`` picks on it.

Measured: ``learner.learner.Learner.update``, the launch.py learner's whole update (the uint8 batch
handed to TensorFlow, double-DQN targets, Huber loss, clipping, Adam, |td| back as numpy), on
bench/learner.py's synthetic batches (plain network, 1-step, uniform weights), at each batch size
and each --precision, interleaved in rounds (medians).

Baseline, measured in the same run: on a GPU, the same measurement in a child process with the GPU
hidden (``CUDA_VISIBLE_DEVICES=""``), i.e. this machine's CPU learner: the ratio GPU / CPU per batch.
On a machine without a GPU the baseline is batch 32 itself: transitions/s relative to batch 32.

    ./dqn bench/learner_device.py                      # 32..512, about 2 minutes on 2 CPU cores
    ./dqn bench/learner_device.py --batches 32,512 --rounds 2 --seconds 1
    DQN_GPU=1 ./dqn bench/learner_device.py --precision auto,float32,bfloat16 --json runs/bench/gpu.json
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402
from bench.learner import make_batches, our_learner, update_rate  # noqa: E402


def device() -> dict:
    """What TensorFlow computes on in this process, and how it was built."""
    import kerasrl_compat
    from core.network import auto_choice, visible_gpu

    tf = kerasrl_compat.load_tensorflow()
    build = tf.sysconfig.get_build_info()
    gpu = visible_gpu()
    return {"gpu": gpu["name"] if gpu else None, "capability": list(gpu["capability"]) if gpu else None,
            "auto": list(auto_choice()), "tensorflow": tf.__version__, "cuda_build": bool(build.get("is_cuda_build")),
            "cuda": build.get("cuda_version"), "cudnn": build.get("cudnn_version"),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}


def describe(d: dict) -> str:
    built = f"built with CUDA {d['cuda']}, cuDNN {d['cudnn']}" if d["cuda_build"] else "a CPU-only build"
    if d["gpu"]:
        where = f"GPU {d['gpu']} (compute capability {d['capability'][0]}.{d['capability'][1]})"
    else:
        where = "CPU (TensorFlow sees no GPU)"
    return f"{where}; TensorFlow {d['tensorflow']}, {built}; --learner-precision auto = {d['auto'][0]} ({d['auto'][1]})"


def measure(args: argparse.Namespace) -> dict:
    """updates/s per (batch, precision) on this process's device; the variables' device is checked."""
    learners = {pr: our_learner(True, args.seed, pr) for pr in args.precisions}
    placed = {pr: learner.online.trainable_variables[0].device for pr, learner in learners.items()}
    measures = {f"b{bs} {pr}": update_rate(learners[pr], make_batches(bs, args.seed))
                for bs in args.batch_sizes for pr in args.precisions}
    rates = common.interleave(measures, args.rounds, args.seconds, warmup=0.5)
    return {"device": device(), "variables_on": placed,
            "updates_per_s": {k: v["wall"] for k, v in rates.items()}}


def main(argv: list[str] | None = None) -> dict | None:
    p = common.parser(__doc__)
    p.add_argument("--batches", default="32,64,128,256,512",
                   help="comma-separated batch sizes, each 1..4096 (default: %(default)s)")
    p.add_argument("--precision", default="auto",
                   help="comma-separated --learner-precision settings (auto, float32, bfloat16); settings that "
                        "resolve to the same arithmetic as an earlier one are measured once (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=1.0,
                   help="seconds per timed measurement, > 0 (default: %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="interleaved rounds, >= 1 (default: %(default)s)")
    p.add_argument("--no-cpu-baseline", action="store_true",
                   help="on a GPU, skip the same measurement with the GPU hidden (the CPU baseline)")
    args = common.parse(p, argv, seed="random seed for the synthetic batches", timeout=1800, child=True)
    try:
        args.batch_sizes = [int(b) for b in args.batches.split(",")]
        if not all(1 <= b <= 4096 for b in args.batch_sizes) or args.seconds <= 0 or args.rounds < 1:
            raise ValueError
    except ValueError:
        p.error("--batches takes sizes 1..4096, --seconds a positive number, --rounds at least 1")
    from core.network import resolve_precision

    try:
        resolved = {pr: resolve_precision(pr) for pr in args.precision.split(",")}
    except ValueError as exc:
        p.error(f"--precision: {exc}")
    args.precisions = []  # the first setting of each arithmetic (the child measures the parent's list as given)
    for pr, arithmetic in resolved.items():
        if args.child or arithmetic not in {resolved[q] for q in args.precisions}:
            args.precisions.append(pr)
    if args.child:
        common.child_report(measure(args))
        return None

    m = common.machine()
    common.print_machine(m)
    here = device()
    print(f"device: {describe(here)}", flush=True)
    result = measure(args)
    print(f"variables on: {', '.join(f'{pr} {dev}' for pr, dev in result['variables_on'].items())}")
    baseline = None
    if here["gpu"] and not args.no_cpu_baseline:
        print("the same on this machine's CPU (a child process with CUDA_VISIBLE_DEVICES='') ...", flush=True)
        os.environ["CUDA_VISIBLE_DEVICES"] = ""  # the child inherits it (bench.common.child_env)
        try:
            baseline = common.run_child([__file__, "--child", "--batches", args.batches, "--precision",
                                         ",".join(args.precisions), "--seconds", str(args.seconds), "--rounds",
                                         str(args.rounds), "--seed", str(args.seed)], args.timeout)
        finally:
            del os.environ["CUDA_VISIBLE_DEVICES"]
        print(f"baseline device: {describe(baseline['device'])}")
    rows = []
    for pr in args.precisions:
        first = result["updates_per_s"][f"b{args.batch_sizes[0]} {pr}"]["median"] * args.batch_sizes[0]
        for bs in args.batch_sizes:
            r = result["updates_per_s"][f"b{bs} {pr}"]
            row = {"batch": bs, "precision": pr, "arithmetic": resolved[pr], "updates_per_s": r,
                   "transitions_per_s": r["median"] * bs, "transitions_vs_first_batch": r["median"] * bs / first}
            line = (f"batch {bs:>4} {pr:>8} ({resolved[pr]}): {r['median']:8.1f} updates/s [{r['min']:.1f}.."
                    f"{r['max']:.1f}] = {r['median'] * bs:9,.0f} transitions/s, "
                    f"{row['transitions_vs_first_batch']:.2f}x batch {args.batch_sizes[0]}'s")
            if baseline:
                cpu = baseline["updates_per_s"][f"b{bs} {pr}"]["median"]
                row["cpu_updates_per_s"], row["ratio_vs_cpu"] = cpu, r["median"] / cpu
                line += f"; CPU {cpu:.1f} updates/s: {r['median'] / cpu:.1f}x"
            print(line)
            rows.append(row)
    out = {"machine": m, "device": here, "variables_on": result["variables_on"], "rows": rows,
           "cpu_baseline": baseline, "args": {k: v for k, v in vars(args).items() if k != "child"}}
    common.write_json(args.json, out)
    return out


if __name__ == "__main__":
    main()
