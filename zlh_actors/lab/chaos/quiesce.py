"""Quiescence: once the faults are over, wait until the system has finished its work, or a deadline.

The system is quiescent when, at the same time:

1. every server rests: its state is one of the actor's rest states (`actor.REST_STATES`: running,
   stopped, the failed states, deleted), or it waits by decision, `lost` or `crashed` while its
   desired state is not `running` (the actor leaves those alone until a user acts);
2. no command is pending (`queued` or `accepted`) for any server: everything the API answered 202
   for, every agent report and every repair has been applied or rejected;
3. a reconciliation pass run now on every replica (`POST /admin/v1/reconcile`, which fans out)
   answers from every replica, covers every shard, fails on none, and finds no drift at all. A
   container destroyed or stopped behind the control plane's back is only noticed by such a pass,
   and its repair makes servers busy again, so the three are checked together until they hold at
   once; orphans are reported until their grace period (a few seconds in a chaos run) has passed
   and they are destroyed.

A clean pass only counts if (1) and (2) still hold when it has answered: an agent report, a late
retry or a repair may land while the pass runs, and a check made before the pass would miss it.
And it takes `CLEAN_ROUNDS` such rounds in a row, `RECONCILE_EVERY` apart, so that a repair one
pass set off (or a request a client was still retrying) has time to show before the run is called
quiescent.

Past the deadline the servers that never came to rest are listed, with what each was doing, and
the run fails: a server that never settles is as much a finding as a broken invariant.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from typing import Any

import asyncpg

from zlh_actors.lab.chaos import client
from zlh_actors.servers import actor

POLL = 0.5
RECONCILE_EVERY = 2.0  # seconds between passes asked for, while everything else rests
CLEAN_ROUNDS = 2  # consecutive clean rounds (a pass, then still nothing unsettled) that mean quiescent
WAITING = ("lost", "crashed")  # rest by decision while the desired state is not `running`
UNSETTLED = """
SELECT s.id, s.tenant, s.name, s.state, s.desired_state, s.last_error,
       (SELECT count(*) FROM commands c WHERE c.server_id = s.id AND c.status IN ('queued', 'accepted'))
           AS pending
FROM servers s
WHERE NOT (s.state = ANY($1::text[]) OR (s.state = ANY($2::text[]) AND s.desired_state <> 'running'))
   OR EXISTS (SELECT 1 FROM commands c WHERE c.server_id = s.id AND c.status IN ('queued', 'accepted'))
ORDER BY s.created_at
"""


@dataclasses.dataclass
class Settlement:
    """How quiescence went: `settled`, in how long, and what did not settle."""

    settled: bool = False
    seconds: float = 0.0
    passes: int = 0  # reconciliation passes asked for
    drift: collections.Counter[str] = dataclasses.field(default_factory=collections.Counter)
    unsettled: list[str] = dataclasses.field(default_factory=list)
    problem: str | None = None  # why the last pass did not count as clean


def _describe(row: asyncpg.Record) -> str:
    error = f", last error: {row['last_error']}" if row["last_error"] else ""
    return (
        f"server {row['id']} ({row['tenant']}/{row['name']}): {row['state']}, desired "
        f"{row['desired_state']}, {row['pending']} command(s) pending{error}"
    )


async def settle(api: client.Api, pool: asyncpg.Pool, timeout: float) -> Settlement:
    found = Settlement()
    started = time.monotonic()
    last_pass = 0.0
    clean = 0  # clean rounds in a row
    while True:
        if await _unsettled(pool, found):
            clean = 0
        elif time.monotonic() - last_pass >= RECONCILE_EVERY:
            last_pass = time.monotonic()
            found.passes += 1
            found.problem = await _clean_pass(api, pool, found.passes, found.drift)
            if found.problem is None and await _unsettled(pool, found):
                found.problem = f"{len(found.unsettled)} server(s) busy again after a clean pass"
            clean = 0 if found.problem is not None else clean + 1
            if clean >= CLEAN_ROUNDS:
                found.settled = True
                break
        if time.monotonic() - started > timeout:
            break
        await asyncio.sleep(POLL)
    found.seconds = time.monotonic() - started
    return found


async def _unsettled(pool: asyncpg.Pool, found: Settlement) -> bool:
    """Whether any server is busy or has a command pending now; `found.unsettled` lists them."""
    rows = await pool.fetch(UNSETTLED, sorted(actor.REST_STATES), list(WAITING))
    found.unsettled = [_describe(row) for row in rows]
    return bool(rows)


async def _clean_pass(
    api: client.Api, pool: asyncpg.Pool, route: int, drift: collections.Counter[str]
) -> str | None:
    """Run a pass on every replica; None if it was clean, else what was wrong."""
    answer = await api.admin("POST", "/admin/v1/reconcile", route)
    if not answer.ok or not isinstance(answer.body, dict):
        return f"POST /admin/v1/reconcile answered {answer.status}"
    reports: list[dict[str, Any]] = answer.body.get("reports", [])
    if answer.body.get("unreachable"):
        return f"replicas unreachable: {answer.body['unreachable']}"
    failed = [report["error"] for report in reports if report.get("error")]
    if failed:
        return f"a pass could not observe: {failed[0]}"
    shards = await pool.fetchval("SELECT count(*) FROM shard_leases")
    covered = {shard for report in reports for shard in report.get("shards", [])}
    if covered != set(range(shards)):
        return f"the passes covered shards {sorted(covered)} of {shards}"
    found = [item for report in reports for item in report.get("drifts", [])]
    for item in found:
        drift[str(item.get("kind"))] += 1
    if found:
        kinds = collections.Counter(str(item.get("kind")) for item in found)
        return f"drift found: {dict(kinds)}"
    return None
