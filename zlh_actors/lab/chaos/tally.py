"""What a chaos run did, counted as it goes: every request by kind and outcome, every fault by kind.

Kept apart from the rendering (`summary`) so the scenario and the fault injector share one small,
synchronous object: counting never awaits, so concurrent tasks cannot interleave inside it.
"""

from __future__ import annotations

import collections
import dataclasses
import time

# Why a request got no answer: the connection was refused, the client gave up, or it broke midway.
REFUSED, TIMEOUT, CUT = "refused", "timeout", "cut"
NO_ANSWERS = (REFUSED, TIMEOUT, CUT)
# Fault outcomes: done; skipped when it had no target (no running container yet, a replica already
# down); failed when the lab refused it (a locked container, a task that failed under other faults).
INJECTED, SKIPPED, FAILED = "injected", "skipped", "failed"


def outcome(status: int | None, failure: str | None = None) -> str:
    """An HTTP answer as a column of the table: its status, 5xx together, or why there was none."""
    if status is None:
        return failure or CUT
    return "5xx" if status >= 500 else str(status)


@dataclasses.dataclass
class Tally:
    operations: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)
    faults: collections.Counter[tuple[str, str]] = dataclasses.field(default_factory=collections.Counter)
    notes: list[str] = dataclasses.field(default_factory=list)  # why a fault failed, for the report
    events: list[str] = dataclasses.field(default_factory=list)  # every fault, timed: <dir>/faults.log
    started: float = dataclasses.field(default_factory=time.monotonic)

    def operation(self, kind: str, status: int | None, failure: str | None = None) -> None:
        self.operations[kind, outcome(status, failure)] += 1

    def fault(self, kind: str, result: str, note: str | None = None) -> None:
        self.faults[kind, result] += 1
        if note is not None:
            self.notes.append(f"{kind}: {note}")
            self.event(f"{kind} {result}: {note}")

    def event(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.started:8.2f}s  {what}")

    def issued(self, kind: str) -> int:
        """Requests of one kind, whatever their outcome."""
        return sum(count for (found, _), count in self.operations.items() if found == kind)

    def injected(self, kind: str) -> int:
        return self.faults[kind, INJECTED]
