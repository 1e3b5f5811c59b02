"""A scaling model: agent steps/s and learner updates/s of named cluster shapes, computed from the
per-component rates the other bench/ scripts measured on this machine, with each shape's
bottleneck, how many explorers one learner can use, and a check against the end-to-end runs this
machine can make. Nothing measured is copied into this file: every rate is read from JSON.

Inputs (see docs/scaling.md for the commands that wrote them):
  --actor     bench/actor.py: one explorer's agent steps per CPU second by emulators K and precision
  --learner   bench/learner.py, one file per --threads (1 and 2): updates/s by batch and precision
  --replay    the replay actor's cost on its one core: seconds per inserted transition and per sampled
              batch (keys "insert_s_per_transition", "sample_s_per_batch": {batch: seconds}), or the
              JSON of bench/replay_ceiling.py (its many-writer ceiling), solved for the same two costs
  --validate  bench/end_to_end.py runs of launch.py here, set beside the model's prediction
  --gpu       optional: a bench/learner.py JSON measured on a GPU; without it the GPU head's learner
              is "not measured" and only its explorer and replay ceilings are given

The model: three ceilings on agent steps/s, the smallest is the bottleneck.
  learner    U(batch, precision, threads) x batch / ratio     (ratio = --samples-per-insert)
  explorers  cores given to explorers x E(K, precision) per core
  replay     1 / (t_insert + ratio / batch x t_sample(batch)): one process on one core
updates/s = agent steps/s x ratio / batch. U for more threads than measured follows Amdahl's law
fitted to the 1- and 2-thread figures. Per-core rates move to another CPU by the assumed factors
--core-speed, --c5-matmul-gflops and --ht-share (printed with every prediction).

    ./dqn python bench/scaling_model.py                      # tables for docs/scaling.md
    ./dqn python bench/scaling_model.py --markdown --json runs/bench/scaling_model.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench import common  # noqa: E402

BATCHES = (32, 64, 128, 256, 512)
RATIOS = (8.0, 4.0, 2.0, 1.0)
BENCH = common.ROOT / "docs" / "bench"
OTHER_CORES = 0.1  # ASSUMED: driver, evaluator and Ray's own processes on this machine (end_to_end.py's
#                    cores by role showed 0.06-0.1 in docs/benchmarks.md's runs)


def _read(path: str) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise SystemExit(f"error: cannot read {path} ({exc.__class__.__name__}); write it with the command "
                         "docs/scaling.md gives for it, or point the flag at another file") from None


def _precision(name: str, machine: dict) -> str:
    """``auto`` as the measuring machine resolved it: bfloat16 where it had AVX-512 BF16."""
    if name != "auto":
        return name
    return "bfloat16" if "avx512_bf16" in machine.get("flags", []) else "float32"


@dataclass
class Inputs:
    """The measured rates, keyed as the model asks for them."""

    explorer: dict[tuple[int, str], float]  # (K, precision) -> agent steps per CPU second, one core
    learner: dict[tuple[int, str, int], tuple[float, float]]  # (batch, precision, threads) -> (upd/s, cores used)
    gpu: dict[int, float]  # batch -> updates/s on the GPU (empty: not measured)
    t_insert: float  # replay core seconds per inserted transition
    t_sample: dict[int, float]  # batch -> replay core seconds per sampled batch
    matmul_per_core: float  # float32 matmul GFLOP per CPU second measured beside the learner
    sources: dict[str, str]
    machine: dict  # the machine the learner was measured on (bench/common.machine())
    serial: float | None = None  # Amdahl's serial share when given (--learner-serial), else fitted

    def explorer_rate(self, k: int, precision: str) -> float:
        if (k, precision) in self.explorer:
            return self.explorer[(k, precision)]
        ks = sorted(kk for kk, pr in self.explorer if pr == precision)
        if not ks:
            raise SystemExit(f"error: the actor JSON has no {precision} rows; rerun bench/actor.py with "
                             f"--precision auto,float32")
        nearest = min(ks, key=lambda kk: abs(kk - k))
        return self.explorer[(nearest, precision)]

    def updates(self, batch: int, precision: str, threads: float) -> float:
        """Learner updates/s with ``threads`` cores of this machine's speed (Amdahl beyond 2)."""
        u1 = self._measured(batch, precision, 1)
        if u1 is None:
            raise SystemExit(f"error: no 1-thread learner figure for {precision}; run bench/learner.py --threads 1 "
                             "with that precision (docs/scaling.md)")
        u2 = self._measured(batch, precision, 2) or u1
        serial = min(1.0, max(0.0, 2 * u1 / u2 - 1))  # from u2 = u1 / (s + (1 - s) / 2)
        if self.serial is not None:
            serial = self.serial
        t = max(1.0, threads)
        return u1 / (serial + (1 - serial) / t)

    def _measured(self, batch: int, precision: str, threads: int) -> float | None:
        """Updates/s measured at ``batch``; between two measured batches, the seconds per update
        interpolated linearly (an update's cost is about linear in the batch); None when unmeasured."""
        got = sorted((b, u) for (b, pr, t), (u, _) in self.learner.items() if pr == precision and t == threads)
        if not got:
            return None
        below = [(b, u) for b, u in got if b <= batch] or got[:1]
        above = [(b, u) for b, u in got if b >= batch] or got[-1:]
        (b0, u0), (b1, u1) = below[-1], above[0]
        if b0 == b1:
            return u0
        return 1.0 / (1 / u0 + (1 / u1 - 1 / u0) * (batch - b0) / (b1 - b0))

    def sample_seconds(self, batch: int) -> float:
        """Replay seconds per sampled batch: linear in the batch between (and beyond) measured sizes."""
        pts = sorted(self.t_sample.items())
        if batch in self.t_sample or len(pts) == 1:
            return self.t_sample.get(batch, pts[0][1] * batch / pts[0][0])
        (b0, s0), (b1, s1) = (pts[0], pts[-1])
        return s0 + (s1 - s0) * (batch - b0) / (b1 - b0)


