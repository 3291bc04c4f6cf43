"""Shard leases against the real PostgreSQL: balance, takeover, eviction of a frozen owner, fencing.

Lease managers run in this process, each on its own dedicated connection, exactly as replicas do;
"killing" one means terminating its database session, "freezing" one means stopping its loop while
its session (and locks) stay open, which is what a SIGSTOP'd process looks like to the database.
The real-process versions of these scenarios are in tests/chaos/.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import AsyncIterator

import asyncpg
import orjson
import pytest

from storage import database, journal, servers
from tests import helpers
from zlh_actors import errors
from zlh_actors.runtime import announcer, fencing, ownership, shards

FAST = ownership.LeaseSettings(shard_count=8, heartbeat_interval=0.05, lease_timeout=0.6, drain_timeout=1)


class Recorder:
    def __init__(self) -> None:
        self.owned: dict[int, int] = {}
        self.lost_shards: list[int] = []
        self.released: list[int] = []
        self.batches: list[list[int]] = []

    async def acquired(self, leases: dict[int, int]) -> None:
        self.owned.update(leases)
        self.batches.append(sorted(leases))

    async def releasing(self, shard: int) -> None:
        self.owned.pop(shard)
        self.released.append(shard)

    async def lost(self, lost: list[int]) -> None:
        for shard in lost:
            self.owned.pop(shard, None)
        self.lost_shards.extend(lost)


class Member:
    def __init__(self, url: str, settings: ownership.LeaseSettings = FAST) -> None:
        self.recorder = Recorder()
        self.manager = ownership.LeaseManager(
            url, self.recorder, replica_id=uuid.uuid4(), host="test", pid=1, http_port=None, settings=settings
        )
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> Member:
        await self.manager.connect()
        self.task = asyncio.create_task(self.manager.run())
        return self

    async def freeze(self) -> None:
        """Stop the loop but keep the session and its locks open, like a SIGSTOP'd process."""
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    async def stop(self) -> None:
        if self.task is not None and not self.task.done():
            await self.freeze()
        await self.manager.stop()


@contextlib.asynccontextmanager
async def members(url: str, count: int) -> AsyncIterator[list[Member]]:
    started = [await Member(url).start() for _ in range(count)]
    try:
        yield started
    finally:
        for member in started:
            await member.stop()


async def lock_holders(pool: asyncpg.Pool) -> dict[int, int]:
    """shard -> number of sessions holding its advisory lock."""
    rows = await pool.fetch(
        "SELECT objid::integer AS shard, count(*) AS n FROM pg_locks WHERE locktype = 'advisory' "
        "AND classid::bigint = $1::bigint AND objsubid = 2 AND granted "
        "AND database = (SELECT oid FROM pg_database WHERE datname = current_database()) GROUP BY objid",
        shards.LOCK_NAMESPACE,
    )
    return {row["shard"]: row["n"] for row in rows}


async def until(predicate: object, timeout: float = 5.0, message: str = "") -> None:
    async def check() -> bool:
        return bool(predicate())  # type: ignore[operator]

    await helpers.assert_eventually(check, timeout=timeout, message=message)


async def test_python_and_sql_agree_on_shards(pool: asyncpg.Pool) -> None:
    ids = [uuid.uuid4() for _ in range(200)]
    for count in (1, 7, 64):
        rows = await pool.fetch(
            "SELECT id, zlh_shard(id, $2) AS shard FROM unnest($1::uuid[]) AS id", ids, count
        )
        assert {row["id"]: row["shard"] for row in rows} == {i: shards.shard_of(i, count) for i in ids}


