"""The side-by-side table, and the details behind every non-zero count."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Callable, Sequence

from bench.common import percentile
from bench.peer import observe, scenario
from zlh_actors.lab import invariants

DETAILS_SHOWN = 6
OURS = "zlh-actors"
PEER = "BullMQ peer"


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


def _latency(fraction: float) -> Callable[[Result], float | None]:
    def value(result: Result) -> float | None:
        samples = [latency for flow in result.run.flows if (latency := flow.create_latency) is not None]
        return percentile(samples, fraction) if samples else None

    return value


def _seconds(value: Callable[[Result], float | None]) -> Callable[[Result], object]:
    def show(result: Result) -> object:
        seconds = value(result)
        return "-" if seconds is None else f"{seconds:.2f} s"

    return show


def _faults(result: Result) -> str:
    kinds = [event.kind for event in result.run.faults]
    return f"{kinds.count('kill')} / {kinds.count('freeze')}"


def _violations(number: int) -> Callable[[Result], object]:
    def count(result: Result) -> object:
        return len(result.report.of(number)) if number in result.report.checked else "n/a"

    return count


@dataclasses.dataclass(frozen=True)
class Metric:
    """One row: how each system's cell reads, and the figure compared as ours / peer, if any."""

    label: str
    show: Callable[[Result], object]
    value: Callable[[Result], float | None] | None = None


def _wall(result: Result) -> float:
    return result.run.wall_throughput


def _last_complete(result: Result) -> float:
    return result.run.throughput


def _elapsed(result: Result) -> float:
    return result.run.elapsed


METRICS: list[Metric] = [
    Metric("servers through create -> running -> delete", lambda r: f"{_complete(r)}/{len(r.run.flows)}"),
    Metric("throughput: complete flows per second of wall time", lambda r: f"{_wall(r):.3f}", _wall),
    Metric(
        "  the same, until the last complete flow (stuck clients left out)",
        lambda r: f"{_last_complete(r):.3f}",
        _last_complete,
    ),
    Metric("wall time, until every client was done or gave up", lambda r: f"{_elapsed(r):.1f} s", _elapsed),
    Metric("create -> running, p50", _seconds(_latency(0.5)), _latency(0.5)),
    Metric("create -> running, p99", _seconds(_latency(0.99)), _latency(0.99)),
    Metric("creates sent (retries included)", lambda r: sum(flow.creates_sent for flow in r.run.flows)),
    Metric("deletes sent (retries included)", lambda r: sum(flow.deletes_sent for flow in r.run.flows)),
    Metric(
        "clients that never saw their server running",
        lambda r: sum(f.running_at is None for f in r.run.flows),
    ),
    Metric(
        "clients that never saw their server deleted",
        lambda r: sum(f.deleted_at is None for f in r.run.flows),
    ),
    Metric("faults injected (kill -9 / SIGSTOP)", _faults),
    Metric("servers with two containers at once", lambda r: len(r.seen.duplicates)),
    Metric("VMIDs held by two live records at once", lambda r: len(r.seen.shared_vmids)),
    Metric("running servers whose container vanished", lambda r: len(r.seen.lost)),
    Metric("leaked containers at the end", lambda r: len(r.end.leaked)),
    Metric("records without their container at the end", lambda r: len(r.end.without_container)),
    Metric("live records left at the end", lambda r: r.end.live_records),
    Metric("servers the client saw deleted, live again at the end", lambda r: len(r.end.resurrected)),
    Metric("quiescent at the end", lambda r: "yes" if r.settled else "no"),
    *(
        Metric(f"violations of invariant {number} ({name})", _violations(number))
        for number, name in invariants.model.NAMES.items()
    ),
    Metric("samples taken", lambda r: r.seen.samples),
]


def _ratio(metric: Metric, ours: Result, peer: Result) -> str:
    """ours / peer for a compared figure: above 1 is more throughput, or a longer wait, for ours."""
    if metric.value is None:
        return ""
    top, bottom = metric.value(ours), metric.value(peer)
    return "-" if top is None or not bottom else f"{top / bottom:.2f}x"


def rows(results: Sequence[Result]) -> list[tuple[str, ...]]:
    """The side-by-side table; with both systems, a last column of ours / peer for the compared figures."""
    by_label = {result.label: result for result in results}
    pair = (by_label[OURS], by_label[PEER]) if OURS in by_label and PEER in by_label else None
    table: list[tuple[str, ...]] = [
        ("", *(result.label for result in results), *(("ours / peer",) if pair else ()))
    ]
    for metric in METRICS:
        cells = [str(metric.show(result)) for result in results]
        if pair:
            cells.append(_ratio(metric, *pair))
        table.append((metric.label, *cells))
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
