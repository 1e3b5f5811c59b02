"""The topology: which actor runs where, with which Ray options. The one place they are made.

    explorers (num_actors, anywhere)  --chunks-->  replay (driver's node)  --batches-->  learner
         ^                                                                                 |
         +-------------------------- weights (object store) <------------------------------+
    evaluator (driver's node, no CPU reserved): plays the newest weights now and then

The replay and the learner stay on the driver's node (the head of a cluster) unless the
learner asks for a GPU; explorers go wherever CPUs (or --explorer-resource) are free. Every
actor restarts on failure (``max_restarts=-1``); the driver notices and recovers. Explorers and
the learner find the replay by name, so a restarted one needs only its constructor arguments
(an actor handle argument would pin it in the object store). bench/ and tests/ build their
actors here too, so they measure what launch.py runs.
"""

from __future__ import annotations

import dataclasses
import uuid
from typing import Any

from config import Config

#: one TensorFlow thread each: explorers scale by processes and leave cores to the learner
ACTING_ENV = {"env_vars": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1"}}


@dataclasses.dataclass
class Topology:
    """The actors of one run, with what was chosen for them."""

    replay: Any
    replay_name: str
    learner: Any
    learner_threads: int
    explorers: list[Any]
    evaluator: Any | None

    def kill(self) -> None:
        import ray

        for handle in [*self.explorers, self.learner, self.replay, *([self.evaluator] if self.evaluator else [])]:
            ray.kill(handle)


def explorer_cpus(cfg: Config) -> float:
    """--explorer-cpus, or one CPU per explorer, or an even share of what Ray has beside the
    learner's CPU, so that every explorer is placed even when there are more explorers than cores."""
    import ray

    if cfg.explorer_cpus:
        return cfg.explorer_cpus
    total = ray.cluster_resources().get("CPU", 1.0)
    return min(1.0, max(0.01, (total - 1.0) / cfg.num_actors))


def learner_threads(cfg: Config, explorer_cpus: float) -> int:
    """--learner-threads, or by default the CPUs the explorers (``explorer_cpus`` each) leave
    free, at most one node's worth, at least 1. More threads than that compete with the
    explorers for cores, and the learner's thread barriers wait for preempted threads: on 2
    cores with 1 explorer, 1 thread gave 1.02x to 1.12x the updates of 2 end to end
    (docs/benchmarks.md)."""
    import ray

    if cfg.learner_threads:
        return cfg.learner_threads
    spare = ray.cluster_resources().get("CPU", 1.0) - cfg.num_actors * explorer_cpus
    largest = max((node["Resources"].get("CPU", 1.0) for node in ray.nodes() if node["Alive"]), default=1.0)
    return int(max(1, min(spare, largest)))


def _here(hard: bool) -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=not hard)


def replay_actor(capacity: int, num_streams: int, *, seed: int | None, n_step: int = 1,
                 priority_alpha: float | None = None, name: str | None = None) -> Any:
    """The replay memory as a Ray actor on this node. It needs no CPU, so it always fits here: it
    is pinned hard (Ray spreads 0-CPU actors with a soft affinity over a cluster's nodes, where
    losing a worker would lose it). A crashed replay restarts empty and is refilled."""
    import ray

    from replay.server import ReplayServer

    options: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": _here(hard=True), "max_restarts": -1}
    if name:
        options["name"] = name
    return ray.remote(ReplayServer).options(**options).remote(
        capacity, num_streams, seed=seed, n_step=n_step, priority_alpha=priority_alpha)


def learner_actor(cfg: Config, n_actions: int, replay: Any, threads: int, initial_weights: Any = None) -> Any:
    """The learner, with ``threads`` TensorFlow threads: on this node, or on a GPU node with
    --learner-gpus. ``replay`` is the replay's name (or a handle, in benchmarks). Both its networks
    start from ``initial_weights`` (--init-weights) when given; a restarted learner gets them again."""
    import ray

    from learner.learner import Learner

    options: dict[str, Any] = {
        "num_cpus": 1, "num_gpus": cfg.learner_gpus, "max_restarts": -1,
        "runtime_env": {"env_vars": {"TF_NUM_INTRAOP_THREADS": str(threads)}},
    }
    if not cfg.learner_gpus:
        options["scheduling_strategy"] = _here(hard=False)
    return ray.remote(Learner).options(**options).remote(cfg, n_actions, replay, initial_weights)


def explorer_actors(cfg: Config, replay: Any, generation: int, cpus: float, count: int | None = None) -> list[Any]:
    """``count`` (default --num-actors) explorers reserving ``cpus`` each; ``replay`` is the
    replay's name (or a handle, in benchmarks)."""
    import ray

    from actors.explorer import Explorer

    options: dict[str, Any] = {
        "num_cpus": cpus,
        "max_restarts": -1,  # a crashed explorer (or its lost node) comes back and plays on
        "max_task_retries": 0,  # ...but the run() it was in is lost: the driver just starts another
        "runtime_env": ACTING_ENV,
    }
    if cfg.explorer_resource:
        options["resources"] = {cfg.explorer_resource: 1}
    explorer = ray.remote(Explorer).options(**options)
    return [explorer.remote(cfg, i, replay, generation) for i in range(cfg.num_actors if count is None else count)]


def evaluator_actor(cfg: Config, n_actions: int, generation: int) -> Any:
    """The evaluator on this node. It reserves no CPU: it plays a few games now and then, beside
    the others."""
    import ray

    from actors.evaluator import Evaluator

    return ray.remote(Evaluator).options(
        num_cpus=0, max_restarts=-1, scheduling_strategy=_here(hard=False), runtime_env=ACTING_ENV
    ).remote(cfg.game, n_actions, dueling=cfg.dueling, epsilon=cfg.eval_epsilon, max_steps=cfg.eval_max_steps,
             seed=cfg.seed + 104_729 * (generation + 1), priority=cfg.explorer_priority)


def build(cfg: Config, n_actions: int, generation: int, initial_weights: Any = None) -> Topology:
    """Every actor of a run. ``generation`` counts resumes: each one gets new emulator and replay seeds;
    ``initial_weights``: the learner's networks at the start (--init-weights)."""
    name = f"replay-{uuid.uuid4().hex[:12]}"
    replay = replay_actor(cfg.replay_capacity, cfg.num_streams, seed=cfg.seed + 7919 * generation, n_step=cfg.n_step,
                          priority_alpha=cfg.priority_alpha if cfg.prioritized else None, name=name)
    cpus = explorer_cpus(cfg)
    threads = learner_threads(cfg, cpus)
    return Topology(
        replay=replay,
        replay_name=name,
        learner=learner_actor(cfg, n_actions, name, threads, initial_weights),
        learner_threads=threads,
        explorers=explorer_actors(cfg, name, generation, cpus),
        evaluator=evaluator_actor(cfg, n_actions, generation) if cfg.eval_every else None,
    )