def replay_costs(data: dict) -> tuple[float, dict[int, float]]:
    """Seconds of the replay's core per inserted transition and per sampled batch, from either form:
    the costs themselves, or bench/replay_ceiling.py's JSON (the ceiling: agent steps/s inserted while
    serving batches/s; its last row: batches/s sampled alone) solved for the two costs."""
    if "insert_s_per_transition" in data:
        return float(data["insert_s_per_transition"]), {int(b): float(t) for b, t in data["sample_s_per_batch"].items()}
    batch, alone = int(data["args"]["batch"]), float(data["rows"][-1]["batches_s"])
    ceiling = data["ceiling"]
    t_sample = 1.0 / alone
    return (1.0 - ceiling["batches_s"] * t_sample) / ceiling["inserted_steps_s"], {batch: t_sample}


def load(args: argparse.Namespace) -> Inputs:
    actor = _read(args.actor)
    explorer = {}
    for row in actor["explorer"].values():
        pr = _precision(row["precision"], actor["machine"])
        explorer[(int(row["envs"]), pr)] = row["steps_per_s"]["cpu"]["median"]
    learner: dict[tuple[int, str, int], tuple[float, float]] = {}
    peaks = []
    machine: dict = {}
    for path in args.learner.split(","):
        data = _read(path)
        machine = machine or data["machine"]
        peaks.append(data["matmul_peak"]["per_core"])
        threads = int(data["args"]["threads"]) or int(data["machine"]["cores"])
        for row in data["rows"]:
            if not row["double_dqn"]:
                continue  # the apex preset's update is double DQN
            wall, cpu = row["ours_updates_per_s"]["median"], row["ours_updates_per_cpu_s"]["median"]
            key = (int(row["batch"]), _precision(row["precision"], data["machine"]), threads)
            learner.setdefault(key, (wall, wall / cpu))  # first precision listed wins (auto before its twin)
    gpu = {}
    if args.gpu:
        for row in _read(args.gpu)["rows"]:
            if row["double_dqn"]:
                gpu[int(row["batch"])] = max(gpu.get(int(row["batch"]), 0.0), row["ours_updates_per_s"]["median"])
    t_insert, t_sample = replay_costs(_read(args.replay))
    return Inputs(explorer, learner, gpu, t_insert, t_sample, matmul_per_core=max(peaks), machine=machine,
                  sources={"actor": args.actor, "learner": args.learner, "replay": args.replay, "gpu": args.gpu or ""})


