"""The command inbox's schema rules and notifications (migration 0006), and an agent report's one write.

A commit that NOTIFYs is serialized with every other one until its WAL flush, so the schema
announces only what somebody waits for: a command enqueued (its owner), and a command submitted
through the API leaving `queued` (the replica answering the request).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from storage import agents, commands, database, servers
from tests import helpers
from zlh_actors import errors
from zlh_actors.runtime import inbox


async def _server(pool: asyncpg.Pool) -> uuid.UUID:
    async with database.transaction(pool) as conn:
        server = await servers.insert(
            conn, tenant="acme", name=f"s-{uuid.uuid4().hex[:8]}", spec={}, state="running", event="imported"
        )
    return server.id


async def _enqueue(pool: asyncpg.Pool, server_id: uuid.UUID, kind: str) -> commands.Command:
    async with database.transaction(pool) as conn:
        return await commands.enqueue(conn, server_id, kind)


async def _settle(pool: asyncpg.Pool, command: commands.Command, status: str) -> commands.Command:
    async with database.transaction(pool) as conn:
        return await commands.settle(conn, command, status, {"state": "running"})


@pytest.fixture
async def outcomes(db_url: str) -> AsyncIterator[helpers.Heard]:
    heard = helpers.Heard()
    conn = await database.connect(db_url)
    await conn.add_listener(inbox.OUTCOMES_CHANNEL, heard)
    yield heard
    await conn.close()


async def test_only_outcomes_a_waiter_waits_for_are_announced(
    pool: asyncpg.Pool, outcomes: helpers.Heard
) -> None:
    server_id = await _server(pool)
    start = await _settle(pool, await _enqueue(pool, server_id, "start"), "accepted")
    await _settle(pool, start, "done")  # nobody waits for done
    await _settle(pool, await _enqueue(pool, server_id, "report"), "done")  # nor for a report
    await _settle(pool, await _enqueue(pool, server_id, "drift"), "accepted")  # nor for a drift
    last = await _settle(pool, await _enqueue(pool, server_id, "stop"), "rejected")
    # Notifications arrive in commit order: once the last one is here, every earlier one would be.
    assert await outcomes.until(str(last.id)) == [str(start.id), str(last.id)]


async def test_an_enqueue_names_the_server_and_the_command_and_a_report_is_announced_by_its_enqueuer(
    db_url: str, pool: asyncpg.Pool
) -> None:
    heard = helpers.Heard()
    conn = await database.connect(db_url)
    try:
        await conn.add_listener(inbox.COMMANDS_CHANNEL, heard)
        server_id = await _server(pool)
        report = await _enqueue(pool, server_id, "report")  # the agent callback announces it, if needed
        start = await _enqueue(pool, server_id, "start")
        async with pool.acquire() as pooled:
            await commands.announce(pooled, report)
        expected = [f"{server_id} {start.id}", f"{server_id} {report.id}"]
        assert await heard.until(expected[-1]) == expected
    finally:
        await conn.close()


async def test_only_a_report_may_go_from_queued_to_done(pool: asyncpg.Pool) -> None:
    server_id = await _server(pool)
    report = await _settle(pool, await _enqueue(pool, server_id, "report"), "done")
    assert report.status == "done"
    start = await _enqueue(pool, server_id, "start")
    with pytest.raises(errors.InvalidData) as refused:
        await _settle(pool, start, "done")
    assert refused.value.details["constraint"] == "commands_status_forward"


async def test_a_kept_report_and_its_command_are_one_write_and_a_replay_writes_neither(
    pool: asyncpg.Pool,
) -> None:
    server_id = await _server(pool)
    report = {"generation": 1, "seq": 7, "state": "stopped", "manifest_sha256": "", "detail": "bye"}

    async def record(command_id: uuid.UUID) -> commands.Command | None:
        async with database.acquire(pool) as conn:
            return await agents.record_report(
                conn,
                server_id,
                generation=1,
                seq=7,
                state="stopped",
                manifest_sha256=None,
                detail="bye",
                command_id=command_id,
                payload=report,
            )

    first, replayed = uuid.uuid4(), uuid.uuid4()
    kept = await record(first)
    assert kept is not None
    assert (kept.id, kept.kind, kept.status, kept.payload) == (first, "report", "queued", report)
    assert await record(replayed) is None
    rows = await pool.fetch("SELECT id FROM commands WHERE server_id = $1", server_id)
    assert [row["id"] for row in rows] == [first]
    async with pool.acquire() as conn:
        latest = await agents.latest_report(conn, server_id)
    assert latest is not None
    assert (latest.seq, latest.state) == (7, "stopped")


async def test_a_token_is_found_with_its_servers_generation(pool: asyncpg.Pool) -> None:
    server_id = await _server(pool)
    async with database.transaction(pool) as conn:
        secret = await agents.issue_token(conn, server_id, 1)
        token = await agents.find_token(conn, secret)
        assert token is not None
        assert (token.server_id, token.generation) == (server_id, 1)
        assert token.server_generation == (await servers.get(conn, server_id)).generation
        await agents.revoke_tokens(conn, server_id)
        assert await agents.find_token(conn, secret) is None
