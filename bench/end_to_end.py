"""End to end on this machine: launch.py (distributed) against train.py (keras-rl), same wall time,
same replay ratio, one after the other (never side by side).

Replay ratio 8 samples per env step on both: train.py trains a batch of 32 every 4 agent steps;
launch.py runs with --samples-per-insert 8 --batch-size 32. Both start learning after
--learning-starts agent steps and keep a small replay memory (--memory). Each run gets --seconds
of wall time from process start, then SIGTERM (both stop cleanly and save their network).

Figures after warm-up (both counted from their own logs):
  train.py   agent steps from its progress lines (timestamped as they arrive); learner updates =
             steps / 4 (keras-rl trains on exactly every 4th step after warm-up)
  launch.py  env and learner steps from RUN_DIR/metrics.jsonl, from the first record with
             learner steps (plus --skip-records) to the last record before the stop
Where the CPU goes in each launch.py run: cores in use per role (learner, replay, explorers, driver,
Ray's own processes) over the middle 35% of the run, from /proc.

Target: the best launch.py configuration >= 2.5x train.py's env steps/s after warm-up.
The distributed run is tried with each --configs entry (num-actors x envs-per-actor).

    ./dqn bench/end_to_end.py                          # 3 runs x 150 s: about 8 minutes
    ./dqn bench/end_to_end.py --seconds 60 --configs 1x8 --json runs/bench/end_to_end.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402

TARGET = 2.5
TRAIN_INTERVAL, BATCH = 4, 32
SAMPLES_PER_INSERT = BATCH / TRAIN_INTERVAL  # 8: train.py's replay ratio, given to launch.py
STEP_LINE = re.compile(r"^step\s+([\d,]+)/")


def _exited(proc: subprocess.Popen, deadline: float, stop_when: Callable[[], bool] | None) -> bool:
    """Wait until ``proc`` exits (True), or until ``deadline`` or ``stop_when()`` (False)."""
    while (left := deadline - time.monotonic()) > 0:
        try:
            proc.wait(timeout=min(left, 1.0) if stop_when is not None else left)
            return True
        except subprocess.TimeoutExpired:
            if stop_when is not None and stop_when():
                return False
    return proc.poll() is not None


def run_for(argv: list[str], seconds: float, env: dict, log_path: Path,
            stop_when: Callable[[], bool] | None = None) -> list[tuple[float, str]]:
    """Run ``python argv`` for ``seconds`` of wall time (or, with ``stop_when``, until it returns
    true, asked once a second), then SIGTERM (then SIGKILL after 90 s); return its stdout lines
    with their arrival times (seconds since start)."""
    t0 = time.monotonic()
    proc = subprocess.Popen([sys.executable, *argv], cwd=common.ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1, start_new_session=True)
    lines: list[tuple[float, str]] = []

    def reader() -> None:
        with open(log_path, "w") as log:
            for line in proc.stdout:
                lines.append((time.monotonic() - t0, line.rstrip("\n")))
                log.write(f"{lines[-1][0]:8.2f} {line}")
                log.flush()

    th = threading.Thread(target=reader, daemon=True)
    th.start()
    if _exited(proc, t0 + seconds, stop_when):
        print(f"    exited by itself after {time.monotonic() - t0:.0f} s (exit {proc.returncode})", flush=True)
    else:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)  # this run's own process group only
            proc.wait()
    th.join(timeout=10)
    return lines


def measure_train(args: argparse.Namespace, work: Path) -> dict:
    run_dir = work / "classic"
    argv = ["train.py", "--steps", "100000000", "--warmup", str(args.learning_starts), "--memory-limit",
            str(args.memory), "--output", str(run_dir / "policy.h5"), "--run-dir", str(run_dir), "--log-every",
            str(args.log_every), "--seed", str(args.seed), "--checkpoint-every", "100000000"]
    print(f"train.py for {args.seconds:g} s: {' '.join(argv[1:])}", flush=True)
    lines = run_for(argv, args.seconds, common.child_env(), work / "train.log")
    points = []
    for t, line in lines:
        mt = STEP_LINE.match(line)
        if mt:
            points.append((t, int(mt.group(1).replace(",", "")), "training" in line))
    train = [(t, s) for t, s, is_training in points if is_training]
    train = train[args.skip_records:]
    if len(train) < 2:
        raise RuntimeError(f"train.py printed too few training progress lines; see {work / 'train.log'}")
    (t_a, s_a), (t_b, s_b) = train[0], train[-1]
    env_rate = (s_b - s_a) / (t_b - t_a)
    total = points[-1][1] if points else 0
    return {"env_steps_per_s": env_rate, "updates_per_s": env_rate / TRAIN_INTERVAL, "window_s": t_b - t_a,
            "env_steps_total": total, "env_steps_per_s_whole_run": total / args.seconds,
            "progress_points": [(round(t, 2), s) for t, s, _ in points], "argv": argv}


def parse_config(text: str) -> tuple[str, int, int, list[str]]:
    """``1x8`` or ``1x8+learner-threads=1+double-dqn=false`` -> (label, actors, envs, extra flags)."""
    head, *flags = text.strip().split("+")
    actors, envs = (int(x) for x in head.lower().split("x"))
    extra = []
    for f in flags:
        name, _, value = f.partition("=")
        extra += [f"--{name}", value] if value else [f"--{name}"]
    return text.strip(), actors, envs, extra


def start_cluster(shape: str, env: dict, ray_tmp: Path) -> Any:
    """A ``ray.cluster_utils.Cluster`` on this machine shaped like cluster.yaml: a head of H CPUs
    without the 'explorer' resource (driver, learner, replay) and one worker of W CPUs with W
    'explorer' (``shape`` is ``H+W``), token auth on; its processes share the run's RAY_TMPDIR so
    that the CPU sampler counts them. launch.py joins it with --address and --explorer-resource."""
    import secrets

    head, worker = (int(x) for x in shape.split("+"))
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32))
    for key in ("RAY_TMPDIR", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN"):  # the nodes inherit these from this process
        os.environ[key] = env[key] if key != "RAY_TMPDIR" else str(ray_tmp)
    from ray.cluster_utils import Cluster  # after the environment: Ray reads its auth mode when imported

    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": head, "include_dashboard": False})
    cluster.add_node(num_cpus=worker, resources={"explorer": worker})
    print(f"    cluster_utils cluster at {cluster.address}: head {head} CPU(s), worker {worker} CPU(s) "
          f"with {worker} 'explorer'", flush=True)
    return cluster


def measure_launch(args: argparse.Namespace, work: Path, config: str, launch_help: str) -> dict:
    label, actors, envs, extra = parse_config(config)
    safe = re.sub(r"[^\w.=-]", "_", label)
    run_dir = work / f"launch-{safe}"
    argv = ["launch.py", "--num-actors", str(actors), "--envs-per-actor", str(envs), "--total-env-steps",
            "100000000", "--learning-starts", str(args.learning_starts), "--replay-capacity", str(args.memory),
            "--samples-per-insert", str(SAMPLES_PER_INSERT), "--batch-size", str(BATCH),
            "--log-every", str(args.log_every), "--run-dir", str(run_dir), "--seed", str(args.seed),
            "--export-every", "100000000"]
    if "--checkpoint-every" in launch_help:
        argv += ["--checkpoint-every", "100000000"]
    argv += extra + args.launch_extra.split()
    env = common.child_env()
    ray_tmp = Path(tempfile.mkdtemp(prefix="rb", dir="/tmp"))  # Ray's sockets and logs, ours alone
    env["RAY_TMPDIR"] = str(ray_tmp)
    cluster = start_cluster(args.cluster, env, ray_tmp) if args.cluster else None
    if cluster:
        argv += ["--address", cluster.address, "--explorer-resource", "explorer"]
        label += f"@{args.cluster}"
    print(f"launch.py for {args.seconds:g} s: {' '.join(argv[1:])}", flush=True)
    shares: dict = {}

    def sample_cpu() -> None:  # cores per role over the middle of the run (learning by then)
        time.sleep(args.seconds * 0.5)
        shares.update(common.cpu_by_role("RAY_TMPDIR", str(ray_tmp), args.seconds * 0.35))

    sampler = threading.Thread(target=sample_cpu, daemon=True)
    sampler.start()
    try:
        lines = run_for(argv, args.seconds, env, work / f"launch-{safe}.log")
        sampler.join(timeout=5)
    finally:
        if cluster:
            cluster.shutdown()
        if args.keep:
            print(f"    Ray's session files (worker logs) kept in {ray_tmp}")
        else:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    final = metrics[-1] if metrics else None
    recs = metrics[:-1]  # the last record is printed after the stop (it includes the final export)
    learning = [r for r in recs if r["learner_steps"] > 0][args.skip_records:]
    if len(learning) < 2:
        raise RuntimeError(f"launch.py logged too few records after warm-up; see {work}/launch-{safe}.log")
    a, b = learning[0], learning[-1]
    dt = b["wall_seconds"] - a["wall_seconds"]
    env_rate = (b["env_steps"] - a["env_steps"]) / dt
    upd_rate = (b["learner_steps"] - a["learner_steps"]) / dt
    batch = int(extra[extra.index("--batch-size") + 1]) if "--batch-size" in extra else BATCH
    spi = (b["learner_steps"] - a["learner_steps"]) * batch / max(1, b["env_steps"] - a["env_steps"])
    # a different batch size or replay ratio is another algorithm: shown, but not judged against the target
    comparable = not {"--batch-size", "--samples-per-insert"} & set(extra + args.launch_extra.split())
    return {"config": label, "cluster": args.cluster or None, "num_actors": actors, "envs_per_actor": envs,
            "extra_flags": extra,
            "batch_size": batch, "comparable": comparable,
            # what the learner alone allows at the configured replay ratio: the steady state once the
            # explorers have used up the driver's run-ahead slack
            "learner_limited_env_steps_per_s": upd_rate * batch / SAMPLES_PER_INSERT,
            "env_steps_per_s": env_rate, "updates_per_s": upd_rate,
            "samples_per_insert_achieved": spi, "window_s": dt, "cores_by_role": shares,
            "env_steps_total": final["env_steps"] if final else 0,
            "env_steps_per_s_whole_run": (final["env_steps"] if final else 0) / args.seconds,
            "records": recs, "argv": argv, "tail": [x for _, x in lines[-3:]]}


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--seconds", type=float, default=150,
                   help="wall time of each run, from process start to SIGTERM (default: %(default)s)")
    p.add_argument("--configs", default="1x8,1x16",
                   help="launch.py configurations to try, comma-separated NUM_ACTORSxENVS_PER_ACTOR, each "
                        "optionally followed by +FLAG=VALUE launch.py flags, e.g. 1x8+learner-threads=1 "
                        "(default: %(default)s)")
    p.add_argument("--learning-starts", type=int, default=2000,
                   help="agent steps before learning, both runs (train.py --warmup, launch.py "
                        "--learning-starts) (default: %(default)s)")
    p.add_argument("--memory", type=int, default=50_000,
                   help="replay size in transitions, both runs (default: %(default)s)")
    p.add_argument("--log-every", type=float, default=5.0,
                   help="seconds between the runs' progress lines / metrics records (default: %(default)s)")
    p.add_argument("--skip-records", type=int, default=1,
                   help="progress records after warm-up left out of the rates (graph building, the learner "
                        "catching up) (default: %(default)s)")
    p.add_argument("--launch-extra", default="",
                   help="extra flags for launch.py, e.g. '--updates-per-call 50' (default: none)")
    p.add_argument("--cluster", default="", metavar="H+W",
                   help="run launch.py against a ray.cluster_utils cluster on this machine: a head of H CPUs "
                        "(no 'explorer' resource) and one worker of W CPUs with W 'explorer', joined with "
                        "--address and --explorer-resource explorer, e.g. 1+1 (default: a local Ray)")
    p.add_argument("--skip-train", action="store_true",
                   help="do not run train.py (no ratio; for trying launch.py configurations only)")
    p.add_argument("--keep", action="store_true",
                   help="keep the runs' directories, logs and Ray session files (paths printed)")
    args = common.parse(p, argv, seed="random seed, both runs")

    m = common.machine()
    common.print_machine(m)
    work = Path(tempfile.mkdtemp(prefix="e2e-", dir=common.ROOT / "runs" if (common.ROOT / "runs").is_dir()
                                 else None))
    print(f"run directories and logs in {work}")
    launch_help = subprocess.run([sys.executable, "launch.py", "--help"], cwd=common.ROOT, env=common.child_env(),
                                 capture_output=True, text=True).stdout
    result: dict = {"machine": m, "args": vars(args), "launch": []}
    try:
        classic = None
        if not args.skip_train:
            classic = measure_train(args, work)
            result["train"] = classic
            print(f"  train.py after warm-up: {classic['env_steps_per_s']:.1f} env steps/s, "
                  f"{classic['updates_per_s']:.1f} updates/s (over {classic['window_s']:.0f} s)", flush=True)
        for cfg in args.configs.split(","):
            try:
                r = measure_launch(args, work, cfg, launch_help)
            except RuntimeError as exc:  # one broken configuration does not lose the others
                print(f"  launch.py {cfg}: FAILED: {exc}", flush=True)
                result["launch"].append({"config": cfg, "error": str(exc)})
                continue
            result["launch"].append(r)
            print(f"  launch.py {cfg} after warm-up: {r['env_steps_per_s']:.1f} env steps/s, "
                  f"{r['updates_per_s']:.1f} updates/s, {r['samples_per_insert_achieved']:.2f} samples/insert "
                  f"(over {r['window_s']:.0f} s)", flush=True)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)

    print(f"\nsame wall time ({args.seconds:g} s each), replay ratio {SAMPLES_PER_INSERT:g} "
          f"samples per env step, learning after {args.learning_starts} steps:")
    if classic:
        print(f"  {'train.py (keras-rl)':<42} {classic['env_steps_per_s']:8.1f} env steps/s  "
              f"{classic['updates_per_s']:6.1f} upd/s  (whole run {classic['env_steps_per_s_whole_run']:.1f} "
              f"env steps/s)")
    ok_runs = [r for r in result["launch"] if "error" not in r]
    for r in ok_runs:
        ratio = f"= {r['env_steps_per_s'] / classic['env_steps_per_s']:.2f}x" if classic else ""
        if not r["comparable"]:
            ratio += " (other batch size / replay ratio: not judged)"
        if abs(r["samples_per_insert_achieved"] / SAMPLES_PER_INSERT - 1) > 0.1:
            limited = r["learner_limited_env_steps_per_s"]
            ratio += (f"\n      achieved {r['samples_per_insert_achieved']:.2f} samples/insert, not "
                      f"{SAMPLES_PER_INSERT:g}: the explorers ran ahead within the driver's slack; at the replay "
                      f"ratio the learner allows {limited:.1f} env steps/s"
                      + (f" = {limited / classic['env_steps_per_s']:.2f}x" if classic else ""))
        print(f"  {'launch.py ' + r['config']:<42} "
              f"{r['env_steps_per_s']:8.1f} env steps/s  {r['updates_per_s']:6.1f} upd/s  (whole run "
              f"{r['env_steps_per_s_whole_run']:.1f} env steps/s) {ratio}")
        if r["cores_by_role"]:
            print("      cores in use mid-run: " + ", ".join(f"{k} {v:.2f}" for k, v in r["cores_by_role"].items())
                  + f" (of {m['cores']})")
    judged = [r for r in ok_runs if r["comparable"]]
    if classic and judged:
        best = max(judged, key=lambda r: r["env_steps_per_s"])
        ratio = best["env_steps_per_s"] / classic["env_steps_per_s"]
        ok = ratio >= TARGET
        result.update({"best": best["config"], "ratio": ratio, "target": TARGET,
                       "pass": ok})
        print(f"target: best launch.py ({result['best']}) >= {TARGET}x train.py env steps/s on "
              f"{m['cores']} cores: {ratio:.2f}x  {common.verdict(ok)}")
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
