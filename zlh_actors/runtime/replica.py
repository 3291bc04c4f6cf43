"""A replica: the actors of the shards it owns, kept in step with its leases and its inbox.

This is the seam between ownership and work. Leases say which shards are ours; the registry holds
the actors; the inbox says which servers have new commands. A server's actor receives a message
only while its shard is owned, and its handler gets the shard's `Lease` to fence every write.

- shards acquired (a takeover takes them in one batch): every server of those shards that is not
  at rest or has unfinished commands gets a wake-up, found by one scan for the whole batch, so work
  interrupted by a crash or a failover resumes on the new owner;
- shard being released (rebalance, shutdown): routing stops, its actors drain (a step in flight
  still holds the lease for its requests to Proxmox and agents), then the lease goes;
- shard lost (lease connection gone): its actors are stopped at once.

A periodic sweep re-sends wake-ups for the owned shards (level-based, like a controller's resync):
it catches notifications lost in a reconnect and re-checks step deadlines of servers that wait.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import uuid
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

import asyncpg

from zlh_actors import errors
from zlh_actors.runtime import actors, fencing, inbox, ownership, shards

log = logging.getLogger(__name__)

M = TypeVar("M")

FindPending = Callable[[list[int]], Awaitable[list[uuid.UUID]]]


class Replica(Generic[M]):
    """Owns shards, runs their servers' actors, and routes commands to them."""

    def __init__(
        self,
        *,
        url: str,
        pool: asyncpg.Pool,
        registry: actors.Registry[uuid.UUID, M],
        wake: Callable[[uuid.UUID], M],
        find_pending: FindPending,
        settings: ownership.LeaseSettings,
        http_port: int | None = None,
        http_host: str | None = None,
        sweep_interval: float = 5.0,
        replica_id: uuid.UUID | None = None,
    ) -> None:
        self.id = replica_id or uuid.uuid4()
        self.pool = pool
        self.registry = registry
        self._wake = wake
        self._find_pending = find_pending
        self.settings = settings
        self._sweep_interval = sweep_interval
        self.leases: dict[int, fencing.Lease] = {}
        self._draining: dict[int, fencing.Lease] = {}  # shards being handed off, until their actors drained
        self.fence = fencing.FenceCounter()
        self.leasing = ownership.LeaseManager(
            url,
            self,
            replica_id=self.id,
            host=http_host or socket.gethostname(),
            pid=os.getpid(),
            http_port=http_port,
            settings=settings,
        )
        self.inbox = inbox.Inbox(url, self.id, settings, on_command=self.route, on_reconnect=self._rescan_all)
        self._tasks: list[asyncio.Task[None]] = []
        self._lease_task: asyncio.Task[None] | None = None

    # --- what actors use ----------------------------------------------------------------------

    def shard_of(self, server_id: uuid.UUID) -> int:
        return shards.shard_of(server_id, self.settings.shard_count)

    def lease_for(self, server_id: uuid.UUID) -> fencing.Lease:
        """The lease under which to write for this server; `OwnershipLost` when not ours."""
        lease = self.leases.get(self.shard_of(server_id))
        if lease is None:
            raise errors.OwnershipLost(
                "this replica does not own the server's shard", server_id=str(server_id)
            )
        return lease

    def holds(self, lease: fencing.Lease) -> bool:
        """`lease` is still this replica's as far as it knows without asking the database: it is
        the shard's current lease here (or the one its actors are draining under during a graceful
        hand-off, which the database still holds too), and the heartbeat that keeps it is fresh.
        For requests the database cannot fence (`guard`); safe to call from a worker thread.

        By identity: a lease lost and taken again is a new object, and its old one stays void."""
        current = self.leases.get(lease.shard) or self._draining.get(lease.shard)
        return current is lease and self.leasing.heartbeat_fresh()

    def owns(self, server_id: uuid.UUID) -> bool:
        """This replica holds the lease of the server's shard (as of now: leases move)."""
        return self.shard_of(server_id) in self.leases

    def route(self, server_id: uuid.UUID) -> None:
        """Wake the server's actor if its shard is ours; other replicas handle the rest."""
        if not self.owns(server_id):
            return
        try:
            self.registry.tell(server_id, self._wake(server_id))
        except errors.Overloaded:
            # A full mailbox already holds wake-ups; the actor reads every queued command anyway.
            log.debug("mailbox of %s is full; wake-up dropped", server_id)
        except errors.OwnershipLost:
            log.debug("wake-up for %s after shutdown dropped", server_id)

    # --- lease callbacks ----------------------------------------------------------------------

    async def acquired(self, leases: dict[int, int]) -> None:
        for shard, epoch in leases.items():
            self.leases[shard] = fencing.Lease(
                shard=shard, epoch=epoch, owner=self.id, timeout=self.settings.lease_timeout
            )
        taken = sorted(leases)
        # One scan for the whole batch, not one per shard: a takeover takes half the shards at once.
        self._spawn(self._rescan(taken), f"rescan-shards-{taken[0]}-{taken[-1]}")

    async def releasing(self, shard: int) -> None:
        lease = self.leases.pop(shard, None)  # routes nothing more to the shard
        if lease is not None:
            self._draining[shard] = lease
        try:
            keys = [key for key in self.registry.resident() if self.shard_of(key) == shard]
            await self.registry.drain(keys, timeout=self.settings.drain_timeout)
        finally:
            self._draining.pop(shard, None)

    async def lost(self, lost_shards: list[int]) -> None:
        gone = set(lost_shards)
        for shard in gone:
            self.leases.pop(shard, None)
        await self.registry.kill([key for key in self.registry.resident() if self.shard_of(key) in gone])

    # --- scanning -----------------------------------------------------------------------------

    async def _rescan(self, shard_list: list[int]) -> None:
        try:
            pending = await self._find_pending(shard_list)
        except Exception as exc:  # the sweep must survive a database outage: it exists to recover from one
            log.warning("could not scan shards %s for pending work: %s", shard_list, exc)
            return
        for server_id in pending:
            self.route(server_id)

    async def _rescan_all(self) -> None:
        if self.leases:
            await self._rescan(sorted(self.leases))

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(self._sweep_interval)
            await self._rescan_all()

    # --- lifecycle ----------------------------------------------------------------------------

    def _spawn(self, coro: Awaitable[None], name: str) -> asyncio.Task[None]:
        task = asyncio.ensure_future(coro)
        task.set_name(f"replica:{name}")
        self._tasks.append(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.remove(task)
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            log.error("replica task %s failed: %s", task.get_name(), exc, exc_info=exc)

    async def start(self) -> None:
        """Register and start leasing, listening and sweeping; `ConfigError` if the database is unfit."""
        await self.leasing.connect()
        self._lease_task = self._spawn(self.leasing.run(), "leases")
        self._spawn(self.inbox.run(), "inbox")
        self._spawn(self._sweep(), "sweep")

    async def stop(self) -> None:
        """Hand every shard off (draining actors), then stop listening; safe to call twice."""
        if self._lease_task is not None:
            # The lease loop and the hand-off share one connection: stop the loop first, and tell
            # it to take nothing more should the cancellation land between two of its queries.
            self.leasing.halt()
            self._lease_task.cancel()
            await asyncio.wait([self._lease_task])
            self._lease_task = None
        await self.leasing.stop()
        await self.inbox.stop()
        await self.registry.shutdown(timeout=self.settings.drain_timeout)
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks))
