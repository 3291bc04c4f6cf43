"""How much CPU a process used, and how long it waited for one: the context of a figure on a busy machine.

On a shared 2-core machine a latency can be long because the code is slow or because the process was
runnable and no core was free. `/proc/PID/stat` gives the CPU time used; `/proc/PID/schedstat` gives,
for the process's main thread (where an asyncio loop runs), the time it ran and the time it waited on
a run queue. `waiting / (running + waiting)` is the share of its wanting-to-run time spent waiting
for a core: near 0 on an idle machine, 0.5 when it gets half of what it asks for.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from pathlib import Path


def cpu_seconds(pid: int | str = "self", *, children: bool = False) -> float:
    """CPU time of a process (with `children`, plus its children's, live and reaped)."""
    ticks = os.sysconf("SC_CLK_TCK")
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    used = int(fields[11]) + int(fields[12])  # utime, stime
    if children:
        used += int(fields[13]) + int(fields[14])  # cutime, cstime: children already reaped
        own = os.getpid() if pid == "self" else pid
        for child in Path(f"/proc/{own}/task/{own}/children").read_text().split():
            with contextlib.suppress(OSError):
                used += round(cpu_seconds(child) * ticks)
    return used / ticks


@dataclasses.dataclass(frozen=True)
class Sched:
    """Nanoseconds the main thread ran and waited on a run queue, from /proc/PID/schedstat."""

    running: int
    waiting: int

    @classmethod
    def read(cls, pid: int | str = "self") -> Sched:
        running, waiting, _ = Path(f"/proc/{pid}/schedstat").read_text().split()
        return cls(int(running), int(waiting))

    def since(self, earlier: Sched) -> float:
        """The share of the wanting-to-run time between `earlier` and this one spent waiting for a core."""
        running, waiting = self.running - earlier.running, self.waiting - earlier.waiting
        return waiting / (running + waiting) if running + waiting else 0.0
