"""Finding this test session's own Ray worker processes (to kill them in failure tests)."""

from __future__ import annotations


def session_actor_pids(title: str) -> list[int]:
    """PIDs of this test session's Ray workers whose process title starts with ``title``
    (e.g. ``ray::Explorer``): children of our own raylet only, never another session's."""
    import subprocess

    import ray

    raylets = {p.process.pid for p in ray._private.worker._global_node.all_processes["raylet"]}
    out = subprocess.run(["ps", "-eo", "pid=,ppid=,args="], capture_output=True, text=True).stdout
    pids = []
    for line in out.splitlines():
        pid, ppid, args = line.split(None, 2)
        if int(ppid) in raylets and args.startswith(title):
            pids.append(int(pid))
    return pids
