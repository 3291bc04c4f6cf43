"""What every benchmark shares: the machine it ran on, percentiles of its samples, a lab's subnet."""

from __future__ import annotations

import math
import os
import platform
import random
from collections.abc import Sequence
from pathlib import Path


def machine() -> str:
    """One line: cores, CPU model, Python, kernel and the load average when the run started."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    usable = len(os.sched_getaffinity(0))
    load = ", ".join(f"{value:.2f}" for value in os.getloadavg())
    return (
        f"{os.cpu_count()} cores ({usable} usable), {model}; "
        f"{platform.python_implementation()} {platform.python_version()}; "
        f"{platform.system()} {platform.release()}; load average {load}"
    )


def rss_bytes(pid: int | str = "self") -> int:
    """Resident memory of a process (this one by default), from /proc/PID/statm."""
    resident_pages = int(Path(f"/proc/{pid}/statm").read_text().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def percentile(samples: Sequence[float], fraction: float) -> float:
    """The nearest-rank percentile: the smallest sample at or above `fraction` of them."""
    if not samples:
        raise ValueError("no samples")
    ordered = sorted(samples)
    return float(ordered[max(0, math.ceil(fraction * len(ordered)) - 1)])


def p99(samples: Sequence[float]) -> float:
    return percentile(samples, 0.99)


def lab_subnet() -> str:
    """A random loopback /16 for a lab: labs of concurrent runs and tests never share an address."""
    return f"127.{random.randint(21, 250)}.0.0/16"