async def test_two_replicas_split_the_shards_and_never_share_one(db_url: str, pool: asyncpg.Pool) -> None:
    async with members(db_url, 2) as (a, b):
        await until(
            lambda: len(a.recorder.owned) + len(b.recorder.owned) == 8, message="shards not all owned"
        )
        await until(lambda: len(a.recorder.owned) == 4 and len(b.recorder.owned) == 4, message="not balanced")
        assert not set(a.recorder.owned) & set(b.recorder.owned)
        holders = await lock_holders(pool)
        assert holders == {shard: 1 for shard in range(8)}
        leases = {
            row["shard"]: row["owner"] for row in await pool.fetch("SELECT shard, owner FROM shard_leases")
        }
        for shard in a.recorder.owned:
            assert leases[shard] == a.manager.replica_id
        for shard in b.recorder.owned:
            assert leases[shard] == b.manager.replica_id


async def test_a_lost_lease_connection_stops_its_shards_and_they_are_retaken_with_new_epochs(
    db_url: str, pool: asyncpg.Pool
) -> None:
    async with members(db_url, 2) as (a, b):
        await until(lambda: len(a.recorder.owned) == 4 and len(b.recorder.owned) == 4)
        b_shards = dict(b.recorder.owned)
        await pool.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = $1",
            f"{ownership.LEASE_APP}{b.manager.replica_id}",
        )
        await until(
            lambda: set(b.recorder.lost_shards) >= set(b_shards), message="victim never noticed the loss"
        )

        def retaken() -> bool:
            owners = [a.recorder.owned, b.recorder.owned]
            return all(
                any(owned.get(shard, 0) > epoch for owned in owners) for shard, epoch in b_shards.items()
            )

        # The victim reconnects and competes again; whoever wins a shard holds it under a new epoch.
        await until(retaken, timeout=3, message="shards not retaken with new epochs")
        assert not set(a.recorder.owned) & set(b.recorder.owned)
        assert (await lock_holders(pool)) == {shard: 1 for shard in range(8)}


async def test_a_frozen_replica_is_evicted_after_its_lease(db_url: str, pool: asyncpg.Pool) -> None:
    async with members(db_url, 2) as (a, b):
        await until(lambda: len(a.recorder.owned) == 4 and len(b.recorder.owned) == 4)
        frozen = dict(b.recorder.owned)
        await b.freeze()
        # While frozen, its locks are still held: nobody may take its shards before the lease expires.
        assert set(await lock_holders(pool)) == set(range(8))
        await until(lambda: len(a.recorder.owned) == 8, timeout=FAST.lease_timeout + 3, message="no takeover")
        assert a.manager.evictions >= 1
        for shard, epoch in frozen.items():
            assert a.recorder.owned[shard] > epoch
        assert (await lock_holders(pool)) == {shard: 1 for shard in range(8)}


async def test_graceful_stop_hands_shards_over(db_url: str) -> None:
    async with members(db_url, 2) as (a, b):
        await until(lambda: len(a.recorder.owned) == 4 and len(b.recorder.owned) == 4)
        handed = set(b.recorder.owned)
        await b.stop()
        assert set(b.recorder.released) == handed
        assert b.recorder.lost_shards == []
        await until(lambda: len(a.recorder.owned) == 8, timeout=3)


async def test_scale_up_rebalances_by_releasing_surplus(db_url: str) -> None:
    async with members(db_url, 1) as (a,):
        await until(lambda: len(a.recorder.owned) == 8)
        async with members(db_url, 1) as (b,):
            await until(lambda: len(a.recorder.owned) == 4 and len(b.recorder.owned) == 4, timeout=5)
            assert len(a.recorder.released) == 4
            assert a.recorder.lost_shards == []


@contextlib.asynccontextmanager
async def leased_server(
    db_url: str, pool: asyncpg.Pool, name: str
) -> AsyncIterator[tuple[servers.Server, fencing.Lease]]:
    """A new server, and the lease of its shard held by a live member."""
    async with database.transaction(pool) as conn:
        server = await servers.insert(
            conn, tenant="acme", name=name, spec={}, state="requested", event="seed"
        )
    shard = shards.shard_of(server.id, FAST.shard_count)
    async with members(db_url, 1) as (a,):
        await until(lambda: shard in a.recorder.owned)
        yield server, fencing.Lease(shard=shard, epoch=a.recorder.owned[shard], owner=a.manager.replica_id)


