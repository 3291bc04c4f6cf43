"""The report of a reconciliation pass: what drifted, by kind, and what was done; stored and read back.

Each pass of each replica writes one row of `reconcile_reports` (the shards it covered, when, and
one entry per drift). `latest(pool)` gives the admin API the newest report of every registered
replica, so any replica can answer for the whole deployment without asking its peers. Quiet reports
(no drift) are kept for an hour, the others for 30 days.

A drift entry (`Entry`): kind, server_id, vmid, node, generation, reason, action (what was done:
"sent to the actor", "destroyed", "marked foreign", "waiting: ...", "failed: ..."), and the id of
the command sent to the actor, whose outcome and journal entries say how the actor repaired it.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections import Counter
from typing import Any, TypedDict

import asyncpg

from storage import database, queries
from zlh_actors.reconciler import drift

KEEP_QUIET = datetime.timedelta(hours=1)
KEEP_ANY = datetime.timedelta(days=30)


class Entry(TypedDict):
    """One drift in a report, as stored and as the admin API shows it."""

    kind: str
    server_id: str | None
    vmid: int | None
    node: str | None
    generation: int | None
    reason: str
    action: str
    command_id: str | None


def entry(found: drift.Drift, action: str, command_id: uuid.UUID | None = None) -> Entry:
    return {
        "kind": found.kind,
        "server_id": None if found.server_id is None else str(found.server_id),
        "vmid": found.vmid,
        "node": found.node,
        "generation": found.generation,
        "reason": found.reason,
        "action": action,
        "command_id": None if command_id is None else str(command_id),
    }


@dataclasses.dataclass(frozen=True)
class Report:
    """One pass of one replica.

    Attributes:
        replica_id: who ran it. trigger: "periodic" or "on_demand".
        shards: the shards it covered (those the replica owned when it started).
        started_at, finished_at: when.
        drifts: what it found and did.
        error: why the pass could not look at the world (Proxmox unreachable...), or None.
        id: the stored row's id (None until stored).
    """

    replica_id: uuid.UUID
    trigger: str
    shards: tuple[int, ...]
    started_at: datetime.datetime
    finished_at: datetime.datetime
    drifts: tuple[Entry, ...]
    error: str | None = None
    id: int | None = None

    def by_kind(self) -> dict[str, int]:
        """How many drifts of each kind (every kind listed, zero included)."""
        counted = Counter(item["kind"] for item in self.drifts)
        return {kind: counted.get(kind, 0) for kind in drift.KINDS}

    def to_wire(self) -> dict[str, Any]:
        """The report as the admin API renders it."""
        return {
            "id": self.id,
            "replica": str(self.replica_id),
            "trigger": self.trigger,
            "shards": list(self.shards),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "by_kind": self.by_kind(),
            "drifts": list(self.drifts),
            "error": self.error,
        }


def _report(record: asyncpg.Record) -> Report:
    return Report(
        replica_id=record["replica_id"],
        trigger=record["trigger"],
        shards=tuple(record["shards"]),
        started_at=record["started_at"],
        finished_at=record["finished_at"],
        drifts=tuple(record["drifts"]),
        error=record["error"],
        id=record["id"],
    )


async def store(conn: database.Conn, report: Report) -> Report:
    """Store the report (and forget old ones); returns it with its id."""
    record = await queries.fetchrow(
        conn,
        "insert_reconcile_report",
        report.replica_id,
        report.trigger,
        list(report.shards),
        report.started_at,
        report.finished_at,
        list(report.drifts),
        report.error,
    )
    await queries.fetchval(conn, "prune_reconcile_reports", KEEP_QUIET, KEEP_ANY)
    return dataclasses.replace(report, id=None if record is None else record["id"])


async def latest(pool: asyncpg.Pool) -> list[Report]:
    """The newest report of every registered replica, oldest replica id first."""
    async with database.transaction(pool) as conn:
        return [_report(record) for record in await queries.fetch(conn, "latest_reconcile_reports")]
