"""The side-by-side table, and the details behind every non-zero count."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence

from bench.common import percentile
from bench.peer import observe, scenario
from zlh_actors.lab import invariants

DETAILS_SHOWN = 6


@dataclasses.dataclass(frozen=True)
class Result:
    """One system's run, and everything counted about it."""

    label: str
    run: scenario.Run
    settled: bool
    seen: observe.Anomalies
    end: observe.Final
    report: invariants.Report
    notes: tuple[str, ...] = ()

    @property
    def clean(self) -> bool:
        """No violation, no anomaly, every flow complete: what ours must show for exit status 0."""
        return (
            self.report.ok
            and self.settled
            and not (self.seen.duplicates or self.seen.shared_vmids or self.seen.lost)
            and not (self.end.leaked or self.end.without_container or self.end.resurrected)
            and self.end.live_records == 0
            and all(flow.complete for flow in self.run.flows)
        )


def _complete(result: Result) -> int:
    return sum(flow.complete for flow in result.run.flows)


def _quantiles(result: Result) -> str:
    samples = [latency for flow in result.run.flows if (latency := flow.create_latency) is not None]
    if not samples:
        return "-"
    return f"{percentile(samples, 0.5):.2f} s / {percentile(samples, 0.99):.2f} s"


def _sent(result: Result) -> str:
    flows = result.run.flows
    return f"{sum(flow.creates_sent for flow in flows)} / {sum(flow.deletes_sent for flow in flows)}"


def _faults(result: Result) -> str:
    kinds = [event.kind for event in result.run.faults]
    return f"{kinds.count('kill')} / {kinds.count('freeze')}"


def _violations(number: int) -> Callable[[Result], object]:
    def count(result: Result) -> object:
        return len(result.report.of(number)) if number in result.report.checked else "n/a"

    return count


METRICS: list[tuple[str, Callable[[Result], object]]] = [
    ("servers through create -> running -> delete", lambda r: f"{_complete(r)}/{len(r.run.flows)}"),
    ("throughput (complete flows per second)", lambda r: f"{r.run.throughput:.3f}"),
    ("wall time, until every client was done or gave up", lambda r: f"{r.run.elapsed:.1f} s"),
    ("create -> running, p50 / p99", _quantiles),
    ("creates sent (retries included) / deletes sent", _sent),
    ("faults injected (kill -9 / SIGSTOP)", _faults),
    ("servers with two containers at once", lambda r: len(r.seen.duplicates)),
    ("VMIDs held by two live records at once", lambda r: len(r.seen.shared_vmids)),
    ("running servers whose container vanished", lambda r: len(r.seen.lost)),
    ("leaked containers at the end", lambda r: len(r.end.leaked)),
    ("records without their container at the end", lambda r: len(r.end.without_container)),
    ("live records left at the end", lambda r: r.end.live_records),
    ("servers the client saw deleted, live again at the end", lambda r: len(r.end.resurrected)),
    ("quiescent at the end", lambda r: "yes" if r.settled else "no"),
    *(
        (f"violations of invariant {number} ({name})", _violations(number))
        for number, name in invariants.model.NAMES.items()
    ),
    ("samples taken", lambda r: r.seen.samples),
]


def rows(results: Sequence[Result]) -> list[tuple[str, ...]]:
    table: list[tuple[str, ...]] = [("", *(result.label for result in results))]
    for label, metric in METRICS:
        table.append((label, *(str(metric(result)) for result in results)))
    return table


def render(table: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    lines = []
    for index, row in enumerate(table):
        cells = [
            row[0].ljust(widths[0]),
            *(cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)),
        ]
        lines.append("| " + " | ".join(cells) + " |")
        if index == 0:
            lines.append("| " + " | ".join("-" * width for width in widths) + " |")
    return "\n".join(lines)


def _faults_near(result: Result, at: float) -> str:
    """The faults injected within 30 s before `at`, to see what a finding followed."""
    near = [
        f"{e.kind} #{e.target} at +{e.at - result.run.started:.1f}s"
        for e in result.run.faults
        if at - 30 <= e.at <= at
    ]
    return "; after " + ", ".join(near) if near else ""


def details(result: Result) -> list[str]:
    lines = [f"{result.label}:"]
    started = result.run.started

    def seen(kind: str, found: dict[uuid.UUID, float] | dict[int, float]) -> None:
        for key, at in sorted(found.items(), key=lambda item: item[1])[:DETAILS_SHOWN]:
            lines.append(f"  {kind} {key} first seen at +{at - started:.1f}s{_faults_near(result, at)}")

    seen("two containers: server", result.seen.duplicates)
    seen("VMID held twice:", result.seen.shared_vmids)
    seen("container vanished under running server", result.seen.lost)
    for line in result.end.leaked[:DETAILS_SHOWN]:
        lines.append(f"  leaked: {line}")
    for line in result.end.without_container[:DETAILS_SHOWN]:
        lines.append(f"  without container: {line}")
    for line in result.end.resurrected[:DETAILS_SHOWN]:
        lines.append(f"  deleted, then live again: {line}")
    stuck = [flow for flow in result.run.flows if not flow.complete]
    for flow in stuck[:DETAILS_SHOWN]:
        what = "never running" if flow.running_at is None else "never deleted"
        lines.append(f"  incomplete: client {flow.index} (server {flow.server_id}): {what}")
    lines.extend(f"  {note}" for note in result.notes)
    if len(lines) == 1:
        lines.append("  nothing to report")
    return lines
