"""How busy this machine's cores are right now, without importing torch (used by ``runtime.threads: auto``
and by ``fedloom run``'s figure worker)."""

from __future__ import annotations

import os

__all__ = ["others_running", "usable_cores"]


def others_running() -> int | None:
    """Threads of other processes that are running or runnable right now, or None where unknown (not Linux).

    ``/proc/loadavg``'s fourth field counts the machine's runnable threads at this instant; this process's own
    (from ``/proc/self/task``) are taken off: each thread that runs just before or just after that reading,
    since an OpenMP worker spinning out its last parallel region may be counted there and asleep a moment later
    (read only once, afterwards, it showed up as another process's thread on an idle machine)."""
    try:
        before = _running_tasks()
        with open("/proc/loadavg", encoding="ascii") as f:
            running = int(f.read().split()[3].split("/")[0])
        ours = before | _running_tasks()
    except (OSError, ValueError, IndexError):
        return None
    return max(0, running - len(ours))


def _running_tasks() -> set[str]:
    """Ids of this process's threads that are running or runnable now."""
    out = set()
    for task in os.scandir("/proc/self/task"):
        try:
            with open(os.path.join(task.path, "stat"), encoding="ascii", errors="replace") as f:
                stat = f.read()
        except FileNotFoundError:  # the thread ended meanwhile
            continue
        if stat[stat.rindex(")") + 2 :].startswith("R"):
            out.add(task.name)
    return out


def usable_cores() -> int:
    """Cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1
