"""Fenced writes: every state write by an actor proves, in its own transaction, that it still owns
the server's shard under the epoch it was given.

The check reads the lease row `FOR SHARE`: if another replica has taken the shard (bumped the
epoch, or the owner changed), or the owner's heartbeat is older than the lease timeout (it froze and
may be evicted any moment), the write is refused with `OwnershipLost` before anything is written.
The row lock is held until the write commits, so a takeover never bumps the epoch while a write
under the old one is in flight (the taker skips that shard, `FOR UPDATE SKIP LOCKED`, and tries it
again next tick), and every later write sees the new epoch. A replica that was frozen past its
lease and wakes up therefore cannot write anything.

With `quiet`, the journal's trigger does not NOTIFY the transaction's entries at commit: the same
statement that checks the lease sets `zlh.journal_notify` to `off` for the transaction (migration
0008), and the caller announces them itself once the transaction has committed (`runtime.announcer`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import uuid
from collections.abc import AsyncIterator

import asyncpg

from storage import database, queries, servers
from zlh_actors import errors


@dataclasses.dataclass(frozen=True)
class Lease:
    """What an actor holds: the shard of its server, the epoch it was granted, and by whom."""

    shard: int
    epoch: int
    owner: uuid.UUID
    # A lease is also void once its owner's heartbeat is older than this: a replica that froze
    # past its lease cannot write even before a peer has evicted it.
    timeout: float = 3.0


class FenceCounter:
    """How many writes the epoch check refused (exported as a metric; asserted by chaos tests)."""

    def __init__(self) -> None:
        self.rejected = 0


@contextlib.asynccontextmanager
async def transaction(
    pool: asyncpg.Pool, lease: Lease, counter: FenceCounter | None = None, *, quiet: bool = False
) -> AsyncIterator[database.Conn]:
    """A transaction that first verifies `lease` is still current; `OwnershipLost` if not."""
    async with database.transaction(pool) as conn:
        epoch = await queries.fetchval(conn, "check_lease", *_lease_args(lease), _journal_notify(quiet))
        _verify(lease, epoch, counter)
        yield conn


@contextlib.asynccontextmanager
async def server_transaction(
    pool: asyncpg.Pool,
    lease: Lease,
    server_id: uuid.UUID,
    counter: FenceCounter | None = None,
    *,
    quiet: bool = False,
) -> AsyncIterator[tuple[database.Conn, servers.Server]]:
    """`transaction`, and the server as it is in it, read by the statement that checks the lease
    (most fenced writes start by reading their server: one round trip fewer). `OwnershipLost` first,
    then `NotFound`."""
    async with database.transaction(pool) as conn:
        record = await queries.fetchrow(
            conn, "check_lease_and_get_server", *_lease_args(lease), server_id, _journal_notify(quiet)
        )
        assert record is not None  # the statement always returns one row
        _verify(lease, record["lease_epoch"], counter)
        if record["id"] is None:
            raise errors.NotFound("no such server", server_id=str(server_id))
        yield conn, servers.from_record(record)


def _lease_args(lease: Lease) -> tuple[int, uuid.UUID, datetime.timedelta]:
    return lease.shard, lease.owner, datetime.timedelta(seconds=lease.timeout)


def _journal_notify(quiet: bool) -> str:
    return "off" if quiet else "on"


def _verify(lease: Lease, epoch: int | None, counter: FenceCounter | None) -> None:
    if epoch != lease.epoch:
        if counter is not None:
            counter.rejected += 1
        raise errors.OwnershipLost(
            "shard lease moved on; refusing to write",
            shard=lease.shard,
            held_epoch=lease.epoch,
            current_epoch=epoch,
        )
