"""Shard leases: which replica acts for which servers, with fencing epochs.

A replica owns a shard while it holds the shard's session advisory lock on its one *lease
connection*, a dedicated connection that is never returned to a pool (asyncpg's pool runs
`pg_advisory_unlock_all()` on release). Losing that connection loses every shard on it, so the
actors of those shards are stopped at once.

On taking a shard the replica bumps the shard's `epoch` in `shard_leases`: the fencing token. Every
state write by an actor re-reads the epoch `FOR SHARE` in its own transaction (see `fencing`) and
fails with `OwnershipLost` if it moved. The `FOR SHARE` lock also keeps a takeover from bumping the
epoch while a write is in flight (the taker skips that shard until the write has ended), so there is
a single owner of a server's history at every instant. Shards are taken in batches: the advisory
locks of all the candidates in one statement, the epochs of all the locked shards in another.

Liveness. Each replica writes a heartbeat every `heartbeat_interval` on its lease connection. A
replica counts as live while its heartbeat is fresher than `lease_timeout` *and* its lease
connection is open (seen in `pg_stat_activity`). A killed process's connection closes at once, which
frees its locks and drops it from the live count: survivors take its shards on their next tick. A
frozen or partitioned process keeps its session and locks open on the server; once its heartbeat is
older than `lease_timeout`, a live replica terminates all of its sessions (`pg_terminate_backend`),
which frees the locks, and takes the shards with new epochs. Should the frozen process wake up, its
lease connection is gone and every write it attempts fails the epoch check.

Balance. Each replica aims at `ceil(shards / live replicas)`. Below that it takes free shards; above
it, it releases the surplus gracefully: the shard's actors drain their mailboxes, then the lease is
given up. On shutdown a replica releases everything the same way.

The timings and the worst-case takeover they give are in docs/ownership.md.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
import uuid
from collections.abc import Awaitable
from typing import Protocol

import asyncpg

from storage import database, queries
from zlh_actors import errors
from zlh_actors.runtime import shards

log = logging.getLogger(__name__)

LEASE_APP = "zlh-lease:"
LISTEN_APP = "zlh-listen:"
POOL_APP = "zlh-pool:"


@dataclasses.dataclass(frozen=True)
class LeaseSettings:
    shard_count: int = shards.DEFAULT_COUNT
    heartbeat_interval: float = 0.5
    lease_timeout: float = 3.0
    drain_timeout: float = 5.0
    statement_timeout_ms: int = 5000
    lock_timeout_ms: int = 1000
    tcp_user_timeout_ms: int = 5000
    tcp_keepalives_idle: int = 5
    tcp_keepalives_interval: int = 1
    tcp_keepalives_count: int = 3


def session_settings(app_name: str, settings: LeaseSettings) -> dict[str, str]:
    """Server settings for a connection of this replica: a name others can find it by, limits that
    make a dead peer or a stuck statement surface in seconds rather than hours, and no JIT.

    JIT compilation pays off for long analytical queries; ours are short, and the few that read many
    rows (the reconciler's pass) spent more time compiling than running (bench/README.md, "actors").
    """
    return {
        "application_name": app_name,
        "jit": "off",
        "statement_timeout": str(settings.statement_timeout_ms),
        "lock_timeout": str(settings.lock_timeout_ms),
        "idle_in_transaction_session_timeout": str(settings.statement_timeout_ms),
        "tcp_user_timeout": str(settings.tcp_user_timeout_ms),
        "tcp_keepalives_idle": str(settings.tcp_keepalives_idle),
        "tcp_keepalives_interval": str(settings.tcp_keepalives_interval),
        "tcp_keepalives_count": str(settings.tcp_keepalives_count),
    }


class LeaseListener(Protocol):
    async def acquired(self, leases: dict[int, int]) -> None:
        """The replica now owns these shards, each under its epoch (shard -> epoch)."""

    async def releasing(self, shard: int) -> None:
        """The replica is about to give `shard` up: drain its actors before this returns."""

    async def lost(self, shards: list[int]) -> None:
        """The replica no longer owns `shards`: stop their actors at once."""


async def check_not_pooled(conn: database.Conn) -> None:
    """Refuse a database behind a transaction-pooling proxy, where session locks silently break.

    Under transaction pooling, consecutive transactions of one client connection may run on
    different server sessions; a session advisory lock taken in one is then held by a session the
    client no longer talks to. Detect it by taking a lock and checking, in later transactions, that
    the same backend holds it.
    """
    probe = 0x7A6C6870  # "zlhp": a namespace of its own; the second key is our pid, so no peer collides
    first = await conn.fetchval("SELECT pg_backend_pid()")
    await conn.fetchval("SELECT pg_advisory_lock($1::integer, $2::integer)", probe, first)
    try:
        for _ in range(3):
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            held = await conn.fetchval(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND classid::bigint = $1::bigint "
                "AND objid::bigint = $2::bigint AND objsubid = 2 AND pid = pg_backend_pid() AND granted",
                probe,
                first,
            )
            if pid != first or held != 1:
                raise errors.ConfigError(
                    "the database connection changes server sessions between transactions (a "
                    "transaction-pooling proxy such as PgBouncer in transaction mode?); shard leases "
                    "need session-level advisory locks: connect directly or use session pooling"
                )
    finally:
        await conn.fetchval("SELECT pg_advisory_unlock($1::integer, $2::integer)", probe, first)


class LeaseManager:
    """Holds this replica's shard leases on one dedicated connection and keeps them balanced."""

    def __init__(
        self,
        url: str,
        listener: LeaseListener,
        *,
        replica_id: uuid.UUID,
        host: str,
        pid: int,
        http_port: int | None,
        settings: LeaseSettings,
    ) -> None:
        self._url = url
        self._listener = listener
        self.replica_id = replica_id
        self._host, self._pid, self._http_port = host, pid, http_port
        self.settings = settings
        self.owned: dict[int, int] = {}  # shard -> epoch
        self._conn: database.Connection | None = None
        self._last_heartbeat = 0.0
        self._stopping = False
        self.evictions = 0

    @property
    def _timeout(self) -> datetime.timedelta:
        return datetime.timedelta(seconds=self.settings.lease_timeout)

    async def _q(self, name: str, *args: object) -> list[asyncpg.Record]:
        assert self._conn is not None
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # arrives as the query completes, and a replica told to stop would then never stop.
        async with asyncio.timeout(self.settings.lease_timeout):
            return await queries.fetch(self._conn, name, *args)

    def halt(self) -> None:
        """Stop taking shards (before the loop is cancelled for a graceful `stop`)."""
        self._stopping = True

    async def _val(self, name: str, *args: object) -> object:
        rows = await self._q(name, *args)
        return rows[0][0] if rows else None

    # --- connection ---------------------------------------------------------------------------

    async def connect(self) -> None:
        """Open the lease connection, check it is a real session, and register this replica."""
        conn = await database.connect(
            self._url, server_settings=session_settings(f"{LEASE_APP}{self.replica_id}", self.settings)
        )
        try:
            await check_not_pooled(conn)
        except BaseException:
            await conn.close()
            raise
        self._conn = conn
        await self._q("ensure_shards", self.settings.shard_count)
        sent = time.monotonic()
        await self._q("register_replica", self.replica_id, self._host, self._pid, self._http_port)
        self._last_heartbeat = sent
        log.info("replica %s registered (%d shards)", self.replica_id, self.settings.shard_count)

    async def _drop_connection(self, reason: str) -> None:
        """Everything held on the lease connection is gone: stop those actors, then reconnect later."""
        lost = sorted(self.owned)
        self.owned.clear()
        if lost:
            log.error("lease connection lost (%s): stopping the actors of %d shards", reason, len(lost))
            await self._listener.lost(lost)
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None

    # --- the loop -----------------------------------------------------------------------------

    async def run(self) -> None:
        """Heartbeat and rebalance until `stop`; survive connection loss by reconnecting."""
        backoff = self.settings.heartbeat_interval
        while not self._stopping:
            try:
                if self._conn is None or self._conn.is_closed():
                    await self._drop_connection("connection closed")
                    await self.connect()
                await self.tick()
                backoff = self.settings.heartbeat_interval
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # Whatever went wrong (a lost connection, a rotated password, a driver error we did
                # not foresee), this loop must outlive it: a replica whose lease loop died would
                # serve HTTP forever without owning anything.
                await self._drop_connection(str(exc) or type(exc).__name__)
                backoff = min(backoff * 2, self.settings.lease_timeout)
                log.warning("lease loop: %s; retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                continue
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def tick(self) -> None:
        """One round: heartbeat, evict presumed-dead replicas, then take or give shards."""
        if not self.heartbeat_fresh() and self.owned:
            # We may already be presumed dead: fence ourselves before anyone else has to.
            await self._drop_connection("heartbeat overdue")
            return
        await self._beat()
        for row in await self._q("stale_replicas", self._timeout, self.replica_id):
            await self._evict(row["id"])
        live = [row["id"] for row in await self._q("live_replicas", self._timeout, LEASE_APP)]
        if self.replica_id not in live:
            live.append(self.replica_id)
        target = shards.fair_share(self.settings.shard_count, len(live))
        if len(self.owned) < target:
            await self._acquire(live, target - len(self.owned))
        elif len(self.owned) > target:
            for shard in sorted(self.owned, reverse=True)[: len(self.owned) - target]:
                await self._release(shard)

    def heartbeat_fresh(self) -> bool:
        """Our last heartbeat is younger than the lease timeout, so peers still count us live.

        Judged on this process's monotonic clock with no database call, from when the heartbeat
        was *sent* (the database dated it no earlier); the peers' rule, judged locally. A process
        stopped past its lease (SIGSTOP) sees this false the instant it continues, before its lease
        loop has run. Safe to call from a worker thread.
        """
        return time.monotonic() - self._last_heartbeat <= self.settings.lease_timeout

    async def _beat(self) -> None:
        """Write the heartbeat; `OwnershipLost` if a peer has already presumed us dead."""
        sent = time.monotonic()
        if await self._val("heartbeat", self.replica_id) is None:
            raise errors.OwnershipLost("this replica was presumed dead by a peer")
        self._last_heartbeat = sent

    async def _while_beating(self, work: Awaitable[None]) -> None:
        """Run `work` (a drain that may take seconds) while the heartbeat goes on, so that a graceful
        hand-off never looks like a dead replica to the others."""
        task = asyncio.ensure_future(work)
        try:
            while True:
                done, _ = await asyncio.wait({task}, timeout=self.settings.heartbeat_interval)
                if done:
                    task.result()
                    return
                await self._beat()
        finally:
            if not task.done():
                task.cancel()

    async def _evict(self, replica_id: uuid.UUID) -> None:
        closed = await self._val("terminate_replica_backends", replica_id, shards.LOCK_NAMESPACE)
        # New epochs at once (the fence check also refuses a stale heartbeat, this is belt and braces).
        await self._q("fence_replica_leases", replica_id)
        await self._q("delete_replica", replica_id)
        self.evictions += 1
        log.warning("replica %s missed its lease; closed its %s database sessions", replica_id, closed)

    async def _acquire(self, live: list[uuid.UUID], wanted: int) -> None:
        """Take up to `wanted` shards in two statements, however many there are.

        First the advisory locks of the candidates (shards no live replica owns, free ones first;
        those recorded as ours are candidates too, since after a reconnect we no longer hold their
        locks), then one epoch bump over the shards locked. A lease row still share-locked by a
        write of its previous owner is skipped rather than waited for: the fence makes that write
        either commit before any new epoch exists or fail, so the shard is unlocked and tried again
        next tick. Taking shards one at a time cost two round trips each, and with 32 orphaned
        shards on a busy machine it was most of a takeover.
        """
        others = [replica for replica in live if replica != self.replica_id]
        rows = await self._q(
            "lock_lease_candidates",
            shards.LOCK_NAMESPACE,
            self.settings.shard_count,
            others,
            sorted(self.owned),
            wanted,
        )
        locked = [row["shard"] for row in rows]
        if not locked:
            return
        taken = {row["shard"]: row["epoch"] for row in await self._q("take_leases", locked, self.replica_id)}
        busy = [shard for shard in locked if shard not in taken]
        if busy:
            await self._q("unlock_shards", shards.LOCK_NAMESPACE, busy)
            log.info("shards %s still had writes in flight; trying them next tick", _ranges(busy))
        if not taken:
            return
        self.owned.update(taken)
        log.info("acquired shards %s", _ranges(list(taken)))
        await self._listener.acquired(taken)

    async def _release(self, shard: int) -> None:
        epoch = self.owned.pop(shard)
        await self._while_beating(self._listener.releasing(shard))
        await self._q("release_lease", shard, self.replica_id)
        await self._q("unlock_shards", shards.LOCK_NAMESPACE, [shard])
        log.info(
            "released shard %d (epoch %d) to balance or shut down",
            shard,
            epoch,
            extra={"shard": shard, "epoch": epoch},
        )

    async def stop(self) -> None:
        """Hand every shard off gracefully and deregister; safe to call twice."""
        self._stopping = True
        if self._conn is None or self._conn.is_closed():
            await self._drop_connection("stopping")
            return
        try:
            for shard in sorted(self.owned):
                await self._release(shard)
            await self._q("delete_replica", self.replica_id)
        except (errors.ZlhError, TimeoutError, OSError) as exc:
            log.warning("could not hand shards off cleanly (%s); they will be taken over", exc)
            await self._drop_connection("stopping")
        finally:
            if self._conn is not None:
                await self._conn.close()
                self._conn = None


def _ranges(numbers: list[int]) -> str:
    """[0, 1, 2, 5] -> '0-2, 5': shard lists in logs stay one short line."""
    out: list[str] = []
    for n in sorted(numbers):
        if out and out[-1].split("-")[-1] == str(n - 1):
            out[-1] = f"{out[-1].split('-')[0]}-{n}"
        else:
            out.append(str(n))
    return ", ".join(out)
