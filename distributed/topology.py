"""The topology: which actor runs where, with which Ray options. The one place they are made.

    explorers (num_actors, anywhere)  --chunks-->  replay (driver's node)  --batches-->  learner
         ^                                                                                 |
         +-------------------------- weights (object store) <------------------------------+
    evaluator (driver's node, no CPU reserved): plays the newest weights now and then

The replay and the learner stay on the driver's node (the head of a cluster) unless the
learner asks for a GPU; explorers go wherever CPUs (or --explorer-resource) are free. How many
CPUs each reserves and the learner's threads: distributed/placement.py. Every
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
from distributed import placement

#: for every actor that holds no GPU: Ray 2.60 leaves a num_gpus=0 actor the node's
#: CUDA_VISIBLE_DEVICES (ray-project/ray#54868), so TensorFlow in an explorer would use, and take
#: memory on, the GPU Ray gave the learner
NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}
#: one TensorFlow thread each: explorers scale by processes and leave cores to the learner
ACTING_ENV = {"env_vars": {"TF_NUM_INTRAOP_THREADS": "1", "TF_NUM_INTEROP_THREADS": "1", **NO_GPU}}


@dataclasses.dataclass
class Topology:
    """The actors of one run, with what was chosen for them."""

    replay: Any
    replay_name: str
    learner: Any
    learner_plan: placement.LearnerPlan
    explorers: list[Any]
    evaluator: Any | None

    @property
    def learner_threads(self) -> int:
        return self.learner_plan.threads

    def kill(self) -> None:
        import ray

        for handle in [*self.explorers, self.learner, self.replay, *([self.evaluator] if self.evaluator else [])]:
            ray.kill(handle)


def _here(hard: bool, node_id: str | None = None) -> Any:
    """Pinned to ``node_id`` (default: the driver's node); ``hard``: there or nowhere."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    return NodeAffinitySchedulingStrategy(node_id or ray.get_runtime_context().get_node_id(), soft=not hard)


def replay_actor(capacity: int, num_streams: int, *, seed: int | None, n_step: int = 1,
                 priority_alpha: float | None = None, name: str | None = None) -> Any:
    """The replay memory as a Ray actor on this node. It needs no CPU, so it always fits here: it
    is pinned hard (Ray spreads 0-CPU actors with a soft affinity over a cluster's nodes, where
    losing a worker would lose it). A crashed replay restarts empty and is refilled."""
    import ray

    from replay.server import ReplayServer

    options: dict[str, Any] = {"num_cpus": 0, "scheduling_strategy": _here(hard=True), "max_restarts": -1,
                               "runtime_env": {"env_vars": dict(NO_GPU)}}
    if name:
        options["name"] = name
    return ray.remote(ReplayServer).options(**options).remote(
        capacity, num_streams, seed=seed, n_step=n_step, priority_alpha=priority_alpha)


def learner_env(cfg: Config, threads: int) -> dict[str, str]:
    """The learner's environment: its TensorFlow threads, and no GPU unless --learner-gpus gives it
    one (then Ray sets CUDA_VISIBLE_DEVICES to the GPU it reserved)."""
    return {"TF_NUM_INTRAOP_THREADS": str(threads), **({} if cfg.learner_gpus else NO_GPU)}


def learner_actor(cfg: Config, n_actions: int, replay: Any, threads: int, initial_weights: Any = None,
                  node_id: str | None = None) -> Any:
    """The learner, with ``threads`` TensorFlow threads, on ``node_id`` (default: this node; with
    --learner-gpus, a node with the GPUs), the node its threads were decided for: soft, so that a
    restart after losing that node finds another. ``replay`` is the replay's name (or a handle, in
    benchmarks). Both its networks start from ``initial_weights`` (--init-weights) when given; a
    restarted learner gets them again."""
    import ray

    from learner.learner import Learner

    options: dict[str, Any] = {
        "num_cpus": 1, "num_gpus": cfg.learner_gpus, "max_restarts": -1,
        "runtime_env": {"env_vars": learner_env(cfg, threads)},
    }
    if not cfg.learner_gpus or node_id:
        options["scheduling_strategy"] = _here(hard=False, node_id=node_id)
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
    ``initial_weights``: the learner's networks at the start (--init-weights). The learner's threads
    are decided for the node it is placed on (distributed.placement)."""
    import ray

    name = f"replay-{uuid.uuid4().hex[:12]}"
    replay = replay_actor(cfg.replay_capacity, cfg.num_streams, seed=cfg.seed + 7919 * generation, n_step=cfg.n_step,
                          priority_alpha=cfg.priority_alpha if cfg.prioritized else None, name=name)
    here = ray.get_runtime_context().get_node_id()
    nodes = placement.alive_nodes(cfg.explorer_resource)
    cpus = placement.explorer_cpus(cfg, ray.cluster_resources().get("CPU", 1.0))
    node = placement.learner_node(cfg, nodes, here)
    plan = placement.plan_learner(cfg, node, cluster=cfg.address is not None, beside_driver=node.node_id == here,
                                  explorer_cpus=cpus)
    return Topology(
        replay=replay,
        replay_name=name,
        learner=learner_actor(cfg, n_actions, name, plan.threads, initial_weights, node_id=node.node_id),
        learner_plan=plan,
        explorers=explorer_actors(cfg, name, generation, cpus),
        evaluator=evaluator_actor(cfg, n_actions, generation) if cfg.eval_every else None,
    )
