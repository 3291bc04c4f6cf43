"""A command's path through the runtime: the direct wake-up, and one transaction per report.

The replica that enqueues a command wakes its own actor after the commit and skips the command's
notification; an agent report, announced to its owner, is applied and settled `done` in one
transaction, and so is a command that brings its server to rest (the `accepted -> done` step joins
the transaction that applies it).
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import asyncpg

from storage import agents, commands, database, servers
from tests import helpers
from tests.integration.runtime.test_server_actor import Scripted, running
from zlh_actors.reconciler import repairs
from zlh_actors.runtime import inbox, ownership

SETTINGS = ownership.LeaseSettings(shard_count=4, heartbeat_interval=0.05, lease_timeout=1.0)


async def _running_server(pool: asyncpg.Pool, *, desired_state: str = "running") -> servers.Server:
    async with database.transaction(pool) as conn:
        server = await servers.insert(
            conn,
            tenant="acme",
            name=f"s-{uuid.uuid4().hex[:8]}",
            spec={},
            state="running",
            event="imported",
            desired_state=desired_state,
        )
        return await servers.set_placement(
            conn, server, node="pve1", vmid=100, ip="10.0.0.10", game_port=25565, generation=1
        )


async def _status(pool: asyncpg.Pool, command_id: uuid.UUID, status: str) -> bool:
    async with pool.acquire() as conn:
        return (await commands.get(conn, command_id)).status == status


async def _written_with_its_entry(pool: asyncpg.Pool, command_id: uuid.UUID) -> bool:
    """Whether the command's last update and its newest journal entry are one transaction's writes."""
    row = await pool.fetchrow(
        "SELECT c.xmin::text AS updated_by, (j.txid::text::bigint % 4294967296)::text AS journaled_by "
        "FROM commands c JOIN journal j ON j.command_id = c.id WHERE c.id = $1 ORDER BY j.seq DESC LIMIT 1",
        command_id,
    )
    return row is not None and row["updated_by"] == row["journaled_by"]


async def test_a_report_is_applied_and_done_in_one_transaction(db_url: str, pool: asyncpg.Pool) -> None:
    async with running(db_url, pool, Scripted()):
        server = await _running_server(pool)
        command_id = uuid.uuid4()
        async with database.acquire(pool) as conn:
            kept = await agents.record_report(
                conn,
                server.id,
                generation=1,
                seq=1,
                state="stopped",
                manifest_sha256=None,
                detail=None,
                command_id=command_id,
                payload={"generation": 1, "seq": 1, "state": "stopped", "detail": ""},
            )
            assert kept is not None
            # As the agent callback of a replica that does not own the server does it.
            await commands.announce(conn, kept)
        await helpers.assert_eventually(lambda: _status(pool, command_id, "done"), timeout=10)
    async with pool.acquire() as conn:
        assert (await servers.get(conn, server.id)).state == "stopped"
        assert (await commands.get(conn, command_id)).result == {"state": "stopped"}
    assert await _written_with_its_entry(pool, command_id)


async def test_a_command_that_brings_its_server_to_rest_is_finished_as_it_is_applied(
    db_url: str, pool: asyncpg.Pool
) -> None:
    """A drift whose repair ends at rest goes accepted -> done in the transaction that applies it."""
    async with running(db_url, pool, Scripted()) as built:
        server = await _running_server(pool, desired_state="stopped")
        payload = {
            "kind": "power",
            "reason": "the container is stopped",
            "observed": {"proxmox": "stopped"},
            "state": server.state,
            "version": server.version,
            "generation": server.generation,
        }
        command_id = uuid.uuid4()
        with built.inbox.waking(server.id, command_id):
            async with database.transaction(pool) as conn:
                await commands.enqueue(conn, server.id, repairs.COMMAND_KIND, payload, command_id=command_id)
        await helpers.assert_eventually(lambda: _status(pool, command_id, "done"), timeout=10)
    assert await _written_with_its_entry(pool, command_id)


class Wakes:
    """`on_command` for an inbox under test: which servers it was told to wake, in order."""

    def __init__(self) -> None:
        self.servers: list[uuid.UUID] = []
        self.connected = asyncio.Event()

    def __call__(self, server_id: uuid.UUID) -> None:
        self.servers.append(server_id)

    async def reconnected(self) -> None:
        self.connected.set()

    async def until(self, count: int) -> list[uuid.UUID]:
        return await helpers.at_least(self.servers, count, message=f"{count} servers woken")


async def test_the_replica_that_enqueues_wakes_the_actor_once_not_twice(
    db_url: str, pool: asyncpg.Pool
) -> None:
    wakes = Wakes()
    listener = inbox.Inbox(db_url, uuid.uuid4(), SETTINGS, on_command=wakes, on_reconnect=wakes.reconnected)
    task = asyncio.create_task(listener.run())
    try:
        async with asyncio.timeout(10):
            await wakes.connected.wait()
        ours, elsewhere = (await _running_server(pool)).id, (await _running_server(pool)).id
        mine = uuid.uuid4()
        with listener.waking(ours, mine):
            async with database.transaction(pool) as conn:
                await commands.enqueue(conn, ours, "start", command_id=mine)
        assert wakes.servers == [ours]  # at once, after the commit
        # Another replica's command wakes through its notification. Notifications arrive in commit
        # order, so once it is here our own command's notification has arrived, and was skipped.
        async with database.transaction(pool) as conn:
            await commands.enqueue(conn, elsewhere, "start")
        assert await wakes.until(2) == [ours, elsewhere]

        # A block that fails wakes nothing, and leaves nothing to skip.
        failed = uuid.uuid4()
        with contextlib.suppress(RuntimeError), listener.waking(ours, failed):
            raise RuntimeError("rolled back")
        assert wakes.servers == [ours, elsewhere]
        await pool.execute("SELECT pg_notify($1, $2)", inbox.COMMANDS_CHANNEL, f"{ours} {failed}")
        # The payload of the trigger before migration 0006, the server's id alone, still wakes.
        await pool.execute("SELECT pg_notify($1, $2)", inbox.COMMANDS_CHANNEL, str(elsewhere))
        assert await wakes.until(4) == [ours, elsewhere, ours, elsewhere]
    finally:
        await listener.stop()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
