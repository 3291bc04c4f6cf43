"""The stream hub alone against a database where nothing else runs: its own replica's announcements wake
it without a notification, and an entry nobody announced is found by the read it does when idle."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from storage import database, journal, servers
from zlh_actors.api import stream
from zlh_actors.runtime import announcer


@contextlib.asynccontextmanager
async def _hub(
    db_url: str, pool: asyncpg.Pool, announcements: announcer.Announcer | None = None
) -> AsyncIterator[stream.Subscriber]:
    hub = stream.Hub(db_url, pool, server_settings={}, announcements=announcements)
    await hub.start()
    try:
        yield hub.subscribe(None)
    finally:
        await hub.stop()


async def _announced_server(pool: asyncpg.Pool, subscriber: stream.Subscriber) -> servers.Server:
    """A new server, its first entry NOTIFYed by the trigger and received: the hub then waits."""
    async with database.transaction(pool) as conn:
        server = await servers.insert(
            conn,
            tenant="acme",
            name="hub",
            spec={},
            state="stopped",
            event="imported",
            desired_state="stopped",
        )
        first = (await journal.newest(conn, server.id)).cursor
    await _until_received(subscriber, first, timeout=10)
    return server


async def _unannounced_entry(pool: asyncpg.Pool, server: servers.Server) -> journal.Cursor:
    """An entry whose transaction told the trigger to stay quiet: no NOTIFY from anyone."""
    async with database.transaction(pool) as conn:
        await conn.execute("SELECT set_config('zlh.journal_notify', 'off', true)")
        await servers.transition(conn, server, "lost", "lost")
        return (await journal.newest(conn, server.id)).cursor


async def _until_received(subscriber: stream.Subscriber, cursor: journal.Cursor, timeout: float) -> None:
    seen: list[journal.Cursor] = []
    async with asyncio.timeout(timeout):
        while cursor not in seen:
            await subscriber.ready.wait()
            batch = subscriber.take()
            assert batch is not None
            seen.extend(event_cursor for event_cursor, _ in batch.events)


async def test_an_entry_nobody_announced_is_found_by_the_idle_read(
    db_url: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "PROBE_INTERVAL", 0.3)
    async with _hub(db_url, pool) as subscriber:
        server = await _announced_server(pool, subscriber)
        cursor = await _unannounced_entry(pool, server)
        await _until_received(subscriber, cursor, timeout=3.0)


async def test_its_own_replicas_announcement_wakes_the_hub_without_a_notification(
    db_url: str, pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "PROBE_INTERVAL", 600.0)  # no idle read within the test
    ours = announcer.Announcer(pool, uuid.uuid4())
    try:
        async with _hub(db_url, pool, ours) as subscriber:
            server = await _announced_server(pool, subscriber)
            cursor = await _unannounced_entry(pool, server)
            ours.announce()
            await _until_received(subscriber, cursor, timeout=3.0)
    finally:
        await ours.close()