@dataclass
class Shape:
    """A place to run: the learner's node and the explorers' cores, in this machine's core units."""

    name: str
    explorers: int
    envs: int
    precision: str  # what the learner computes in (c5: float32, no AVX-512 BF16)
    learner_cores: float  # this-machine cores the learner's threads amount to (0: a GPU learner)
    explorer_core: float  # one explorer's speed as a fraction of one core here
    explorer_cores: float  # cores the explorers can use at most, in explorer units
    replay_core: float  # the replay's core as a fraction of one core here
    measured: bool = True  # False: the learner is not measured (GPU head without --gpu)
    explorer_precision: str = "float32"  # what the explorers' nodes compute in


def apex_batch(explorers: int) -> int:
    """The apex preset's batch for this many explorers (config._apex): 32 per 4, 512 at most."""
    from config import Config, apply_preset

    return apply_preset(Config(preset="apex", num_actors=explorers), set()).batch_size


def ceilings(inp: Inputs, s: Shape, batch: int, ratio: float) -> dict:
    """Agent steps/s each part allows, the predicted rate and its bottleneck."""
    if s.learner_cores == 0:
        u = inp.gpu.get(batch, float("nan")) if inp.gpu else float("nan")
    else:
        u = inp.updates(batch, s.precision, s.learner_cores)
    per_explorer = inp.explorer_rate(s.envs, s.explorer_precision) * s.explorer_core
    parts = {"learner": u * batch / ratio,
             "explorers": per_explorer * min(s.explorers, s.explorer_cores),
             "replay": s.replay_core / (inp.t_insert + ratio / batch * inp.sample_seconds(batch))}
    known = {k: v for k, v in parts.items() if v == v}  # NaN: the GPU learner, not measured
    neck = min(known, key=known.get)
    steps = known[neck]
    return {"batch": batch, "ratio": ratio, "ceilings": parts, "bottleneck": neck, "agent_steps_per_s": steps,
            "updates_per_s": steps * ratio / batch, "per_explorer": per_explorer,
            "explorers_learner_can_use": parts["learner"] / per_explorer if parts["learner"] == parts["learner"]
            else float("nan"), "learner_measured": s.measured}


def local_shape(inp: Inputs, explorers: int, envs: int, cores: int, precision: str) -> Shape:
    """This machine under launch.py's defaults: topology.learner_threads gives the learner the CPUs
    the explorers' reservations leave (1 here for 1 or 2 explorers); explorers run at idle priority on
    what the learner (its measured cores in use) and the replay leave."""
    share = min(1.0, max(0.01, (cores - 1.0) / explorers))
    threads = int(max(1, min(cores - explorers * share, cores)))
    used = inp.learner[(BATCHES[0], precision, min(threads, 2))][1]
    return Shape(f"this machine, {explorers} x {envs}", explorers, envs, precision, threads, 1.0,
                 max(0.0, cores - used - OTHER_CORES), 1.0, explorer_precision=precision)


def c5_shapes(args: argparse.Namespace) -> list[Shape]:
    """cluster.yaml's head (no 'explorer' resource: learner, replay, driver, evaluator) and N workers
    of 16 vCPUs with 16 'explorer' each; 16 vCPUs = 8 cores with two hyperthreads each."""
    learner_cores = (args.head_vcpus - args.head_reserved) / 2 * args.matmul_speed  # one thread per core
    out = []
    for n in (1, 4, 16):
        ex = args.worker_explorers * n
        out.append(Shape(f"c5.4xlarge head + {n} c5.4xlarge worker{'s' if n > 1 else ''}", ex, args.envs, "float32",
                         learner_cores, args.core_speed * args.ht_share, ex, args.core_speed))
    # a head of the CPU generation measured here (AMX-BF16: Sapphire Rapids or later, e.g. c7i.4xlarge):
    # its cores taken as fast as these, so the learner runs bfloat16 at the measured rates
    amx = (args.head_vcpus - args.head_reserved) / 2
    for n in (1, 4):
        ex = args.worker_explorers * n
        out.append(Shape(f"c7i.4xlarge (AMX) head + {n} c5.4xlarge worker{'s' if n > 1 else ''}", ex, args.envs,
                         "bfloat16", amx, args.core_speed * args.ht_share, ex, 1.0))
    out.append(Shape("GPU head + 4 c5.4xlarge workers", args.worker_explorers * 4, args.envs, "float32", 0,
                     args.core_speed * args.ht_share, args.worker_explorers * 4, args.core_speed,
                     measured=False))
    return out