async def test_fenced_write_with_an_old_epoch_is_refused(db_url: str, pool: asyncpg.Pool) -> None:
    async with leased_server(db_url, pool, "fenced") as (server, lease):
        counter = fencing.FenceCounter()
        async with fencing.transaction(pool, lease, counter) as conn:
            server = await servers.transition(
                conn, server, "provisioning.cloning", "create", epoch=lease.epoch
            )
        stale = fencing.Lease(shard=lease.shard, epoch=lease.epoch - 1, owner=lease.owner)
        with pytest.raises(errors.OwnershipLost):
            async with fencing.transaction(pool, stale, counter) as conn:
                await servers.transition(conn, server, "deleting.stopping_game", "delete", epoch=stale.epoch)
        assert counter.rejected == 1
        async with pool.acquire() as conn:
            assert (await servers.get(conn, server.id)).state == "provisioning.cloning"


async def test_the_fenced_server_read_checks_the_lease_first_and_holds_it(
    db_url: str, pool: asyncpg.Pool
) -> None:
    async with leased_server(db_url, pool, "fenced-read") as (server, lease):
        counter = fencing.FenceCounter()
        async with fencing.server_transaction(pool, lease, server.id, counter) as (_conn, read):
            assert read == server
            # The lease row is share-locked until the write commits: a takeover cannot bump it.
            async with pool.acquire() as other:
                taken = await other.fetchval(
                    "SELECT shard FROM shard_leases WHERE shard = $1 FOR UPDATE SKIP LOCKED", lease.shard
                )
            assert taken is None
        stale = fencing.Lease(shard=lease.shard, epoch=lease.epoch - 1, owner=lease.owner)
        missing = uuid.uuid4()
        with pytest.raises(errors.OwnershipLost):  # the lease is checked before the server is looked for
            async with fencing.server_transaction(pool, stale, missing, counter):
                pass
        assert counter.rejected == 1
        with pytest.raises(errors.NotFound):
            async with fencing.server_transaction(pool, lease, missing, counter):
                pass
        assert counter.rejected == 1


async def test_a_quiet_fenced_write_is_not_notified_and_the_next_transaction_is(
    db_url: str, pool: asyncpg.Pool
) -> None:
    single = await database.create_pool(db_url, max_size=1)  # every write below on one session
    try:
        async with (
            leased_server(db_url, pool, "quiet") as (server, lease),
            helpers.listening(db_url, announcer.CHANNEL) as heard,
        ):
            async with fencing.server_transaction(single, lease, server.id, quiet=True) as (conn, read):
                await servers.transition(conn, read, "provisioning.cloning", "create", epoch=lease.epoch)
            # The same session, outside the fence: the trigger is on again for it.
            async with database.transaction(single) as conn:
                other = await servers.insert(
                    conn, tenant="acme", name="loud", spec={}, state="requested", event="seed"
                )
                loud = (await journal.newest(conn, other.id)).cursor
            # Notifications arrive in commit order: had the quiet entry been NOTIFYed, it would be first.
            async with asyncio.timeout(10):
                while not heard.payloads:
                    heard.changed.clear()
                    await heard.changed.wait()
            first = orjson.loads(heard.payloads[0])
            assert journal.Cursor(int(first["txid"]), first["position"]) == loud
            async with pool.acquire() as conn:
                assert [e.to_state for e in await journal.entries(conn, server.id)] == [
                    "requested",
                    "provisioning.cloning",
                ]
    finally:
        await single.close()


async def test_a_direct_connection_is_not_mistaken_for_pooling(db_url: str) -> None:
    conn = await database.connect(db_url)
    try:
        await ownership.check_not_pooled(conn)
    finally:
        await conn.close()
