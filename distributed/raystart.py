"""Starting or joining Ray: the one place it is done, for launch.py, bench/ and tests/.

A local Ray gets the project's process environment (legacy Keras, quiet TensorFlow, no usage
stats) in every worker. Joining a cluster also ships the project's code as Ray's
``working_dir``, so every node runs exactly the driver's code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import kerasrl_compat
from distributed import LaunchError

#: The folder the driver imports the project from: with --address it travels to every node.
CODE_ROOT = Path(kerasrl_compat.__file__).resolve().parent
#: What stays behind (Ray also skips .git, .venv, __pycache__ and what .gitignore lists).
CODE_EXCLUDES = [".git", ".venv", "runs", "tests", "bench", "docs", "*.h5", "*.npz", "*.gif"]


def job_runtime_env() -> dict[str, Any]:
    """The runtime env ``ray job submit`` gave this driver ({} when not run as a Ray job)."""
    return json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "{}").get("runtime_env") or {}


def cluster_runtime_env() -> dict[str, Any]:
    """Ray runtime environment for joining a cluster.

    The project's code goes to every node as Ray's ``working_dir``, so explorers on any node run
    exactly the driver's code, and a node needs only the pinned packages. A job started with
    ``ray job submit --working-dir`` already ships its code (and maybe env vars): those are kept,
    because Ray refuses a driver runtime env that redefines them.
    """
    job = job_runtime_env()
    taken = job.get("env_vars") or {}
    env: dict[str, Any] = {"env_vars": {k: v for k, v in kerasrl_compat.PROCESS_ENV.items() if k not in taken}}
    if "working_dir" not in job:
        env.update(working_dir=str(CODE_ROOT), excludes=CODE_EXCLUDES)
    return env


def start_ray(address: str | None = None, *, num_cpus: int | None = None, temp_dir: str | None = None,
              quiet: bool = True) -> bool:
    """Start a fresh local Ray (``address`` None) or join the cluster at ``address``.

    Returns False when Ray was already up in this process (tests, notebooks): the caller then
    leaves it running. ``quiet`` keeps workers' output in Ray's session logs, off the console.
    A cluster that cannot be joined is a :class:`LaunchError`.
    """
    import ray

    if ray.is_initialized():
        return False
    quiet_options: dict[str, Any] = {"logging_level": "error", "log_to_driver": False} if quiet else {}
    if address is None:
        extra = {"_temp_dir": temp_dir} if temp_dir else {}
        ray.init(address="local", num_cpus=num_cpus or os.cpu_count() or 2, include_dashboard=False,
                 runtime_env={"env_vars": dict(kerasrl_compat.PROCESS_ENV)}, **quiet_options, **extra)
        return True
    if "RAY_AUTH_MODE" not in os.environ and (Path.home() / ".ray" / "auth_token").exists():
        os.environ["RAY_AUTH_MODE"] = "token"  # clusters started with a token (ours are) need it
    try:
        ray.init(address=address, runtime_env=cluster_runtime_env(), **quiet_options)
    except (ConnectionError, RuntimeError, ray.exceptions.RayError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise LaunchError(f"--address {address}: could not join the cluster ({first}); with token "
                          f"authentication, put the cluster's token in ~/.ray/auth_token") from None
    return True
