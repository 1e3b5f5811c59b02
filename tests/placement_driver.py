"""launch.py on a cluster shaped like cluster.yaml, with workers joining before and after it starts.

Run by tests/test_cluster.py in a process of its own (one Ray per process); prints one line
``REPORT <json>`` for the test to check, after launch.py's own output.

The cluster (``ray.cluster_utils.Cluster``, fake resources): a 16-CPU head without ``explorer``
and with 3 GB of Ray memory declared, and a worker of 16 CPUs and 2 ``explorer`` units that joins
before the driver starts. First a run whose replay cannot fit the head's memory is refused. Then
a run of 3 explorers: two fit the first worker, the third waits, and the driver says so; once it
has, a second worker (16 CPUs, 16 ``explorer``) joins with ``ray start --address`` and the third
explorer plays there.

    python tests/placement_driver.py RUN_DIR
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for this driver only: the nodes import the code launch.py ships

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import launch  # noqa: E402
from distributed.driver import Driver  # noqa: E402

HEAD_MEMORY = 3 * 1024**3
DRIVERS: list[Any] = []


def _explorer_where(actor: Any) -> dict:
    """Run inside an explorer (``__ray_call__``): its node and what it reserved there."""
    return {"node": ray.get_runtime_context().get_node_id(),
            "reserved": ray.get_runtime_context().get_assigned_resources()}


def _learner_where(actor: Any) -> dict:
    """Run inside the learner: its node, and the intra-op thread count TensorFlow read at its start
    (TF_NUM_INTRAOP_THREADS; tf.config.threading's getter reports only what was set through it)."""
    return {"node": ray.get_runtime_context().get_node_id(), "env_threads": os.environ.get("TF_NUM_INTRAOP_THREADS")}


class RecordingDriver(Driver):
    """launch.py's driver, also asking each explorer where it ran after every finished run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.placements: list[dict] = []
        self.learner_where = ray.get(self.learner.__ray_call__.remote(_learner_where), timeout=120)
        self.second_worker_at: float | None = None
        DRIVERS.append(self)

    def _explorer_done(self, i: int, ref: Any) -> None:
        before = self.env_steps
        super()._explorer_done(i, ref)
        if self.env_steps > before:
            where = ray.get(self.explorers[i].__ray_call__.remote(_explorer_where), timeout=120)
            self.placements.append({"explorer": i, **where, "env_steps": self.env_steps,
                                    "after_second_worker": self.second_worker_at is not None})


def _second_worker_joins(cluster: Cluster, report: dict, started: list) -> None:
    """Once the driver has said that an explorer waits for a node, a worker with room joins, the way
    a cluster.yaml worker does: ``ray start --address`` (cluster_utils cannot add a node from a thread
    other than the main one, which launch.py holds)."""
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        driver = DRIVERS[0] if DRIVERS else None
        if driver is not None and driver.placement.lines:
            report["env_steps_when_second_worker_joins"] = driver.env_steps
            known = {n["NodeID"] for n in ray.nodes()}
            started.append(subprocess.Popen(
                [str(Path(sys.executable).parent / "ray"), "start", "--address", cluster.address, "--num-cpus", "16",
                 "--resources", json.dumps({"explorer": 16}), "--block", "--disable-usage-stats"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
            while time.monotonic() < deadline:
                new = [n["NodeID"] for n in ray.nodes() if n["Alive"] and n["NodeID"] not in known]
                if new:
                    report["second_worker"] = new[0]
                    driver.second_worker_at = time.monotonic()
                    return
                time.sleep(0.2)
        time.sleep(0.2)


def main() -> int:
    run_dir = Path(sys.argv[1])
    report: dict[str, Any] = {}
    started: list[subprocess.Popen] = []
    cluster = Cluster(initialize_head=True,
                      head_node_args={"num_cpus": 16, "memory": HEAD_MEMORY, "include_dashboard": False})
    try:
        first = cluster.add_node(num_cpus=16, resources={"explorer": 2})
        report.update(head=cluster.head_node.node_id, first_worker=first.node_id)
        common = ["--address", cluster.address, "--explorer-resource", "explorer", "--num-actors", "3"]
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            report["refused_rc"] = launch.main([*common, "--replay-capacity", "1000000",
                                                "--run-dir", str(run_dir / "too-big")])
        report["refused_stderr"] = err.getvalue()
        report["refused_dir_exists"] = (run_dir / "too-big").exists()

        joiner = threading.Thread(target=_second_worker_joins, args=(cluster, report, started), daemon=True)
        joiner.start()
        report["rc"] = launch.main([
            *common, "--envs-per-actor", "1", "--weight-sync-every", "100", "--total-env-steps", "2500",
            "--learning-starts", "300", "--replay-capacity", "3000", "--samples-per-insert", "1", "--batch-size", "32",
            "--updates-per-call", "10", "--eval-every", "0", "--export-every", "1000", "--log-every", "5",
            "--run-dir", str(run_dir / "run"),
        ], driver_class=RecordingDriver)
        joiner.join(timeout=5)
        driver = DRIVERS[0]
        report.update(placements=driver.placements, env_steps=driver.env_steps, learner=driver.learner_where)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        for proc in started:  # `ray start --block` stops its node's processes when it is terminated
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        cluster.shutdown()
    print("REPORT " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
