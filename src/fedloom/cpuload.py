"""How busy this machine's cores are right now, without importing torch (used by ``runtime.threads: auto``
and by ``fedloom run``'s figure worker)."""

from __future__ import annotations

import os

__all__ = ["others_running", "usable_cores"]


def others_running() -> int | None:
    """Threads of other processes that are running or runnable right now, or None where unknown (not Linux).

    ``/proc/loadavg``'s fourth field counts the machine's runnable threads at this instant; this process's own
    (its own spinning OpenMP workers included, from ``/proc/self/task``) are taken off."""
    try:
        with open("/proc/loadavg", encoding="ascii") as f:
            running = int(f.read().split()[3].split("/")[0])
        ours = 0
        for task in os.scandir("/proc/self/task"):
            with open(os.path.join(task.path, "stat"), encoding="ascii", errors="replace") as f:
                stat = f.read()
            ours += stat[stat.rindex(")") + 2 :].startswith("R")
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - ours)


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1
