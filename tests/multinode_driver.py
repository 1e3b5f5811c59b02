"""launch.py on a multi-node Ray cluster on this machine, with a worker node killed mid-run.

Run by tests/test_cluster.py in a process of its own (one Ray per process, and the test session's
Ray lives in the pytest process); prints one line ``REPORT <json>`` for the test to check.

The cluster (``ray.cluster_utils.Cluster``): a head with the driver, the learner and the replay,
and three worker nodes with one ``explorer`` unit each. ``launch.main`` joins it by address, as
``python launch.py --address HOST:PORT`` would, with ``--explorer-resource explorer`` and 2
explorers: they land on two distinct workers and the third is spare. Once both have played, the
node of explorer 0 is killed without warning; Ray restarts the explorer on the spare node and the
run finishes. The nodes import the project only from the working_dir launch.py ships (the caller
leaves PYTHONPATH out of the environment).

    python tests/multinode_driver.py RUN_DIR
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # for this driver only: sys.path does not reach Ray's node processes

import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

import launch  # noqa: E402
from distributed.driver import Driver  # noqa: E402

NUM_EXPLORERS = 2
FAST_FAILURE_DETECTION = {"health_check_period_ms": 500, "health_check_failure_threshold": 3}


def _where(actor: Any) -> tuple[str, str]:
    """Run inside an actor (``__ray_call__``): its node, and the file its explorer code came from."""
    module = sys.modules.get("actors.explorer")
    return ray.get_runtime_context().get_node_id(), getattr(module, "__file__", "")


DRIVERS: list[Any] = []


class RecordingDriver(Driver):
    """launch.py's driver, also asking each explorer where it ran after every finished run."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.placements: list[dict] = []
        self.driver_node = ray.get_runtime_context().get_node_id()
        self.runtime_env = json.loads(ray.get_runtime_context().get_runtime_env_string())
        self.learner_node = ray.get(self.learner.__ray_call__.remote(_where), timeout=120)[0]
        self.replay_node = ray.get(self.replay.__ray_call__.remote(_where), timeout=120)[0]
        DRIVERS.append(self)

    def _explorer_done(self, i: int, ref: Any) -> None:
        before = self.env_steps
        super()._explorer_done(i, ref)
        if self.env_steps > before:  # the run succeeded: the explorer is idle until the loop restarts it
            try:
                node, code = ray.get(self.explorers[i].__ray_call__.remote(_where), timeout=120)
            except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
                return
            self.placements.append({"explorer": i, "node": node, "code": code, "env_steps": self.env_steps})


def _kill_a_worker(cluster: Cluster, workers: list, report: dict) -> None:
    """Once every explorer has finished a run, kill the node of explorer 0 without warning."""
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        driver = DRIVERS[0] if DRIVERS else None
        seen = {p["explorer"]: p["node"] for p in list(driver.placements)} if driver else {}
        if len(seen) == NUM_EXPLORERS:
            victim = next(w for w in workers if w.node_id == seen[0])
            report["removed_node"] = victim.node_id
            report["removed_at_env_steps"] = driver.env_steps
            cluster.remove_node(victim, allow_graceful=False)
            return
        time.sleep(0.1)


def main() -> int:
    run_dir = Path(sys.argv[1])
    report: dict[str, Any] = {}
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 2, "include_dashboard": False, "_system_config": FAST_FAILURE_DETECTION},
    )
    try:
        workers = [cluster.add_node(num_cpus=1, resources={"explorer": 1}) for _ in range(3)]
        report["head"] = cluster.head_node.node_id
        report["workers"] = [w.node_id for w in workers]
        killer = threading.Thread(target=_kill_a_worker, args=(cluster, workers, report), daemon=True)
        killer.start()
        start = time.monotonic()
        report["rc"] = launch.main([
            "--address", cluster.address, "--explorer-resource", "explorer",
            "--num-actors", str(NUM_EXPLORERS), "--envs-per-actor", "2", "--weight-sync-every", "100",
            "--total-env-steps", "3000", "--learning-starts", "400", "--replay-capacity", "4000",
            "--samples-per-insert", "1", "--batch-size", "32", "--updates-per-call", "10", "--learner-threads", "1",
            "--export-every", "1000", "--log-every", "1", "--run-dir", str(run_dir),
        ], driver_class=RecordingDriver)
        report["run_seconds"] = round(time.monotonic() - start, 1)  # launch.main joined and left Ray itself
        killer.join(timeout=5)
        driver = DRIVERS[0]
        report.update(placements=driver.placements, env_steps=driver.env_steps,
                      explorer_failures=driver.explorer_failures, learner_node=driver.learner_node,
                      replay_node=driver.replay_node, driver_node=driver.driver_node,
                      runtime_env=driver.runtime_env)
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
    from core.network import build_q_network
    from core.policy_file import PolicyFileError, check_policy_file

    try:
        check_policy_file(run_dir / "policy.h5", build_q_network(4))  # the default preset's plain network
        report["policy_ok"] = True
    except PolicyFileError as exc:
        report["policy_ok"] = str(exc)
    print("REPORT " + json.dumps(report), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
