"""Preflight: every check made before a run starts, so that bad input costs no work.

Flags and presets, the replay's fit in this machine's memory, a resumed run's saved settings
merged with the flags given now, and, for ``--address``, whether a Ray cluster answers there.
Each failure is a :class:`~distributed.LaunchError` with one line that says what to do; nothing
is written before these checks pass.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

from config import NO_SCHEDULE, Config, apply_preset
from distributed import LaunchError
from distributed.checkpoint import CHECKPOINT, REPLAY_FILE, CheckpointError, load_checkpoint
from distributed.raystart import job_runtime_env
from flags import check_ranges, check_run_dir, given_flags


def check_cluster(cfg: Config) -> None:
    """Fail fast, in one line, when no Ray cluster answers at ``--address`` (ray.init would
    otherwise retry for a minute and end in a traceback, after the run directory was made)."""
    import socket

    import ray
    from ray._common.network_utils import parse_address
    from ray._private import services

    if "working_dir" in job_runtime_env() and not Path(cfg.run_dir or "runs").is_absolute():
        raise LaunchError("a job sent with `ray job submit --working-dir` runs in a temporary folder: give an "
                          "absolute --run-dir (e.g. --run-dir /home/ubuntu/runs/breakout) to keep the results")
    if ray.is_initialized():
        return
    address = cfg.address
    hint = "start one with `ray up cluster.yaml` (see docs/cluster.md) or `ray start --head`, or leave out --address"
    target = address
    if address == "auto":
        try:
            target = services.get_ray_address_from_environment("auto", None)
        except ConnectionError:
            raise LaunchError(f"--address auto: no running Ray cluster found on this machine; {hint}") from None
    parsed = parse_address(target.removeprefix("ray://"))
    if parsed is None or not parsed[1].isdigit():
        raise LaunchError(f"--address {address}: expected auto or HOST:PORT of the head (port 6379 by default)")
    host, port = parsed
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        found = f" (found {target})" if target != address else ""
        why = exc.strerror or str(exc) or type(exc).__name__
        raise LaunchError(f"--address {address}{found}: no Ray cluster answers there ({why}); {hint}") from None
    if not target.startswith("ray://") and not is_ray_head(host, int(port)):  # ray.init would hang on it
        raise LaunchError(f"--address {address}: {host}:{port} answers, but not as a Ray head (it does not answer "
                          f"Ray's GetClusterId call); give the head's address, port 6379 unless it "
                          f"was started with another --port, or leave out --address")


GCS_PROBE_SECONDS = 10.0


def is_ray_head(host: str, port: int) -> bool:
    """Whether host:port serves Ray's GCS: its GetClusterId call (empty request) is answered. A web
    server or a database never answers it, and ray.init would wait on them for minutes. True
    without probing when Ray uses TLS, which a plain probe cannot speak."""
    import grpc

    if os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true"):
        return True
    with grpc.insecure_channel(f"{host}:{port}") as channel:
        call = channel.unary_unary("/ray.rpc.NodeInfoGcsService/GetClusterId")
        try:
            call(b"", timeout=GCS_PROBE_SECONDS)
        except grpc.RpcError as exc:  # a GCS that refuses us (token authentication) is still Ray's
            return exc.code() in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED)
    return True



MIN_AUTO_CAPACITY = 100_000  # the smallest replay a default is shrunk to (DQN still learns Breakout with it)


def available_memory() -> int | None:
    """Bytes the kernel says new processes can use without swapping (``MemAvailable``); None off Linux."""
    try:
        with open("/proc/meminfo") as f:
            info = dict(line.split(":", 1) for line in f)
        return int(info["MemAvailable"].split()[0]) * 1024
    except (OSError, KeyError, ValueError):
        return None


def actors_memory(learner: bool, explorers: int) -> float:
    """Bytes kept for the processes beside the replay on one node: TensorFlow in the learner (when it
    runs there), in each explorer that may run there, and in the driver or evaluator."""
    return (1.5e9 if learner else 0.0) + 0.8e9 * (explorers + 1)


def fit_memory(cfg: Config, chosen: bool) -> Config:
    """Make the replay fit this machine's available memory, checked before allocating it.

    A capacity the user chose (or a resumed run's) that does not fit is refused. The default
    shrinks to what fits, with a note, so that ``launch.py`` with no flags also runs on a laptop.
    """
    from replay.memory import ReplayMemory

    available = available_memory()
    if available is None:
        return cfg
    need = ReplayMemory.estimate_nbytes(cfg.replay_capacity, cfg.num_streams, prioritized=cfg.prioritized)
    headroom = actors_memory(learner=True, explorers=cfg.num_actors)  # one machine holds every actor
    if need + headroom <= available:
        return cfg
    per_transition = ReplayMemory.bytes_per_transition(prioritized=cfg.prioritized)
    fits = max(0, int((available - headroom) / per_transition))
    what = (f"--replay-capacity {cfg.replay_capacity:,} needs about {need / 1e9:.1f} GB but this machine has "
            f"{available / 1e9:.1f} GB available (with {headroom / 1e9:.1f} GB kept for the actors)")
    capacity = fits // 10_000 * 10_000
    if chosen or capacity < MIN_AUTO_CAPACITY:
        hint = "" if chosen else " or fewer --num-actors"
        raise LaunchError(f"{what}; use at most about {fits:,}{hint}")
    cfg = dataclasses.replace(cfg, replay_capacity=capacity)
    try:
        cfg.validate()
    except ValueError as exc:
        raise LaunchError(f"with the replay shrunk to fit memory ({capacity:,}): {exc}") from None
    print(f"note: the default {what}: using --replay-capacity {capacity:,} (give the flag to choose)", flush=True)
    return cfg


def resume_config(cfg: Config, argv: list[str] | None) -> tuple[Config, tuple[dict, dict]]:
    """The saved run's config with the flags given now on top, and its checkpoint."""
    run_dir = Path(cfg.resume)
    if not run_dir.is_dir():
        raise LaunchError(f"--resume {run_dir}: no such folder; give the run directory of an earlier launch.py run")
    try:
        saved = json.loads((run_dir / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        raise LaunchError(f"--resume {run_dir}: no readable config.json, so not a launch.py run directory") from None
    fields = {f.name for f in dataclasses.fields(Config)}
    if not isinstance(saved, dict) or not {"num_actors", "replay_capacity", "learning_starts"} <= set(saved):
        raise LaunchError(f"--resume {run_dir}: its config.json is from another program, not launch.py")
    # runs from before presets existed trained a plain network on 1-step uniform replay, and runs from before
    # the anneal flags existed (tuned's since 2026-12-07) a constant rate with beta over the whole run
    merged = {"dueling": False, "n_step": 1, "prioritized": False, **NO_SCHEDULE}
    merged.update({k: v for k, v in saved.items() if k in fields})
    given = given_flags(Config, argv)
    if "preset" in given:
        raise LaunchError(f"--resume {run_dir}: a resumed run keeps its settings; --preset is for new runs "
                          f"(give single flags to change single settings)")
    if "init_weights" in given:
        raise LaunchError(f"--resume {run_dir}: a resumed run continues from its checkpoint's networks; "
                          f"--init-weights is for new runs")
    if "dueling" in given and cfg.dueling != merged["dueling"]:
        raise LaunchError(f"--resume {run_dir}: its checkpoint holds a {'dueling' if merged['dueling'] else 'plain'} "
                          f"network; leave out --dueling (a new network needs a new run)")
    layout = ("replay_capacity", "num_actors", "envs_per_actor", "n_step", "prioritized")
    changed = [k for k in layout if k in given and getattr(cfg, k) != merged.get(k)]
    if merged.get("save_replay") and (run_dir / REPLAY_FILE).exists() and changed:
        flags = ", ".join("--" + k.replace("_", "-") for k in changed)
        raise LaunchError(f"--resume {run_dir}: its saved replay ({REPLAY_FILE}) was built for other {flags}; "
                          f"leave them out, or move {REPLAY_FILE} away to refill the replay")
    merged.update({k: getattr(cfg, k) for k in given})
    merged.update(run_dir=str(run_dir), resume=str(run_dir))
    try:
        new = Config(**merged)
        check_ranges(new)
        new.validate(merged=True)
        state = load_checkpoint(run_dir)
    except (ValueError, TypeError) as exc:
        raise LaunchError(f"--resume {run_dir}: {exc}") from None
    except CheckpointError as exc:
        raise LaunchError(str(exc)) from None
    driver = state[1]
    if driver.get("game") not in (None, new.game):
        raise LaunchError(f"--resume {run_dir}: the run plays {driver['game']}, not {new.game}")
    if driver["env_steps"] >= new.total_env_steps:
        raise LaunchError(
            f"{run_dir} already played {driver['env_steps']:,} of --total-env-steps {new.total_env_steps:,}; "
            f"pass a larger --total-env-steps to continue it"
        )
    ran = float(driver.get("wall_seconds", 0.0))
    if ran >= new.max_seconds:
        raise LaunchError(f"{run_dir} already ran {ran / 60:.1f} of --max-minutes {new.max_minutes:g}; pass a "
                          "larger --max-minutes to continue it")
    return new, state


def check_init_weights(cfg: Config) -> None:
    """--init-weights must hold this game's network (plain or --dueling): checked before Ray starts."""
    import kerasrl_compat
    from core.atari import make_env
    from core.network import build_q_network
    from core.policy_file import PolicyFileError, check_policy_file, is_dueling_file

    dueling = cfg.dueling
    try:
        dueling = is_dueling_file(cfg.init_weights)  # a missing or broken file, before TensorFlow loads
        probe = make_env(cfg.game, training=False)
        n_actions = int(probe.action_space.n)
        probe.close()
        kerasrl_compat.load_tensorflow()
        check_policy_file(cfg.init_weights, build_q_network(n_actions, dueling=cfg.dueling))
    except PolicyFileError as exc:
        hint = f"; it is {'a' if dueling else 'no'} dueling network: give --dueling {str(dueling).lower()}" \
            if dueling != cfg.dueling else ""
        raise LaunchError(f"--init-weights {exc}{hint}") from None


def prepare(cfg: Config, argv: list[str] | None) -> tuple[Config, tuple[dict, dict] | None]:
    """Every check that needs no Ray, done before anything is written."""
    from core.atari import UnknownGameError, rom_id  # here: --help does not load the emulator

    resume = None
    given: set[str] = set()
    if cfg.resume:
        cfg, resume = resume_config(cfg, argv)  # a resumed run keeps its resolved settings
    else:
        given = given_flags(Config, argv)
        cfg = apply_preset(cfg, given)
        try:
            check_ranges(cfg)
            cfg.validate()
        except ValueError as exc:
            raise LaunchError(f"with --preset {cfg.preset}: {exc}") from None
    try:
        rom_id(cfg.game)
    except UnknownGameError as exc:
        raise LaunchError(str(exc)) from None
    if cfg.init_weights and resume is None:
        check_init_weights(cfg)
    if cfg.address is None:
        cfg = fit_memory(cfg, chosen=resume is not None or "replay_capacity" in given)
    else:
        check_cluster(cfg)
    if resume is None:
        run_dir = Path(cfg.run_dir or time.strftime(f"runs/{cfg.game.lower()}-%Y%m%d-%H%M%S"))
        try:
            check_run_dir(run_dir, ("config.json", "policy.h5", CHECKPOINT),
                          f"continue it with --resume {run_dir}, or choose another --run-dir")
        except ValueError as exc:
            raise LaunchError(str(exc)) from None
        cfg = dataclasses.replace(cfg, run_dir=str(run_dir))
    return cfg, resume


def check_node_memory(cfg: Config) -> None:
    """On a cluster: the replay (on the driver's node, the head) and the actors that may run beside
    it must fit the memory Ray reports for that node, checked before anything is allocated. Unlike a
    local run's default, a cluster's replay is never shrunk: a head is chosen for its replay."""
    import ray

    from distributed.placement import alive_nodes, explorers_on, learner_node
    from replay.memory import ReplayMemory

    nodes = alive_nodes(cfg.explorer_resource)
    here = ray.get_runtime_context().get_node_id()
    mine = next(n for n in nodes if n.node_id == here)
    if not mine.memory:
        return
    beside = actors_memory(learner=learner_node(cfg, nodes, here).node_id == here, explorers=explorers_on(cfg, mine))
    need = ReplayMemory.estimate_nbytes(cfg.replay_capacity, cfg.num_streams, prioritized=cfg.prioritized)
    if need + beside <= mine.memory:
        return
    fits = max(0, int((mine.memory - beside) / ReplayMemory.bytes_per_transition(prioritized=cfg.prioritized)))
    raise LaunchError(f"--replay-capacity {cfg.replay_capacity:,} needs about {need / 1e9:.1f} GB, but Ray gives "
                      f"{mine.memory / 1e9:.1f} GB to actors on the driver's node {mine.name}, where the replay "
                      f"lives (with {beside / 1e9:.1f} GB kept for the actors beside it); use --replay-capacity at "
                      f"most about {fits:,}, or a head with more memory")


def check_gpus(cfg: Config) -> None:
    """The learner would wait forever for a GPU the cluster lacks, and every explorer with it."""
    import ray

    gpus = ray.cluster_resources().get("GPU", 0.0)
    if cfg.learner_gpus > gpus:
        raise LaunchError(f"--learner-gpus {cfg.learner_gpus:g}: the cluster has {gpus:g} GPU(s) (see `ray status`); "
                          "leave the flag out, or start the head on a GPU machine (docs/cluster.md)")
