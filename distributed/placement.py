"""Placement: how many CPUs each explorer reserves, the learner's TensorFlow threads, decided for
the node the learner runs on, and a line while explorers wait for nodes that do not exist yet.

The rule, node by node (never from the cluster's totals, which change as workers join):

- an explorer reserves ``--explorer-cpus``; else, with ``--explorer-resource``, 1 CPU on a node that
  declares the resource; else an even share of Ray's CPUs beside the learner's (at most 1), so that
  every explorer is placed even when there are more explorers than cores;
- the learner's threads (``--learner-threads 0``) are its node's CPUs less what the other actors
  of this run may take there: the explorers that can be placed on it (with ``--explorer-resource``
  as many as the node declares units, else all of them: Ray may put any explorer anywhere) and,
  on a cluster, one CPU each for the replay, the driver (with Ray's own daemons) and the evaluator
  when they share the learner's node; at least 1.

On one machine (no ``--address``) the replay, the driver and the evaluator reserve nothing: the
explorers' shares already leave the learner its cores, and the explorers yield the CPU to the
others (``--explorer-priority idle``). These are the numbers every local benchmark and learning
curve was measured with (tests/test_placement.py pins them).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

from config import Config

#: CPUs set aside on a cluster node that runs the learner beside these (a thread more than the free
#: cores makes TensorFlow's thread barriers wait for a preempted thread: docs/benchmarks.md)
SERVICE_CPUS = {"replay": 1.0, "driver": 1.0, "evaluator": 1.0}


@dataclasses.dataclass(frozen=True)
class Node:
    """One alive Ray node as the rule sees it."""

    node_id: str
    address: str
    cpus: float
    gpus: float = 0.0
    explorer_units: float = 0.0  # of --explorer-resource; 0 without the flag
    memory: float = 0.0  # bytes Ray may give tasks and actors there (its "memory" resource)

    @property
    def name(self) -> str:
        return f"{self.address} ({self.node_id[:8]})"


def alive_nodes(explorer_resource: str | None) -> list[Node]:
    """The cluster's nodes now, as :class:`Node` (Ray must be up)."""
    import ray

    return [Node(node_id=n["NodeID"], address=n["NodeManagerAddress"], cpus=n["Resources"].get("CPU", 0.0),
                 gpus=n["Resources"].get("GPU", 0.0),
                 explorer_units=n["Resources"].get(explorer_resource, 0.0) if explorer_resource else 0.0,
                 memory=n["Resources"].get("memory", 0.0))
            for n in ray.nodes() if n["Alive"]]


def local_ray_cpus(cfg: Config, cores: int) -> int:
    """CPUs of the local Ray launch.py starts: --num-cpus or the machine's cores, and at least one per
    explorer plus the learner's, so that every explorer has a whole CPU to reserve."""
    return max(cfg.num_cpus or cores, cfg.num_actors + 1)


def explorer_cpus(cfg: Config, ray_cpus: float) -> float:
    """CPUs one explorer reserves; ``ray_cpus``: Ray's CPUs at the start (used only without
    --explorer-resource, where explorers may share any node)."""
    if cfg.explorer_cpus:
        return cfg.explorer_cpus
    if cfg.explorer_resource:
        return 1.0
    return min(1.0, max(0.01, (ray_cpus - 1.0) / cfg.num_actors))


def explorers_on(cfg: Config, node: Node) -> int:
    """Explorers of this run that may be placed on ``node``: as many as it has --explorer-resource
    units, else every one."""
    if cfg.explorer_resource:
        return min(cfg.num_actors, int(node.explorer_units))
    return cfg.num_actors


@dataclasses.dataclass(frozen=True)
class LearnerPlan:
    """The learner's node and threads, with what was set aside there."""

    node: Node
    threads: int
    explorers_here: int
    explorer_cpus: float
    services: dict[str, float]
    chosen: bool  # --learner-threads given

    def describe(self) -> str:
        """The start-up line's words for it."""
        where = f"{self.threads} TensorFlow thread(s) on node {self.node.name}"
        if self.chosen:
            return f"{where} (--learner-threads)"
        kept = [f"{self.explorers_here} explorer(s) x {self.explorer_cpus:g} CPU"] if self.explorers_here else []
        kept += [f"{cpus:g} for the {what}" for what, cpus in self.services.items()]
        return f"{where} (auto: its {self.node.cpus:g} CPUs less {', '.join(kept) or 'nothing'})"


def plan_learner(cfg: Config, node: Node, *, cluster: bool, beside_driver: bool, explorer_cpus: float) -> LearnerPlan:
    """The learner's threads on ``node``. ``cluster``: joined with --address; ``beside_driver``:
    the node is the driver's (the replay and the evaluator live there too)."""
    here = explorers_on(cfg, node)
    services: dict[str, float] = {}
    if cluster and beside_driver:
        services = {k: v for k, v in SERVICE_CPUS.items() if k != "evaluator" or cfg.eval_every}
    spare = node.cpus - here * explorer_cpus - sum(services.values())
    threads = cfg.learner_threads or int(max(1, min(spare, node.cpus)))
    return LearnerPlan(node, threads, here, explorer_cpus, services, chosen=bool(cfg.learner_threads))