def validate(inp: Inputs, paths: list[str]) -> list[dict]:
    rows = []
    for path in paths:
        data = _read(path)
        cores = int(data["machine"]["cores"])
        for run in data["launch"]:
            if "error" in run:
                continue
            precision = _precision("auto", data["machine"])
            shape = local_shape(inp, run["num_actors"], run["envs_per_actor"], cores, precision)
            flags = run.get("extra_flags", [])
            spi = float(flags[flags.index("--samples-per-insert") + 1]) if "--samples-per-insert" in flags else 8.0
            pred = ceilings(inp, shape, run["batch_size"], spi)
            rows.append({"config": run["config"], "file": path, "predicted": pred,
                         "measured_agent_steps_per_s": run["env_steps_per_s"],
                         "measured_updates_per_s": run["updates_per_s"],
                         "ratio_steps": run["env_steps_per_s"] / pred["agent_steps_per_s"],
                         "ratio_updates": run["updates_per_s"] / pred["updates_per_s"],
                         "cores_by_role": run.get("cores_by_role", {})})
    return rows


def _upd(c: dict) -> str:
    return f"{c['updates_per_s']:.1f}" if c["learner_measured"] else "n/m"


def _fmt(x: float) -> str:
    return "n/m" if x != x else f"{x:,.0f}"


