"""CPU priority of acting processes.

At a fixed replay ratio the learner is the bottleneck of a run on few cores: every moment an
explorer holds a core one of the learner's threads is waiting for costs learner updates, and
env steps with them, while the explorers only need to keep up with the learner. So explorers
and the evaluator run at a lower CPU priority and take the CPU time the learner, the replay and
Ray leave. On nodes with cores to spare nothing changes.
"""

from __future__ import annotations

import os

from config import PRIORITIES


def yield_cpu(priority: str) -> str:
    """Lower every thread of this process, and so the threads it starts later, to ``priority``:

    - ``idle``: Linux's SCHED_IDLE policy: a thread of any other process that wakes up takes
      the core at once (elsewhere: as ``low``);
    - ``low``: nice 19, the lowest timesharing priority;
    - ``normal``: unchanged.

    Linux keeps the policy and nice value per thread, so the threads TensorFlow and Ray started
    before this call are set one by one. Returns what was applied.
    """
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {', '.join(PRIORITIES)}, not {priority!r}")
    if priority == "normal":
        return priority
    if priority == "idle" and not hasattr(os, "SCHED_IDLE"):
        priority = "low"
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # no /proc: the calling thread is all that can be reached
        tids = [0]
    for tid in tids:
        try:
            if priority == "idle":
                os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
            else:
                os.setpriority(os.PRIO_PROCESS, tid, 19)
        except OSError:  # a thread that ended meanwhile
            pass
    return priority
