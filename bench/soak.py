"""Soak test: run launch.py for a long time and record memory, object store use and throughput.

Every --sample-every seconds it records the resident memory (RSS) of the driver, the learner,
the replay and the explorers, the Ray object store's use and spilling, and the env/learner
step rates from the run's metrics.jsonl. At the end it prints a table and the growth of each
figure between the end of the warm-up (a quarter of the run) and the end: bounded memory means
that growth stays near zero once the replay is full.

    ./dqn python bench/soak.py                      # 30 minutes
    ./dqn python bench/soak.py --launch-defaults    # 30 minutes at launch.py's own defaults
    ./dqn python bench/soak.py --minutes 5 --json docs/bench/soak.json

Besides the per-role figures it lists every process of the run (this run's Ray only, not other
Ray instances on the machine) with its resident memory at the first and at the last sample.
"""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from bench import common  # noqa: E402

ROLES = {"ray::Learner": "learner", "ray::ReplayServer": "replay", "ray::Explorer": "explorers",
         "ray::Evaluator": "evaluator"}


def _own_raylets() -> set[int]:
    """PIDs of the raylet(s) of the Ray this process started (empty when it joined one)."""
    try:
        import ray

        return {p.process.pid for p in ray._private.worker._global_node.all_processes["raylet"]}
    except (AttributeError, KeyError):
        return set()


def processes(driver_pid: int) -> list[dict]:
    """``{pid, role, rss_mib}`` of the driver and of this run's actors, from /proc: only the
    workers of this run's own raylet when known (other Ray instances may run on the machine)."""
    raylets = _own_raylets()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = Path(f"/proc/{entry}/status").read_text()
        except OSError:
            continue
        ppid = re.search(r"PPid:\s+(\d+)", status)
        if int(entry) != driver_pid and raylets and (not ppid or int(ppid.group(1)) not in raylets):
            continue
        role = "driver" if int(entry) == driver_pid else next(
            (name for prefix, name in ROLES.items() if cmdline.startswith(prefix)), None
        )
        match = re.search(r"VmRSS:\s+(\d+) kB", status)
        if role and match:
            found.append({"pid": int(entry), "role": role, "rss_mib": round(int(match.group(1)) / 1024, 1)})
    return sorted(found, key=lambda p: (p["role"], p["pid"]))


def rss_by_role(procs: list[dict]) -> dict[str, float]:
    """Resident MiB per role (explorers summed)."""
    totals = {"driver": 0.0, "learner": 0.0, "replay": 0.0, "explorers": 0.0, "evaluator": 0.0}
    for p in procs:
        totals[p["role"]] += p["rss_mib"]
    return totals


def object_store() -> tuple[float, float]:
    """(MiB in the object store, MiB spilled to disk) from Ray's memory summary."""
    import ray
    from ray._private.internal_api import memory_summary

    # this run's own Ray: without the address Ray refuses when several instances run on the machine
    text = memory_summary(ray.get_runtime_context().gcs_address, stats_only=True)
    used = re.search(r"Plasma memory usage (\d+) MiB", text)
    spilled = re.search(r"Spilled (\d+) MiB", text)
    return float(used.group(1)) if used else 0.0, float(spilled.group(1)) if spilled else 0.0


def sampler(run_dir: Path, every: float, deadline: float, samples: list[dict], procs: list[list[dict]]) -> None:
    """Record a sample every ``every`` seconds; at the deadline, stop the run like Ctrl-C does."""
    import ray

    start = time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(min(every, max(0.0, deadline - time.monotonic())))
        metrics = run_dir / "metrics.jsonl"
        last = json.loads(metrics.read_text().splitlines()[-1]) if metrics.exists() and metrics.stat().st_size else {}
        if not ray.is_initialized():
            continue
        try:
            plasma, spilled = object_store()
        except Exception:  # the summary needs the raylet; skip a sample rather than stop the soak
            plasma, spilled = float("nan"), float("nan")
        now = processes(os.getpid())
        procs[1:] = [now] if procs else []
        if not procs:
            procs.append(now)
        samples.append({
            "minute": round((time.monotonic() - start) / 60, 2),
            **{f"rss_{k}_mib": round(v, 1) for k, v in rss_by_role(now).items()},
            "object_store_mib": plasma,
            "spilled_mib": spilled,
            "env_steps": last.get("env_steps"),
            "env_steps_per_s": last.get("env_steps_per_s"),
            "learner_steps_per_s": last.get("learner_steps_per_s"),
            "replay_size": last.get("replay_size"),
        })
        print(f"[soak] {samples[-1]}", flush=True)
    os.kill(os.getpid(), signal.SIGINT)


