"""The sweep's query, `servers_needing_attention`: the same answer as a scan of every row, read from
partial indexes of the few rows that can need attention.

A sweep runs it every 5 s over every owned shard, and a takeover over the shards it took. It used to
compute the shard (an MD5) of every server row, deleted ones included: 246 ms at 100,000 servers.
"""

from __future__ import annotations

import json
import uuid

import asyncpg

from statemachines import lifecycle
from storage import commands, database, queries, servers
from zlh_actors.servers import actor

SHARDS = 8

# What the query must answer, written the simple way: a scan of every server.
REFERENCE = """
SELECT s.id FROM servers s
WHERE zlh_shard(s.id, $1) = ANY ($2::integer[])
  AND (s.state <> ALL ($3::text[])
       OR EXISTS (SELECT 1 FROM commands c WHERE c.server_id = s.id AND c.status IN ('queued', 'accepted')))
ORDER BY s.id
"""


async def test_sql_and_python_agree_on_the_states_at_rest(pool: asyncpg.Pool) -> None:
    rows = await pool.fetch("SELECT s, zlh_at_rest(s) AS rest FROM unnest($1::text[]) AS s", lifecycle.STATES)
    assert {row["s"] for row in rows if row["rest"]} == actor.REST_STATES


async def _seed(pool: asyncpg.Pool) -> set[uuid.UUID]:
    """2,000 servers at rest, some deleted, each with a settled command; a few with work in progress or a
    queued command."""
    async with database.transaction(pool) as conn:
        await conn.execute(
            "INSERT INTO servers (id, tenant, name, spec, state, desired_state, deleted_at) "
            "SELECT gen_random_uuid(), 'acme', 'bulk-' || i, '{}'::jsonb, "
            "CASE WHEN i % 3 = 0 THEN 'deleted' ELSE 'stopped' END, "
            "CASE WHEN i % 3 = 0 THEN 'deleted' ELSE 'stopped' END, "
            "CASE WHEN i % 3 = 0 THEN now() END FROM generate_series(1, 2000) AS i"
        )
        await conn.execute(
            "INSERT INTO journal (server_id, seq, from_state, to_state, event) "
            "SELECT id, 1, NULL, state, 'seed' FROM servers"
        )
        # Settled commands outnumber pending ones by far: every command and report is kept.
        await conn.execute(
            "INSERT INTO commands (id, server_id, kind, status, result) "
            "SELECT gen_random_uuid(), id, 'start', 'done', '{}'::jsonb FROM servers"
        )
        pending: set[uuid.UUID] = set()
        for n, state in enumerate(["provisioning.installing", "starting", "deleting.releasing", "crashed"]):
            server = await servers.insert(
                conn, tenant="acme", name=f"busy-{n}", spec={}, state=state, event="seed"
            )
            pending.add(server.id)
        for n in range(3):
            server = await servers.insert(
                conn, tenant="acme", name=f"asked-{n}", spec={}, state="stopped", event="seed"
            )
            await commands.enqueue(conn, server.id, "start")
            pending.add(server.id)
    await pool.execute("ANALYZE servers, commands")
    return pending


async def test_the_query_answers_as_a_scan_of_every_server_would(pool: asyncpg.Pool) -> None:
    pending = await _seed(pool)
    rest = sorted(actor.REST_STATES)
    for shard_list in ([0], [1, 5], list(range(SHARDS))):
        expected = [row["id"] for row in await pool.fetch(REFERENCE, SHARDS, shard_list, rest)]
        async with pool.acquire() as conn:
            found = [
                row["id"]
                for row in await queries.fetch(conn, "servers_needing_attention", SHARDS, shard_list)
            ]
        assert found == expected
    assert set(found) == pending


async def test_the_query_reads_indexes_not_every_server(pool: asyncpg.Pool) -> None:
    await _seed(pool)
    async with pool.acquire() as conn:
        await conn.execute(
            f"PREPARE attention(integer, integer[]) AS {queries.sql('servers_needing_attention').rstrip(';')}"
        )
        # The generic plan, the one a prepared statement may settle on: no parameter value helps it.
        await conn.execute("SET plan_cache_mode = force_generic_plan")
        plan = json.loads(
            await conn.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE attention({SHARDS}, '{{0,1,2,3}}')")
        )
        await conn.execute("DEALLOCATE attention")
        await conn.execute("RESET plan_cache_mode")

    def nodes(node: dict[str, object]) -> list[dict[str, object]]:
        children = node.get("Plans", [])
        assert isinstance(children, list)
        return [node, *(found for child in children for found in nodes(child))]

    scans = {
        (n.get("Node Type"), n.get("Relation Name"), n.get("Index Name")) for n in nodes(plan[0]["Plan"])
    }
    assert not [scan for scan in scans if scan[0] == "Seq Scan"], scans
    assert {scan[2] for scan in scans} >= {"servers_unsettled", "commands_pending"}, scans
