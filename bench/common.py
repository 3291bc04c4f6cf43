"""What every benchmark shares: the machine it ran on, percentiles and latency rows, a lab's subnet,
and how a benchmark's process ends."""

from __future__ import annotations

import math
import os
import platform
import random
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

# A column of a latency row: wide enough for "not delivered".
COLUMN = 14
LABEL = 46


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


def ms(value: float) -> str:
    """Seconds as milliseconds in a column; an infinite value stands for a sample that never came."""
    text = "not delivered" if math.isinf(value) else f"{value * 1000:.1f} ms"
    return text.rjust(COLUMN)


def figures(label: str, values: Sequence[float]) -> str:
    """Median, p99 and max of `values` in one row (see `ms` for an infinite one)."""
    if not values:
        return f"  {label:{LABEL}}{'none':>{COLUMN}}"
    return f"  {label:{LABEL}}{ms(statistics.median(values))}{ms(p99(values))}{ms(max(values))}"


def ratio(label: str, top: Sequence[float], bottom: Sequence[float]) -> str:
    """Median over median and p99 over p99; "n/a" where a side has no finite figure."""

    def one(a: float, b: float) -> str:
        text = f"{a / b:.2f}x" if math.isfinite(a) and math.isfinite(b) and b else "n/a"
        return text.rjust(COLUMN)

    if not top or not bottom:
        return f"  {label:{LABEL}}{'n/a':>{COLUMN}}"
    median = one(statistics.median(top), statistics.median(bottom))
    return f"  {label:{LABEL}}{median}{one(p99(top), p99(bottom))}"


def header(label: str = "") -> str:
    """The column titles over `figures` and `ratio` rows."""
    return f"  {label:{LABEL}}{'median':>{COLUMN}}{'p99':>{COLUMN}}{'max':>{COLUMN}}"


def entry(name: str, main: Callable[[], int]) -> int:
    """A benchmark's exit status: `main`'s (0 target met, 1 missed), 2 with one line for an error, 130 on
    Ctrl-C. A missing PostgreSQL or redis-server is a fact about the machine, not a traceback to read."""
    try:
        return main()
    except KeyboardInterrupt:
        print(f"{name}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        print(f"{name}: error: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
