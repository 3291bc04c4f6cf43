"""Taking shards in one batch: the locks of many candidates in one statement, one epoch bump for all
of them, a lease row busy with a write in flight skipped rather than waited for.

The lease managers, `Recorder` and helpers are those of test_ownership.py.
"""

from __future__ import annotations

import asyncpg

from storage import database, queries
from tests.integration.runtime.test_ownership import FAST, lock_holders, members, until
from zlh_actors.runtime import shards


async def test_a_replica_takes_every_free_shard_in_one_batch(db_url: str, pool: asyncpg.Pool) -> None:
    async with members(db_url, 1) as (a,):
        await until(lambda: len(a.recorder.owned) == FAST.shard_count, message="shards not all owned")
        # One acquisition for all eight: one rescan, one epoch bump statement (not one per shard).
        assert a.recorder.batches == [list(range(FAST.shard_count))]
        epochs = {
            row["shard"]: row["epoch"] for row in await pool.fetch("SELECT shard, epoch FROM shard_leases")
        }
        assert a.recorder.owned == epochs
        assert (await lock_holders(pool)) == {shard: 1 for shard in range(FAST.shard_count)}


async def test_the_lock_statement_stops_trying_once_it_has_enough(db_url: str, pool: asyncpg.Pool) -> None:
    await pool.execute(queries.sql("ensure_shards"), 8)
    conn = await database.connect(db_url)
    try:
        rows = await queries.fetch(conn, "lock_lease_candidates", shards.LOCK_NAMESPACE, 8, [], [2], 3)
        # Free shards in order, the one we hold left out, and no lock beyond the three asked for.
        assert [row["shard"] for row in rows] == [0, 1, 3]
        assert (await lock_holders(pool)) == {0: 1, 1: 1, 3: 1}
        await queries.fetch(conn, "unlock_shards", shards.LOCK_NAMESPACE, [0, 1, 3])
        assert (await lock_holders(pool)) == {}
    finally:
        await conn.close()


async def test_a_lease_row_held_by_a_write_in_flight_is_skipped_and_taken_once_it_ends(
    db_url: str, pool: asyncpg.Pool
) -> None:
    await pool.execute(queries.sql("ensure_shards"), FAST.shard_count)
    busy = 3
    writer = await database.connect(db_url)
    try:
        # What the fence of a previous owner's write holds until its commit.
        transaction = writer.transaction()
        await transaction.start()
        await writer.execute("SELECT epoch FROM shard_leases WHERE shard = $1 FOR SHARE", busy)
        before = await pool.fetchval("SELECT epoch FROM shard_leases WHERE shard = $1", busy)
        async with members(db_url, 1) as (a,):
            await until(
                lambda: len(a.recorder.owned) == FAST.shard_count - 1, message="free shards not taken"
            )
            assert busy not in a.recorder.owned
            # Its advisory lock was given back, so nobody holds a shard it does not own.
            assert busy not in await lock_holders(pool)
            await transaction.commit()
            await until(lambda: busy in a.recorder.owned, message="the busy shard was never taken")
            assert a.recorder.owned[busy] == before + 1
            assert (await lock_holders(pool)) == {shard: 1 for shard in range(FAST.shard_count)}
    finally:
        await writer.close()
