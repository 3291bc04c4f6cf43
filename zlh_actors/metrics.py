"""Counters and gauges in Prometheus' text format, without a client library.

The service needs a handful of counters (commands by outcome, transitions by event, stale writes
and stale agent reports rejected, Proxmox errors) and a few gauges read at scrape time (mailbox
depths, owned shards); this is all of it.
"""

from __future__ import annotations

import collections
from collections.abc import Callable

Labels = tuple[tuple[str, str], ...]


class Metrics:
    def __init__(self) -> None:
        self._counters: collections.Counter[tuple[str, Labels]] = collections.Counter()
        self._help: dict[str, str] = {}
        self._gauges: dict[str, tuple[str, Callable[[], list[tuple[Labels, float]]]]] = {}

    def inc(self, name: str, amount: float = 1, **labels: str) -> None:
        self._counters[(name, tuple(sorted(labels.items())))] += amount  # type: ignore[assignment]

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
