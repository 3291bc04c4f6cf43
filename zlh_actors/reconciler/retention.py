"""What the database forgets, and when: the rows that would otherwise only accumulate.

- **Settled commands** (`done`, `rejected`) once `ZLH_COMMAND_RETENTION` old (a week by default,
  `KEEP_SETTLED`). Every agent report is a command, so the inbox grows with every report a container
  sends. A forgotten command answers 404 at `GET /v1/servers/{id}/commands/{cid}`; its effect stays
  in the journal, which is never pruned, and a command still `queued` or `accepted` is never
  forgotten, however old.
- **Idempotency keys** whose expiry (`ZLH_IDEMPOTENCY_TTL`) has passed: a retry after that is a new
  request anyway (the create path forgets such a key when it is used again; this forgets the ones
  never reused).

Every replica prunes after each of its reconciliation passes (`loop`), outside the pass's lock and
one prune at a time, at most `BATCH` commands a time; replicas pruning commands at the same moment
skip each other's rows instead of waiting for them. Drift reports (kept 30 days) may name a drift
command that is gone: its journal entries remain.
"""

from __future__ import annotations

import dataclasses
import datetime

import asyncpg

from storage import commands, database, idempotency

KEEP_SETTLED = datetime.timedelta(days=7)
BATCH = 20_000  # commands per prune; a replica prunes every reconciliation pass (30 s by default)


@dataclasses.dataclass(frozen=True)
class Pruned:
    commands: int
    idempotency_keys: int


async def prune(
    pool: asyncpg.Pool, *, keep_settled: datetime.timedelta = KEEP_SETTLED, batch: int = BATCH
) -> Pruned:
    """Forget old settled commands and expired idempotency keys (one statement each, each its own
    transaction: a wait on the keys never undoes the commands); how many of each."""
    async with database.acquire(pool) as conn:
        forgotten = await commands.forget_settled(conn, keep_settled, batch)
        keys = await idempotency.forget_expired(conn, datetime.datetime.now(datetime.UTC))
    return Pruned(commands=forgotten, idempotency_keys=keys)
