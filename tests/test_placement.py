"""The placement rule (distributed/placement.py) as plain arithmetic: a local run's numbers, which
every local benchmark and learning curve was measured with, and a cluster's, node by node."""

from __future__ import annotations

import math

import pytest

from config import Config
from distributed import placement
from distributed.placement import Node


def _local(cores: int, **flags: object) -> placement.LearnerPlan:
    """What launch.py decides on a machine with ``cores`` cores and no --address: one local node."""
    cfg = Config(**{"num_actors": max(1, cores - 1), **flags})
    ray_cpus = placement.local_ray_cpus(cfg, cores)
    node = Node("n" * 56, "127.0.0.1", cpus=float(ray_cpus))
    cpus = placement.explorer_cpus(cfg, ray_cpus)
    return placement.plan_learner(cfg, node, cluster=False, beside_driver=True, explorer_cpus=cpus)


@pytest.mark.parametrize("cores", [2, 4, 8, 16])
def test_local_default_run_gives_each_explorer_a_core_and_the_learner_the_last_one(cores: int) -> None:
    """The default run has one explorer per core but one (config.default_num_actors); each reserves
    a whole CPU, and the learner gets the one core left: 1 thread, whatever the machine."""
    plan = _local(cores)
    assert plan.explorer_cpus == 1.0
    assert plan.explorers_here == cores - 1
    assert plan.threads == cores - (cores - 1) * 1
    assert plan.services == {}


@pytest.mark.parametrize(("cores", "actors", "explorer_cpus"), [
    (2, 1, None), (4, 1, None), (8, 2, None), (16, 1, None), (16, 7, None), (16, 64, None), (2, 5, None),
    (2, 2, 0.5), (4, 3, 0.3), (8, 3, 2.0), (4, 3, 2.0),
])
def test_local_numbers_follow_the_rule_they_were_measured_with(cores: int, actors: int,
                                                               explorer_cpus: float | None) -> None:
    """Local Ray gets max(cores, explorers + 1) CPUs; an explorer reserves --explorer-cpus, else
    min(1, (CPUs - 1) / explorers); the learner's threads are the CPUs all explorers leave, floored,
    at least 1, at most the node's."""
    cfg_cpus = max(cores, actors + 1)
    share = explorer_cpus if explorer_cpus else min(1.0, (cfg_cpus - 1) / actors)
    threads = max(1, min(math.floor(cfg_cpus - actors * share + 1e-9), cfg_cpus))
    plan = _local(cores, num_actors=actors, explorer_cpus=explorer_cpus)
    assert plan.explorer_cpus == pytest.approx(share)
    assert plan.threads == threads
    assert plan.explorers_here == actors  # on one machine every explorer shares the learner's node


def test_the_test_sessions_two_cpu_ray_gives_explorers_a_share() -> None:
    """Tests run launch.py inside the session Ray of 2 CPUs: 3 explorers share the CPU the learner leaves."""
    cfg = Config(num_actors=3)
    assert placement.explorer_cpus(cfg, 2.0) == pytest.approx(1 / 3)
    node = Node("n" * 56, "127.0.0.1", cpus=2.0)
    assert placement.plan_learner(cfg, node, cluster=False, beside_driver=True, explorer_cpus=1 / 3).threads == 1


def _cluster_plan(head: Node, **flags: object) -> placement.LearnerPlan:
    cfg = Config(address="auto", **flags)
    cpus = placement.explorer_cpus(cfg, head.cpus)  # the cluster at submit: the head alone
    return placement.plan_learner(cfg, head, cluster=True, beside_driver=True, explorer_cpus=cpus)


def test_cluster_head_without_explorers_gives_the_learner_all_but_the_services() -> None:
    """cluster.yaml at submit: a 16-CPU head without `explorer`, 64 explorers that can only run on
    workers. Each explorer reserves 1 CPU (on a worker), none on the head; the learner keeps the head
    less one CPU each for the replay, the driver and the evaluator (without evaluations, two)."""
    head = Node("h" * 56, "10.0.0.1", cpus=16.0, explorer_units=0.0)
    plan = _cluster_plan(head, num_actors=64, explorer_resource="explorer")
    assert plan.explorer_cpus == 1.0 and plan.explorers_here == 0
    assert plan.threads == 16 - 3
    assert _cluster_plan(head, num_actors=64, explorer_resource="explorer", eval_every=0).threads == 16 - 2
    line = plan.describe()
    assert "13 TensorFlow thread(s) on node 10.0.0.1" in line and "replay" in line and "evaluator" in line


def test_cluster_head_that_declares_explorers_keeps_their_cpus_too() -> None:
    head = Node("h" * 56, "10.0.0.1", cpus=16.0, explorer_units=4.0)
    plan = _cluster_plan(head, num_actors=64, explorer_resource="explorer")
    assert plan.explorers_here == 4 and plan.threads == 16 - 4 * 1 - 3
    assert _cluster_plan(head, num_actors=2, explorer_resource="explorer").explorers_here == 2


def test_cluster_without_explorer_resource_counts_every_explorer_on_the_learners_node() -> None:
    """Without --explorer-resource Ray may put any explorer on the head: all of them count there."""
    head = Node("h" * 56, "10.0.0.1", cpus=16.0)
    plan = _cluster_plan(head, num_actors=64)
    assert plan.explorer_cpus == pytest.approx(15 / 64) and plan.explorers_here == 64
    assert plan.threads == 1


def test_chosen_threads_win_and_a_gpu_learner_goes_to_a_gpu_node() -> None:
    head = Node("h" * 56, "10.0.0.1", cpus=16.0)
    gpu = Node("g" * 56, "10.0.0.2", cpus=8.0, gpus=1.0)
    assert _cluster_plan(head, learner_threads=5).threads == 5
    cfg = Config(address="auto", learner_gpus=1.0, explorer_resource="explorer")
    assert placement.learner_node(cfg, [head, gpu], head.node_id) == gpu
    assert placement.learner_node(Config(address="auto"), [head, gpu], head.node_id) == head
    # away from the driver's node nothing of ours but the learner (and explorers it may host) runs
    plan = placement.plan_learner(cfg, gpu, cluster=True, beside_driver=False, explorer_cpus=1.0)
    assert plan.services == {} and plan.threads == 8


def test_explorers_without_a_node_are_told_from_those_still_starting() -> None:
    """3 explorers, 1 running; the cluster's 2 `explorer` units are both held: one by the running
    explorer, one by an explorer still starting, so 1 of the 2 pending has no node."""
    cfg = Config(num_actors=3, explorer_resource="explorer")
    total, free = {"CPU": 32.0, "explorer": 2.0}, {"CPU": 29.0, "explorer": 0.0}
    assert placement.unplaced(cfg, 2, 1.0, free, total) == 1
    assert placement.unplaced(cfg, 2, 1.0, free, {**total, "explorer": 3.0}) == 0  # room for all: starting
    assert placement.unplaced(cfg, 3, 1.0, {"CPU": 16.0}, {"CPU": 16.0}) == 3  # no node with the resource
    # without --explorer-resource: CPUs held beside the learner's 1 belong to explorers at 0.5 each
    plain = Config(num_actors=3)
    assert placement.unplaced(plain, 2, 0.5, {"CPU": 0.5}, {"CPU": 2.0}) == 2  # 0.5 held: the running one
    assert placement.unplaced(plain, 2, 0.5, {"CPU": 0.0}, {"CPU": 2.0}) == 1  # one more holds its share
