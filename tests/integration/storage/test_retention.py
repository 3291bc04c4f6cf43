"""Retention: old settled commands and expired idempotency keys are forgotten; pending commands, recent
ones and live keys never are; one prune takes at most its batch."""

from __future__ import annotations

import datetime
import uuid

import asyncpg

from storage import commands, database, idempotency, servers
from zlh_actors.reconciler import retention

NOW = datetime.datetime.now(datetime.UTC)
DAY = datetime.timedelta(days=1)
SETTLING = {"queued": [], "accepted": ["accepted"], "rejected": ["rejected"], "done": ["accepted", "done"]}


async def _command(
    pool: asyncpg.Pool, server_id: uuid.UUID, status: str, age: datetime.timedelta
) -> uuid.UUID:
    """A command in `status`, last updated `age` ago (the status trigger, which stamps `updated_at`
    with now, is bypassed to backdate it)."""
    async with database.transaction(pool) as conn:
        command = await commands.enqueue(conn, server_id, "stop")
        for step in SETTLING[status]:
            command = await commands.settle(conn, command, step, {"state": "stopped"})
        await conn.execute("SET LOCAL session_replication_role = replica")
        await conn.execute("UPDATE commands SET updated_at = $2 WHERE id = $1", command.id, NOW - age)
    return command.id


async def _remaining(pool: asyncpg.Pool, ids: list[uuid.UUID]) -> set[uuid.UUID]:
    rows = await pool.fetch("SELECT id FROM commands WHERE id = ANY ($1::uuid[])", ids)
    return {row["id"] for row in rows}


async def _server(pool: asyncpg.Pool) -> uuid.UUID:
    async with database.transaction(pool) as conn:
        server = await servers.insert(
            conn, tenant="acme", name="kept", spec={}, state="running", event="imported"
        )
    return server.id


async def test_old_settled_commands_are_forgotten_and_nothing_else(pool: asyncpg.Pool) -> None:
    server_id = await _server(pool)
    old_done = await _command(pool, server_id, "done", 8 * DAY)
    old_rejected = await _command(pool, server_id, "rejected", 30 * DAY)
    old_queued = await _command(pool, server_id, "queued", 30 * DAY)
    old_accepted = await _command(pool, server_id, "accepted", 30 * DAY)
    recent_done = await _command(pool, server_id, "done", 6 * DAY)
    everything = [old_done, old_rejected, old_queued, old_accepted, recent_done]

    pruned = await retention.prune(pool)

    assert pruned.commands == 2
    assert await _remaining(pool, everything) == {old_queued, old_accepted, recent_done}
    assert (await retention.prune(pool)).commands == 0


async def test_one_prune_takes_at_most_its_batch(pool: asyncpg.Pool) -> None:
    server_id = await _server(pool)
    old = [await _command(pool, server_id, "done", 10 * DAY) for _ in range(5)]
    assert (await retention.prune(pool, batch=3)).commands == 3
    assert len(await _remaining(pool, old)) == 2
    assert (await retention.prune(pool, batch=3)).commands == 2
    assert await _remaining(pool, old) == set()


async def test_expired_idempotency_keys_are_forgotten_live_ones_kept(pool: asyncpg.Pool) -> None:
    async with database.transaction(pool) as conn:
        await idempotency.claim(conn, "acme", "expired", b"\x01" * 32, NOW + DAY)
        await idempotency.claim(conn, "acme", "live", b"\x02" * 32, NOW + DAY)
        await conn.execute(
            "UPDATE idempotency_keys SET created_at = $1, expires_at = $2 WHERE key = 'expired'",
            NOW - 2 * DAY,
            NOW - DAY,
        )
    assert (await retention.prune(pool)).idempotency_keys == 1
    async with pool.acquire() as conn:
        assert await idempotency.get(conn, "acme", "expired") is None
        assert await idempotency.get(conn, "acme", "live") is not None
