"""An agent callback reaches the server's owner whichever replica takes it, with no needless NOTIFY.

A report's insert NOTIFYs nothing (migration 0006): the replica that took the callback wakes its own
actor when it owns the server, and NOTIFYs `zlh_commands` for the owner when it does not. The test
runs two replicas, posts one report to the owner and one to the other replica, and checks both
servers stop, and, on a LISTEN connection of its own, that only the second callback NOTIFYed.
"""

from __future__ import annotations

import uuid

import asyncpg
import orjson

from storage import agents, commands, database, servers
from tests import helpers
from tests.e2e import harness
from tests.e2e.test_stream import settled
from zlh_actors import service
from zlh_actors.lab import world
from zlh_actors.runtime import inbox


async def _balanced(pool: asyncpg.Pool, shards: int) -> bool:
    """Both replicas hold their share of the shards, so ownership stays put for the test."""
    counts = [
        row["n"]
        for row in await pool.fetch(
            "SELECT count(*) AS n FROM shard_leases WHERE owner IS NOT NULL AND shard < $1 GROUP BY owner",
            shards,
        )
    ]
    return len(counts) == 2 and sum(counts) == shards and max(counts) - min(counts) <= 1


async def _running_server(pool: asyncpg.Pool, owner: uuid.UUID, shards: int) -> tuple[uuid.UUID, str]:
    """A running server of generation 1 whose shard `owner` holds, and its agent's token."""
    server_id = servers.ServerId(uuid.uuid4())
    owned = "SELECT owner = $2 FROM shard_leases WHERE shard = zlh_shard($1, $3)"
    while not await pool.fetchval(owned, server_id, owner, shards):
        server_id = servers.ServerId(uuid.uuid4())
    async with database.transaction(pool) as conn:
        server = await servers.insert(
            conn,
            tenant="alpha",
            name=f"cb-{server_id.hex[:8]}",
            spec={},
            state="running",
            event="imported",
            server_id=server_id,
        )
        await servers.set_placement(
            conn, server, node="pve1", vmid=100, ip="10.0.0.10", game_port=25565, generation=1
        )
        return server.id, await agents.issue_token(conn, server.id, 1)


async def _report(control: harness.Control, base: str, server_id: uuid.UUID, token: str) -> None:
    body = {"generation": 1, "seq": 1, "state": "stopped", "manifest_sha256": "", "detail": "exited"}
    async with control.http.post(
        f"{base}/agent/v1/servers/{server_id}/status",
        data=orjson.dumps(body),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    ) as response:
        assert response.status == 202, await response.text()


async def test_a_report_reaches_its_owner_from_either_replica_and_only_a_non_owner_notifies(
    control: harness.Control, lab: world.Lab, db_url: str
) -> None:
    other = harness.settings_for(lab, db_url)
    heard = helpers.Heard()
    listener = await database.connect(db_url)
    try:
        await listener.add_listener(inbox.COMMANDS_CHANNEL, heard)
        async with service.running(other, db_url) as replica_b:
            await settled(control.pool, replica_b)
            await helpers.assert_eventually(lambda: _balanced(control.pool, other.shards), timeout=30)
            b = replica_b.replica.id
            a = await control.pool.fetchval("SELECT id FROM replicas WHERE id <> $1", b)
            on_a, token_a = await _running_server(control.pool, a, other.shards)
            on_b, token_b = await _running_server(control.pool, b, other.shards)
            await _report(control, control.base_urls[0], on_a, token_a)  # to its owner: woken directly
            await _report(control, control.base_urls[0], on_b, token_b)  # not its owner: NOTIFYed

            async def stopped() -> bool:
                states = await control.pool.fetch(
                    "SELECT state FROM servers WHERE id = ANY ($1::uuid[])", [on_a, on_b]
                )
                return [row["state"] for row in states] == ["stopped", "stopped"]

            await helpers.assert_eventually(stopped, timeout=30)
        reports = {
            row["server_id"]: row
            for row in await control.pool.fetch(
                "SELECT server_id, id, status FROM commands WHERE server_id = ANY ($1::uuid[])", [on_a, on_b]
            )
        }
        assert {row["status"] for row in reports.values()} == {"done"}
        sentinel = str(uuid.uuid4())
        await control.pool.execute("SELECT pg_notify($1, $2)", inbox.COMMANDS_CHANNEL, sentinel)
        payloads = await heard.until(sentinel)
    finally:
        await listener.close()
    about = [payload for payload in payloads if payload.startswith((str(on_a), str(on_b)))]
    assert about == [f"{on_b} {reports[on_b]['id']}"]
    async with control.pool.acquire() as conn:
        for server_id in (on_a, on_b):
            assert (await commands.get(conn, reports[server_id]["id"])).result == {"state": "stopped"}