def learner_node(cfg: Config, nodes: list[Node], driver_node: str) -> Node:
    """The node the learner is placed on: the driver's, or with --learner-gpus the driver's if it has
    the GPUs, else the first that does (launch.py checked that one exists)."""
    mine = next(n for n in nodes if n.node_id == driver_node)
    if not cfg.learner_gpus or mine.gpus >= cfg.learner_gpus:
        return mine
    return next((n for n in nodes if n.gpus >= cfg.learner_gpus), mine)


def node_of(actor: Any) -> str:
    """Run inside an actor (``__ray_call__``): its node id."""
    import ray

    return ray.get_runtime_context().get_node_id()


def unplaced(cfg: Config, pending: int, explorer_cpus: float, free: dict, total: dict) -> int:
    """How many of the ``pending`` explorers (not running yet) have no node: those beyond the ones
    that hold their resources already and are still starting. Held units of --explorer-resource are
    all this run's explorers'; without the flag, the CPUs held beside the learner's 1 are counted as
    explorers' (other work on the cluster can only make this say fewer)."""
    key, beside = (cfg.explorer_resource, 0.0) if cfg.explorer_resource else ("CPU", 1.0)
    per = 1.0 if cfg.explorer_resource else explorer_cpus
    holding = int((total.get(key, 0.0) - free.get(key, 0.0) - beside) / per + 1e-9)
    starting = max(0, holding - (cfg.num_actors - pending))
    return max(0, pending - starting)


class ExplorerWatch:
    """Notices explorers that Ray cannot place and says so: a line once they have waited ``first``
    seconds, again every ``repeat`` seconds or when their number changes, and one when all of them
    run. A cluster started with workers at 0 (cluster.yaml's ``min_workers``) holds its explorers
    until the autoscaler adds nodes; without the line the run just looks stuck."""

    def __init__(self, cfg: Config, explorers: list[Any], explorer_cpus: float, *, first: float = 10.0,
                 repeat: float = 60.0, say: Callable[[str], None] | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.cfg, self.explorer_cpus, self.first, self.repeat = cfg, explorer_cpus, first, repeat
        self.say = say or (lambda line: print(line, flush=True))
        self.clock = clock
        self.pending: dict[Any, int] = {}  # probe -> explorer index
        self.nodes: dict[int, str] = {}  # explorer index -> the node it last started on
        self.since = clock()
        self.last_line: float | None = None
        self.last_count = 0
        self.lines = 0  # waiting lines said so far
        self.waited = False  # a waiting line was said since every explorer last ran
        self.last_poll = 0.0
        for i, handle in enumerate(explorers):
            self.watch(i, handle)

    def watch(self, i: int, handle: Any) -> None:
        """Watch explorer ``i`` until it runs (again, after Ray restarts it)."""
        if not self.pending:
            self.since = self.clock()
        self.pending[handle.__ray_call__.remote(node_of)] = i

    def need(self) -> str:
        what = f"{self.explorer_cpus:g} CPU"
        return what + (f" and 1 '{self.cfg.explorer_resource}'" if self.cfg.explorer_resource else "")

    def poll(self, now_or_never: bool = False) -> None:
        """Check, at most once a second (``now_or_never``: now, at the end of the loop), which watched
        explorers run now; say what needs saying."""
        import ray

        now = self.clock()
        if self.cfg.address is None or not self.pending or (now - self.last_poll < 1.0 and not now_or_never):
            return  # on one machine every explorer fits: Ray gets a CPU share for each
        self.last_poll = now
        ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=0)
        for ref in ready:
            i = self.pending.pop(ref)
            try:
                self.nodes[i] = ray.get(ref)
            except ray.exceptions.RayError:
                pass  # it died starting: Ray restarts it, and the driver watches it again
        if not self.pending:
            if self.waited:
                per_node: dict[str, int] = {}
                for node in self.nodes.values():
                    per_node[node[:8]] = per_node.get(node[:8], 0) + 1
                spread = ", ".join(f"{k}: {v}" for k, v in sorted(per_node.items()))
                self.say(f"explorers placed: all {self.cfg.num_actors} run (explorers per node: {spread})")
                self.waited = False
            return
        if now - self.since < self.first:
            return
        free = ray.available_resources()
        waiting = unplaced(self.cfg, len(self.pending), self.explorer_cpus, free, ray.cluster_resources())
        due = self.last_line is None or now - self.last_line >= self.repeat or waiting != self.last_count
        if not waiting or not due:
            return
        units = f", {free.get(self.cfg.explorer_resource, 0.0):g} '{self.cfg.explorer_resource}'" \
            if self.cfg.explorer_resource else ""
        self.say(f"waiting for nodes: {waiting} of {self.cfg.num_actors} explorer(s) not placed after "
                 f"{now - self.since:.0f} s; each needs {self.need()} on one node (free now: "
                 f"{free.get('CPU', 0.0):g} CPU{units} over {len(alive_nodes(None))} node(s)); they start when "
                 f"a node with room joins (`ray status` lists the demand)")
        self.last_line, self.last_count = now, waiting
        self.lines += 1
        self.waited = True
