"""A chaos run's result: what was done, what was broken, whether it settled, and what was violated.

`Summary.ok` is the run's verdict (the exit status of `python -m zlh_actors.lab.chaos`): no
invariant violated, every server settled, every tenant's stream exact, no replica that died on its
own. `Summary.table()` is the report a person reads, tables first and evidence after.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from zlh_actors.lab import invariants
from zlh_actors.lab.chaos import client, plan, quiesce, scenario, tally

DETAILS_SHOWN = 10


def operation_kinds() -> list[str]:
    """Every kind of request a run sends, in the table's order."""
    return [
        *client.CREATE_KINDS.values(),
        *plan.ACTIONS,
        "retry",
        scenario.delete_label("quick_delete"),
        *(scenario.delete_label("delete_at", step) for step in plan.STEPS),
        scenario.delete_label("lifecycle"),
        client.PROBE,
    ]


@dataclasses.dataclass
class Summary:
    command: str  # how to run it again
    chosen: plan.Plan
    counts: tally.Tally
    settlement: quiesce.Settlement
    report: invariants.Report | None
    stream_findings: list[str]
    streams: list[tuple[str, int, int]]  # tenant, events received, connections made
    final_states: Mapping[str, int]
    deletes: Mapping[str, int]  # the state each accepted delete found the server in
    drift: Mapping[str, int]  # drift reports of every reconciliation pass, by kind
    epochs: tuple[Mapping[int, int], Mapping[int, int]]  # shard -> epoch: when the chaos began, at the end
    crashed: list[str]  # replicas that exited without a fault, or did not start
    log_errors: Mapping[str, int]  # ERROR lines per replica log
    seconds: Mapping[str, float]  # wall time by phase
    directory: Path

    @property
    def ok(self) -> bool:
        return (
            self.report is not None
            and self.report.ok
            and self.settlement.settled
            and not self.stream_findings
            and not self.crashed
        )

    @property
    def handovers(self) -> int:
        """Times a shard changed hands (a takeover, an eviction, a rebalance) since the chaos began."""
        before, after = self.epochs
        return sum(epoch - before.get(shard, 0) for shard, epoch in after.items())

    def table(self) -> str:
        lines = [
            f"chaos run: seed {self.chosen.seed}, {self.chosen.replicas} replicas, "
            f"{len(self.chosen.scripts)} servers, {self.chosen.seconds / 60:g} minutes, "
            f"tenants {', '.join(self.chosen.tenants)}; plan {self.chosen.digest()}",
            f"reproduce: {self.command}",
            "phases: " + ", ".join(f"{name} {seconds:.1f}s" for name, seconds in self.seconds.items()),
            "",
            *self._operations(),
            "",
            *self._faults(),
            "",
            "deletes accepted in: " + _counts(self.deletes),
            "final states: " + _counts(self.final_states),
            "drift the reconciler reported (all passes): " + (_counts(self.drift) or "none"),
            f"shard leases: {self.handovers} changes of hands since the chaos began; epochs now: "
            + ", ".join(f"{shard}:{epoch}" for shard, epoch in sorted(self.epochs[1].items())),
            *self._settling(),
            "streams: "
            + "; ".join(f"{tenant} {events} events, {n} connections" for tenant, events, n in self.streams)
            + f"; {len(self.stream_findings)} findings",
            *_details("stream", self.stream_findings),
            f"replicas: {len(self.crashed) or 'none'} exited without a fault; ERROR log lines: "
            + (_counts(self.log_errors) or "none"),
            *_details("replica", self.crashed),
            "",
            self.report.table() if self.report is not None else "invariants: not checked",
            "",
            f"result: {'OK' if self.ok else 'FAILED'} (lab and logs in {self.directory})",
        ]
        return "\n".join(lines)

    def _operations(self) -> list[str]:
        outcomes = _columns(outcome for _, outcome in self.counts.operations)
        rows = [
            [kind, *(str(self.counts.operations[kind, o]) for o in outcomes), str(self.counts.issued(kind))]
            for kind in operation_kinds()
        ]
        total = [sum(self.counts.operations[k, o] for k in operation_kinds()) for o in outcomes]
        rows.append(["all", *map(str, total), str(sum(total))])
        return _grid(["operation", *outcomes, "total"], rows)

    def _faults(self) -> list[str]:
        results = [tally.INJECTED, tally.SKIPPED, tally.FAILED]
        rows = [[kind, *(str(self.counts.faults[kind, r]) for r in results)] for kind in plan.FAULT_KINDS]
        return _grid(["fault", *results], rows) + _details("fault", self.counts.notes)

    def _settling(self) -> list[str]:
        found = self.settlement
        state = "settled" if found.settled else "did NOT settle"
        line = (
            f"quiescence: {state} in {found.seconds:.1f}s, {found.passes} reconciliation passes, "
            f"drift repaired on the way: {_counts(found.drift) or 'none'}"
        )
        extra = [] if found.settled or found.problem is None else [f"  last pass: {found.problem}"]
        return [line, *extra, *_details("unsettled", found.unsettled)]


def _columns(outcomes: Iterable[str]) -> list[str]:
    found = set(outcomes)
    numbers = sorted(o for o in found if o.isdigit())
    return numbers + [o for o in ("5xx", *tally.NO_ANSWERS) if o in found]


def _counts(counts: Mapping[str, int]) -> str:
    return ", ".join(f"{key} {value}" for key, value in sorted(counts.items()) if value)


def _details(what: str, found: Sequence[str]) -> list[str]:
    lines = [f"  [{what}] {line}" for line in found[:DETAILS_SHOWN]]
    if len(found) > DETAILS_SHOWN:
        lines.append(f"  [{what}] ... and {len(found) - DETAILS_SHOWN} more")
    return lines


def _grid(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (cell.rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest]).rstrip()

    return [line(header), *(line(row) for row in rows)]
