"""Helpers shared by the benchmarks: the raw-emulator reference rates, pinning, interleaved
timing, child processes, machine description and JSON output.

Every benchmark compares against a baseline measured in the same run on the same machine;
:func:`interleave` alternates the measured things round by round so that load from other
processes on a shared machine falls on all of them alike, and reports medians.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHILD_MARK = "BENCH-RESULT "  # a child process prints its result as one JSON line after this


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def pin(cores: Sequence[int] | None) -> list[int]:
    """Restrict this process (and threads it starts later) to ``cores``; return the cores it has."""
    if cores:
        os.sched_setaffinity(0, set(cores))
    return sorted(os.sched_getaffinity(0))


def parse_cores(text: str) -> list[int]:
    """``"0"`` or ``"0,1"`` -> [0] / [0, 1]; ``""`` -> [] (no pinning)."""
    return [int(c) for c in text.split(",") if c.strip()]


def tf_threads(n: int) -> Any:
    """Import TensorFlow with ``n`` intra-op and inter-op threads (must run before TF's first use).

    ``kerasrl_compat.load_tensorflow`` creates TF's devices at once, after which thread counts can
    no longer change; so the counts are set here between TF's import and its initialisation.
    """
    import kerasrl_compat

    with kerasrl_compat._filtered_stderr():
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(n)
    return kerasrl_compat.load_tensorflow()


# --- the raw emulator -------------------------------------------------------------------------
def _timed_loop(step: Callable[[], None], seconds: float) -> tuple[float, float]:
    """Call ``step`` (which does 64 agent steps) until ``seconds`` pass; return agent steps per
    wall-clock second and per CPU second of this process (see :func:`interleave`)."""
    n = 0
    c0, t0 = time.process_time(), time.perf_counter()
    while True:
        step()
        n += 64
        dt = time.perf_counter() - t0
        if dt >= seconds:
            return n / dt, n / max(time.process_time() - c0, 1e-9)


def layer_macs(model) -> list[tuple[str, int]]:
    """Multiply-adds per sample of each Conv2D / Dense layer of a built Keras model."""
    out = []
    for layer in model.layers:
        kind = type(layer).__name__
        if kind == "Conv2D":
            _, h, w, c_out = layer.output.shape
            kh, kw = layer.kernel_size
            out.append((layer.name, int(h * w * c_out * kh * kw * layer.input.shape[-1])))
        elif kind == "Dense":
            out.append((layer.name, int(layer.input.shape[-1] * layer.units)))
    return out


def ale_direct(seed: int = 0) -> Callable[[float], float]:
    """ale_py ALEInterface, Breakout, ``act()`` x4 per agent step, random minimal-set actions,
    no screen read, no preprocessing: the physical limit for acting."""
    import ale_py

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    ale = ale_py.ALEInterface()
    ale.setInt("random_seed", seed)
    ale.setFloat("repeat_action_probability", 0.0)
    ale.loadROM(ale_py.roms.get_rom_path("breakout"))
    actions = ale.getMinimalActionSet()
    draws = np.random.default_rng(seed).integers(0, len(actions), 1 << 16)
    pos = [0]

    def step64() -> None:
        i = pos[0]
        for j in range(64):
            a = actions[draws[(i + j) & 0xFFFF]]
            ale.act(a)
            ale.act(a)
            ale.act(a)
            ale.act(a)
            if ale.game_over():
                ale.reset_game()
        pos[0] = i + 64

    return lambda seconds: _timed_loop(step64, seconds)


def gym_raw(seed: int = 0) -> Callable[[float], float]:
    """gymnasium ``ALE/Breakout-v5``, frameskip 4, sticky actions off, RGB observations,
    ``action_space.sample()`` actions, reset at game end; no preprocessing."""
    import ale_py
    import gymnasium

    ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)
    gymnasium.register_envs(ale_py)
    env = gymnasium.make("ALE/Breakout-v5", frameskip=4, repeat_action_probability=0.0, obs_type="rgb")
    env.reset(seed=seed)
    env.action_space.seed(seed)

    def step64() -> None:
        for _ in range(64):
            _, _, term, trunc, _ = env.step(env.action_space.sample())
            if term or trunc:
                env.reset()

    return lambda seconds: _timed_loop(step64, seconds)


def ale_vector(seed: int = 0, num_envs: int = 32) -> Callable[[float], float]:
    """ale-py's own C++ vector env (``AtariVectorEnv``, one worker thread) with the DQN
    preprocessing done in C++: max-pooled skip 4, 84x84 gray (its own resize, not Pillow's),
    no-op starts, FIRE on reset, episodic life, clipping. The library alternative to our env."""
    from ale_py.vector_env import AtariVectorEnv

    env = AtariVectorEnv("breakout", num_envs=num_envs, num_threads=1, stack_num=1, noop_max=30,
                         use_fire_reset=True, episodic_life=True, reward_clipping=True,
                         repeat_action_probability=0.0)
    env.reset(seed=seed)
    draws = np.random.default_rng(seed).integers(0, int(env.single_action_space.n), (256, num_envs))
    assert 64 % num_envs == 0, "step64 counts 64 agent steps"
    pos = [0]

    def step64() -> None:
        i = pos[0]
        for j in range(64 // num_envs):
            env.step(draws[(i + j) & 0xFF])  # finished sub-envs reset themselves on their next step
        pos[0] = i + 64 // num_envs

    return lambda seconds: _timed_loop(step64, seconds)


def ours_env(seed: int = 0) -> Callable[[float], float]:
    """The project's training env (``core.atari.make_env(training=True)``): max-pooled frame
    skip 4, 84x84 grayscale via Pillow, no-op starts, FIRE on reset, episodic life, clipping."""
    from core.atari import make_env

    env = make_env("Breakout", training=True, seed=seed)
    env.reset()
    n = int(env.action_space.n)
    draws = np.random.default_rng(seed).integers(0, n, 1 << 16).tolist()
    pos = [0]

    def step64() -> None:
        i = pos[0]
        for j in range(64):
            _, _, term, trunc, _ = env.step(draws[(i + j) & 0xFFFF])
            if term or trunc:
                env.reset()
        pos[0] = i + 64

    return lambda seconds: _timed_loop(step64, seconds)


def interleave(measures: dict[str, Callable[[float], tuple[float, float]]], rounds: int, seconds: float,
               warmup: float = 0.5, log: Callable[[str], None] | None = None) -> dict[str, dict]:
    """Run each measurement for ``seconds`` in turn, ``rounds`` times (one short untimed warm-up
    call each first). Each returns ``(per wall second, per CPU second)``; the result holds, per
    name, :func:`summary` of each under ``"wall"`` and ``"cpu"``.

    Why both: on a shared machine other processes take turns on our core, which lowers the
    wall-clock rate but not the rate per CPU second this process actually got. For a process pinned
    to one core the CPU-second rate is the honest "per core" figure; the wall rate is what a user
    sees on this machine at that moment.
    """
    for fn in measures.values():
        fn(warmup)
    wall: dict[str, list[float]] = {k: [] for k in measures}
    cpu: dict[str, list[float]] = {k: [] for k in measures}
    for r in range(rounds):
        for name, fn in measures.items():
            w, c = fn(seconds)
            wall[name].append(w)
            cpu[name].append(c)
        if log:
            log(f"  round {r + 1}/{rounds} (wall | per CPU s): "
                + ", ".join(f"{k} {wall[k][-1]:,.0f} | {cpu[k][-1]:,.0f}" for k in measures))
    return {k: {"wall": summary(wall[k]), "cpu": summary(cpu[k])} for k in measures}


def rate_line(label: str, stats: dict, unit: str = "steps/s", extra: str = "") -> str:
    """``label  median unit [min..max]  extra`` for a :func:`summary` dict, or wall and CPU rates
    for an :func:`interleave` entry."""
    if "wall" in stats:
        w, c = stats["wall"], stats["cpu"]
        return (f"{label:<38} {w['median']:8,.0f} {unit} [{w['min']:,.0f}..{w['max']:,.0f}] wall, "
                f"{c['median']:8,.0f} per CPU s  {extra}").rstrip()
    return f"{label:<42} {stats['median']:9,.1f} {unit}  [{stats['min']:,.1f}..{stats['max']:,.1f}]  {extra}".rstrip()


def summary(values: Sequence[float]) -> dict:
    return {"median": float(np.median(values)), "min": float(np.min(values)), "max": float(np.max(values)),
            "samples": [float(v) for v in values]}


# --- child processes ----------------------------------------------------------------------------
def child_env() -> dict[str, str]:
    import kerasrl_compat

    env = dict(os.environ)
    env.update(kerasrl_compat.PROCESS_ENV)
    env["PYTHONPATH"] = str(ROOT) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    return env


def run_child(argv: Sequence[str], timeout: float, echo: bool = True) -> dict:
    """Run ``python argv...`` and return the JSON it printed after :data:`CHILD_MARK`.

    Lines without the mark are echoed (progress); a failure raises with the child's stderr tail.
    """
    proc = subprocess.Popen([sys.executable, *argv], cwd=ROOT, env=child_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise RuntimeError(f"child {argv} ran past {timeout:.0f} s; stderr tail:\n{err[-2000:]}") from None
    result = None
    for line in out.splitlines():
        if line.startswith(CHILD_MARK):
            result = json.loads(line[len(CHILD_MARK):])
        elif echo and line.strip():
            print(f"    | {line}", flush=True)
    if proc.returncode != 0 or result is None:
        raise RuntimeError(f"child {argv} failed (exit {proc.returncode}); stderr tail:\n{err[-3000:]}")
    return result


def child_report(result: dict) -> None:
    print(CHILD_MARK + json.dumps(result), flush=True)


# --- the machine and the results -------------------------------------------------------------------
def machine() -> dict:
    """CPU model, cores, RAM, the AVX-512/FMA flags, load average and the date: to go beside every figure."""
    model, flags = platform.processor() or "unknown", []
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name") and model in ("unknown", "x86_64", ""):
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags") and not flags:
                    flags = line.split(":", 1)[1].split()
                elif line.startswith("cpu MHz"):
                    mhz = float(line.split(":", 1)[1])
    except OSError:
        mhz = float("nan")
    try:
        with open("/proc/meminfo") as f:
            ram_gb = int(f.readline().split()[1]) / 1024**2
    except OSError:
        ram_gb = float("nan")
    wanted = ("avx2", "fma", "avx512f", "avx512_bf16", "avx512_vnni")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu": model,
        "cores": os.cpu_count(),
        "cpu_mhz": mhz,
        "ram_gb": round(ram_gb, 1),
        "flags": [f for f in wanted if f in flags],
        "loadavg_at_start": os.getloadavg(),
        "python": platform.python_version(),
    }


def print_machine(m: dict) -> None:
    print(f"machine: {m['cpu']}, {m['cores']} cores @ {m['cpu_mhz']:.0f} MHz, {m['ram_gb']} GB RAM, "
          f"{' '.join(m['flags'])}; load {m['loadavg_at_start'][0]:.2f}; {m['date']}")
    print("note: a shared machine (other processes run beside this one): figures are noisy; the ratios, "
          "measured side by side in this run, are what count")


def write_json(path: str | None, data: dict) -> None:
    if not path:
        return
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(json.dumps(data, indent=2) + "\n")
    print(f"results written to {p}")


ROLES = (("ray::LearnerClient", "learner client"), ("ray::SyntheticExplorers", "writers"),  # bench/replay_ceiling
         ("replay_ceiling.py", "driver"), ("ray::Learner", "learner"), ("ray::ReplayServer", "replay"),
         ("ray::Explorer", "explorers"), ("ray::Evaluator", "evaluator"), ("launch.py", "driver"),
         ("raylet", "Ray (raylet, GCS, ...)"), ("gcs_server", "Ray (raylet, GCS, ...)"))


def _cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def _processes_with_env(key: str, value: str) -> dict[int, str]:
    """pid -> command line of this user's processes whose environment has ``key=value``."""
    found = {}
    needle = f"{key}={value}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                if needle not in f.read().split(b"\0"):
                    continue
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                found[int(entry)] = f.read().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:  # gone, or another user's
            continue
    return found


def cpu_by_role(key: str, value: str, seconds: float) -> dict[str, float]:
    """Cores in use per role (learner, replay, explorers, driver, Ray's own processes, other) over
    ``seconds``, from /proc, for the processes of one run: those whose environment has ``key=value``
    (every process a run starts inherits it). Shows which role holds the CPU in an end-to-end run."""
    procs = _processes_with_env(key, value)

    def sample() -> dict[int, float]:
        out = {}
        for pid in procs:
            try:
                out[pid] = _cpu_seconds(pid)
            except OSError:
                pass
        return out

    t0, before = time.monotonic(), sample()
    time.sleep(seconds)
    dt, after = time.monotonic() - t0, sample()
    shares: dict[str, float] = {}
    for pid, cpu in after.items():
        if pid not in before:
            continue
        role = next((name for tag, name in ROLES if tag in procs[pid]), "other")
        shares[role] = shares.get(role, 0.0) + (cpu - before[pid]) / dt
    return {role: round(v, 3) for role, v in sorted(shares.items(), key=lambda kv: -kv[1])}


@contextmanager
def ray_session(num_cpus: int, quiet: bool = True) -> Iterator[Any]:
    """A fresh local Ray started as launch.py starts it (distributed.raystart), in a temporary folder
    of its own (sockets and logs), shut down and removed afterwards."""
    import shutil
    import tempfile

    import ray

    from distributed.raystart import start_ray

    tmp = tempfile.mkdtemp(prefix="rb", dir="/tmp")
    start_ray(num_cpus=num_cpus, temp_dir=tmp, quiet=quiet)
    try:
        yield ray
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)


def parser(doc: str | None, allow_abbrev: bool = True) -> argparse.ArgumentParser:
    """The argument parser every benchmark starts from: its docstring as the description, and bad
    input answered in one line (exit 2), not argparse's usage block."""
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter,
                                allow_abbrev=allow_abbrev)

    def error(message: str) -> None:
        print(f"{p.prog}: error: {message} (see --help)", file=sys.stderr)
        sys.exit(2)

    p.error = error  # type: ignore[method-assign]
    return p


def parse(p: argparse.ArgumentParser, argv: Sequence[str] | None, *, seed: str = "random seed",
          json_path: str | None | bool = None, timeout: float | None = None, child: Any = None) -> argparse.Namespace:
    """Add the flags every benchmark shares, then parse: --seed (``seed`` says what it seeds),
    --json (``json_path`` its default; False: none), --timeout for child processes (when given a
    default) and the internal --child (``child``: its choices, or True for a switch)."""
    p.add_argument("--seed", type=int, default=0, help=f"{seed} (default: %(default)s)")
    if timeout is not None:
        p.add_argument("--timeout", type=float, default=timeout,
                       help="seconds before a child process is killed (default: %(default)s)")
    if json_path is not False:
        default = " (default: %(default)s; '' for none)" if json_path else ""
        p.add_argument("--json", metavar="PATH", default=json_path,
                       help="also write the results as JSON to PATH" + default)
    if child is True:
        p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)  # internal: one child run
    elif child:
        p.add_argument("--child", choices=child, help=argparse.SUPPRESS)  # internal: one child run
    return p.parse_args(argv)

