"""Counters and gauges in Prometheus' text format, without a client library.

The service needs a handful of counters (commands by outcome, transitions by event, stale writes
and stale agent reports rejected, Proxmox errors) and a few gauges read at scrape time (mailbox
depths, owned shards); this is all of it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]


# Seconds: from a fast local call to a slow Proxmox task.
BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class Metrics:
    def __init__(self) -> None:
        self._counters: collections.Counter[tuple[str, Labels]] = collections.Counter()
        self._histograms: dict[tuple[str, Labels], list[float]] = {}
        self._help: dict[str, str] = {}
        self._gauges: dict[str, tuple[str, Callable[[], list[tuple[Labels, float]]]]] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self._counters[(name, tuple(sorted(labels.items())))] += amount  # type: ignore[assignment]

    def observe(self, name: str, value: float, **labels: str) -> None:
        """Record one observation in a histogram: per-bucket counts, then the sum and the count."""
        key = (name, tuple(sorted(labels.items())))
        slots = self._histograms.setdefault(key, [0.0] * (len(BUCKETS) + 2))
        for n, bound in enumerate(BUCKETS):
            if value <= bound:
                slots[n] += 1
        slots[-2] += value
        slots[-1] += 1

    def describe(self, name: str, text: str) -> None:
        self._help[name] = text

    def gauge(self, name: str, text: str, read: Callable[[], list[tuple[Labels, float]]]) -> None:
        self._gauges[name] = (text, read)

    def value(self, name: str, **labels: str) -> float:
        return self._counters.get((name, tuple(sorted(labels.items()))), 0)

    def render(self) -> str:
        lines: list[str] = []
        by_name: dict[str, list[tuple[Labels, float]]] = collections.defaultdict(list)
        for (name, labels), value in sorted(self._counters.items()):
            by_name[name].append((labels, value))
        for name, samples in by_name.items():
            lines.append(f"# HELP {name} {self._help.get(name, name)}")
            lines.append(f"# TYPE {name} counter")
            lines.extend(_sample(name, labels, value) for labels, value in samples)
        histograms: dict[str, list[tuple[Labels, list[float]]]] = collections.defaultdict(list)
        for (name, labels), slots in sorted(self._histograms.items()):
            histograms[name].append((labels, slots))
        for name, series in histograms.items():
            lines.append(f"# HELP {name} {self._help.get(name, name)}")
            lines.append(f"# TYPE {name} histogram")
            for labels, slots in series:
                for bound, count in zip(BUCKETS, slots, strict=False):
                    lines.append(_sample(f"{name}_bucket", (*labels, ("le", f"{bound:g}")), count))
                lines.append(_sample(f"{name}_bucket", (*labels, ("le", "+Inf")), slots[-1]))
                lines.append(_sample(f"{name}_sum", labels, slots[-2]))
                lines.append(_sample(f"{name}_count", labels, slots[-1]))
        for name, (text, read) in sorted(self._gauges.items()):
            lines.append(f"# HELP {name} {text}")
            lines.append(f"# TYPE {name} gauge")
            lines.extend(_sample(name, labels, value) for labels, value in read())
        return "\n".join(lines) + "\n"


def _sample(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {value:g}"
    inner = ",".join(f'{key}="{_escape(val)}"' for key, val in labels)
    return f"{name}{{{inner}}} {value:g}"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