def main() -> int:
    parser = common.parser(__doc__)
    parser.add_argument("--minutes", type=float, default=30.0, help="how long to run (default: 30)")
    parser.add_argument("--sample-every", type=float, default=30.0, help="seconds between samples (default: 30)")
    parser.add_argument("--num-actors", type=int, default=1, help="explorers (default: 1)")
    parser.add_argument("--envs-per-actor", type=int, default=8, help="emulators per explorer (default: 8)")
    parser.add_argument("--replay-capacity", type=int, default=100_000,
                        help="replay size; small so that it fills and wraps during the soak (default: 100000)")
    parser.add_argument("--learning-starts", type=int, default=5_000,
                        help="agent steps before the learner starts (launch.py --learning-starts; "
                             "default: %(default)s)")
    parser.add_argument("--launch-defaults", action="store_true",
                        help="run launch.py at its own defaults (its preset, actors, replay): the four flags above "
                             "are not passed")
    parser.add_argument("--json", type=Path, help="write the samples and the summary here")
    args = parser.parse_args()

    import launch

    run_dir = Path(tempfile.mkdtemp(prefix="soak-")) / "run"
    sized = [] if args.launch_defaults else [
        "--num-actors", str(args.num_actors), "--envs-per-actor", str(args.envs_per_actor),
        "--replay-capacity", str(args.replay_capacity), "--learning-starts", str(args.learning_starts)]
    argv = [*sized, "--total-env-steps", "1000000000", "--log-every", str(min(10.0, args.sample_every)),
            "--run-dir", str(run_dir)]
    samples: list[dict] = []
    procs: list[list[dict]] = []  # the processes at the first and at the latest sample
    deadline = time.monotonic() + args.minutes * 60
    threading.Thread(target=sampler, args=(run_dir, args.sample_every, deadline, samples, procs),
                     daemon=True).start()
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    code = launch.main(argv)
    if len(samples) < 4:
        print("too few samples: run longer or sample more often", file=sys.stderr)
        return 1
    base = samples[len(samples) // 4]
    end = samples[-1]
    keys = [k for k in end if k.startswith(("rss_", "object_store", "spilled"))]
    growth = {k: round(end[k] - base[k], 1) for k in keys}
    print(f"\nsoak of {args.minutes} min started {started}, launch.py {' '.join(argv)}")
    print("| minute | env steps/s | learner steps/s | replay | driver MiB | learner MiB | replay MiB | "
          "explorers MiB | object store MiB | spilled MiB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for s in samples:
        print(f"| {s['minute']} | {s['env_steps_per_s']} | {s['learner_steps_per_s']} | {s['replay_size']} | "
              f"{s['rss_driver_mib']} | {s['rss_learner_mib']} | {s['rss_replay_mib']} | "
              f"{s['rss_explorers_mib']} | {s['object_store_mib']} | {s['spilled_mib']} |")
    print(f"growth from minute {base['minute']} to {end['minute']}: {growth}")
    first, last = procs[0], procs[-1]
    at_end = {p["pid"]: p["rss_mib"] for p in last}
    print(f"\n| process | pid | MiB at minute {samples[0]['minute']} | MiB at minute {end['minute']} |")
    print("|---|---|---|---|")
    for p in first:
        print(f"| {p['role']} | {p['pid']} | {p['rss_mib']} | {at_end.get(p['pid'], 'gone')} |")
    for p in last:
        if p["pid"] not in {q["pid"] for q in first}:
            print(f"| {p['role']} (new) | {p['pid']} | - | {p['rss_mib']} |")
    print(f"object store: {end['object_store_mib']} MiB used, {end['spilled_mib']} MiB spilled at the end")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"started": started, "argv": argv, "samples": samples,
                                         "growth_after_warmup": growth,
                                         "processes": {"first": first, "last": last}}, indent=2) + "\n")
    return code


if __name__ == "__main__":
    sys.exit(main())