def main(argv: list[str] | None = None) -> dict:
    p = common.parser(__doc__)
    p.add_argument("--actor", default=str(BENCH / "scaling_actor.json"),
                   help="bench/actor.py JSON (default: %(default)s)")
    p.add_argument("--learner", default=f"{BENCH / 'scaling_learner_t1.json'},{BENCH / 'scaling_learner_t2.json'}",
                   help="bench/learner.py JSONs, comma-separated, one per --threads (default: %(default)s)")
    p.add_argument("--replay", default=str(BENCH / "replay_ceiling.json"),
                   help="the replay's costs: bench/replay_ceiling.py's JSON (the many-writer ceiling) or a JSON of the "
                        "costs themselves, like scaling_replay.json (one caller) (default: %(default)s)")
    p.add_argument("--gpu", default="", help="bench/learner.py JSON measured on a GPU (default: none, not measured)")
    runs = ",".join(str(BENCH / f"scaling_e2e{x}.json") for x in ("", "_1x8", "_cluster"))
    p.add_argument("--validate", default=runs,
                   help="bench/end_to_end.py JSONs, comma-separated ('' for none) (default: %(default)s)")
    p.add_argument("--envs", type=int, default=8, help="emulators per explorer on a cluster, launch.py's default "
                   "(1-256, default: %(default)s)")
    p.add_argument("--head-vcpus", type=int, default=16,
                   help="vCPUs of the head (c5.4xlarge: 16; 2-256) (default: %(default)s)")
    p.add_argument("--head-reserved", type=int, default=2, help="head vCPUs kept from the learner: replay, driver "
                   "and evaluator (0-head vCPUs, default: %(default)s)")
    p.add_argument("--worker-explorers", type=int, default=16, help="explorers per worker (cluster.yaml's "
                   "'explorer' resource, one per vCPU) (default: %(default)s)")
    p.add_argument("--core-speed", type=float, default=0.8, help="ASSUMED: one c5 core (Xeon Skylake/Cascade Lake, "
                   "about 3.4 GHz) against one core here for emulator and Python work (0.1-2, default: %(default)s)")
    p.add_argument("--c5-matmul-gflops", type=float, default=86.0, help="ASSUMED: a c5 core's practical float32 "
                   "matmul, GFLOP/s (Xeon Platinum 8124M/8275CL: 2 AVX-512 FMA units = 32 FLOP/cycle at about 3.0 GHz "
                   "under AVX-512 load, 90%% of that); divided by the per-core matmul measured here (the learner "
                   "JSON) it carries the learner's rate to a c5 core (10-500, default: %(default)s)")
    p.add_argument("--ht-share", type=float, default=0.6, help="ASSUMED: what one vCPU gives when both "
                   "hyperthreads of its core are busy, as a fraction of the core alone (0.5-1, default: %(default)s)")
    p.add_argument("--learner-serial", type=float, default=None,
                   help="Amdahl's serial share of the learner's update (0-1; 0: perfect scaling over threads, 1: "
                        "none) instead of the share fitted to the 1- and 2-thread runs (default: fitted)")
    p.add_argument("--markdown", action="store_true", help="print the tables as Markdown (for docs/scaling.md)")
    args = common.parse(p, argv, json_path="")
    for name, lo, hi in (("core_speed", 0.1, 2), ("c5_matmul_gflops", 10, 500), ("ht_share", 0.5, 1)):
        if not lo <= getattr(args, name) <= hi:
            raise SystemExit(f"error: --{name.replace('_', '-')} must be in [{lo}, {hi}]")
    if args.learner_serial is not None and not 0 <= args.learner_serial <= 1:
        raise SystemExit("error: --learner-serial must be in [0, 1]")
    if not 0 <= args.head_reserved < args.head_vcpus:
        raise SystemExit("error: --head-reserved must be at least 0 and below --head-vcpus")
    try:
        inp = load(args)
    except (KeyError, IndexError, TypeError, ValueError) as exc:
        raise SystemExit(f"error: an input JSON lacks what the model reads ({exc.__class__.__name__}: {exc}); "
                         "give each flag the file its bench/ script wrote (see --help)") from None
    inp.serial = args.learner_serial
    args.matmul_speed = args.c5_matmul_gflops / inp.matmul_per_core
    got = [used for (_, _, t), (_, used) in inp.learner.items() if t == 2]
    if got and sum(got) / len(got) < 1.5:
        print(f"warning: the 2-thread learner run used {sum(got) / len(got):.2f} cores on average, not 2 (other load "
              "on the machine): its figures say little about threads; rerun bench/learner.py --threads 2 on a quiet "
              "machine")
    md = args.markdown
    sep = " | " if md else "  "

    def row(cells: list[str]) -> str:
        if md:
            return "| " + sep.join(cells) + " |"
        return f"{cells[0]:<40}" + sep + sep.join(f"{c:>12}" for c in cells[1:])

    def header(cells: list[str]) -> None:
        print(row(cells))
        if md:
            print("|" + "---|" * len(cells))

    print(f"assumptions: c5 core = {args.core_speed} x a core here (emulators, Python), {args.matmul_speed:.2f} x "
          f"(float32 matmul: {args.c5_matmul_gflops:g} against {inp.matmul_per_core:.0f} GFLOP/s measured); a vCPU "
          f"with its twin busy = {args.ht_share} of a core; c5 has no AVX-512 BF16, so "
          f"float32 throughout; learner threads on the head = ({args.head_vcpus} - {args.head_reserved}) vCPUs / 2")
    result: dict = {"inputs": inp.sources, "assumptions": {k: getattr(args, k) for k in
                                                           ("core_speed", "c5_matmul_gflops", "matmul_speed",
                                                            "ht_share", "head_vcpus",
                                                            "head_reserved", "worker_explorers", "envs")}}
    shapes = c5_shapes(args)
    here = local_shape(inp, 1, args.envs, int(inp.machine["cores"]), _precision("auto", inp.machine))
    print("\nPredictions with the apex preset (launch.py's defaults from 8 explorers on: ratio 8, batch 32 per 4 "
          "explorers, 512 at most); "
          "ceilings in agent steps/s; 'needed' = learner updates/s that would keep every explorer busy:")
    header(["shape", "explorers", "batch", "learner", "explorers", "replay", "agent steps/s", "updates/s",
            "bottleneck", "needed upd/s"])
    result["shapes"] = []
    for s in shapes:
        c = ceilings(inp, s, apex_batch(s.explorers), 8.0)
        per_ratio = {f"{r:g}": max((ceilings(inp, s, b, r) for b in BATCHES), key=lambda x: x["agent_steps_per_s"])
                     for r in RATIOS}
        result["shapes"].append({"shape": s.name, "explorers": s.explorers, "defaults": c, "best_per_ratio": per_ratio})
        neck = c["bottleneck"] + ("" if s.measured else " (learner n/m)")
        need = c["ceilings"]["explorers"] * c["ratio"] / c["batch"]
        print(row([s.name, str(s.explorers), str(c["batch"]), *(_fmt(c["ceilings"][k]) for k in
                                                              ("learner", "explorers", "replay")),
                   _fmt(c["agent_steps_per_s"]), _upd(c), neck, f"{need:,.0f}"]))
    print(f"\n`./dqn launch --preset apex` on one machine of N cores like this one's ({here.precision} learner, "
          "N - 1 explorers, the apex preset's batch for them, ratio 8):")
    header(["cores", "explorers", "batch", "learner threads", "agent steps/s", "updates/s", "bottleneck",
            "hours per 1M agent steps"])
    result["local_defaults"] = []
    for cores in (2, 4, 8, 16):
        s = local_shape(inp, cores - 1, args.envs, cores, here.precision)
        c = ceilings(inp, s, apex_batch(cores - 1), 8.0)
        result["local_defaults"].append({"cores": cores, "learner_threads": s.learner_cores, **c})
        print(row([str(cores), str(cores - 1), str(c["batch"]), f"{s.learner_cores:g}", _fmt(c["agent_steps_per_s"]),
                   _upd(c), c["bottleneck"], f"{1e6 / c['agent_steps_per_s'] / 3600:.1f}"]))
    print("\nEach shape at each replay ratio, with the batch (<= 512) that gives the most agent steps/s:")
    header(["shape", "ratio", "batch", "agent steps/s", "updates/s", "bottleneck", "explorers busy"])
    for s, r in zip(shapes, result["shapes"], strict=True):
        for ratio, b in r["best_per_ratio"].items():
            busy = min(s.explorers, b["agent_steps_per_s"] / b["per_explorer"])
            print(row([s.name, ratio, str(b["batch"]), _fmt(b["agent_steps_per_s"]), _upd(b), b["bottleneck"],
                       f"{busy:.1f} of {s.explorers}"]))
    result["explorers_per_learner"] = {}
    amx = next(sh for sh in shapes if sh.precision == "bfloat16")
    for name, shape in ((f"one c5.4xlarge-head learner (float32, {shapes[0].learner_cores:.1f} cores-here)", shapes[0]),
                        (f"one AMX-head learner (bfloat16, {amx.learner_cores:.1f} cores-here)", amx),
                        (f"this machine's learner ({here.precision}, 1 thread, explorers as fast as here)", here)):
        per = inp.explorer_rate(args.envs, shape.explorer_precision) * shape.explorer_core
        print(f"\nExplorers {name} can keep busy (one explorer: {per:,.0f} agent steps/s; '*': the replay's "
              f"ceiling is lower than the learner's, so fewer):")
        header(["ratio", *(f"batch {b}" for b in BATCHES)])
        table = result["explorers_per_learner"][shape.name] = {}
        for ratio in RATIOS:
            cells = []
            for b in BATCHES:
                c = ceilings(inp, shape, b, ratio)
                table[f"{ratio:g}/{b}"] = c["explorers_learner_can_use"]
                cells.append(f"{c['explorers_learner_can_use']:.1f}" + ("*" if c["ceilings"]["replay"] <
                                                                       c["ceilings"]["learner"] else ""))
            print(row([f"{ratio:g}", *cells]))
    if args.validate:
        rows = validate(inp, [x for x in args.validate.split(",") if x])
        result["validation"] = rows
        print("\nValidation on this machine (launch.py, bench/end_to_end.py), predicted vs measured:")
        header(["run", "predicted steps/s", "measured", "ratio", "predicted upd/s", "measured", "ratio",
                "bottleneck"])
        for v in rows:
            pr = v["predicted"]
            print(row([f"{v['config']} ({Path(v['file']).stem})", _fmt(pr["agent_steps_per_s"]),
                       _fmt(v["measured_agent_steps_per_s"]),
                       f"{v['ratio_steps']:.2f}", f"{pr['updates_per_s']:.1f}", f"{v['measured_updates_per_s']:.1f}",
                       f"{v['ratio_updates']:.2f}", pr["bottleneck"]]))
    common.write_json(args.json, result)
    return result


if __name__ == "__main__":
    main()
