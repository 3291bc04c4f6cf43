"""Announcing this replica's journal entries: at once to its own stream hub, coalesced to the others.

The journal's trigger NOTIFYs `zlh_journal` for every entry, in the writing transaction (migration
0004). PostgreSQL serializes the commits of transactions that NOTIFY until their WAL flush is done,
so that is one flush per state change that no other commit can share, and every replica's listening
backends are woken for each. The actor's fenced transactions therefore ask the trigger to stay
quiet (`fencing.transaction(..., quiet=True)`, migration 0008) and, once one that wrote journal
entries has committed, the actor calls `Announcer.announce`, which

- tells this replica's listeners at once, with no round trip (the hub reads the journal);
- sends one NOTIFY on the channel for the peers, from a pooled connection: at most one is in flight,
  and every announcement made meanwhile is covered by the next one. Under load that is one notifying
  commit per round trip for the whole replica instead of one per entry. The payload names this
  replica, so its own hub can ignore it.

A notification is only ever a wake-up (readers re-read the journal from their own cursor), so
coalescing loses nothing. An announcement that never reaches the peers (the replica dies between its
commit and the NOTIFY, or the database is unreachable) delays their clients until their hub's next
idle read (`api.stream.PROBE_INTERVAL`); it loses nothing either.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable

import asyncpg
import orjson

from storage import database
from zlh_actors import errors

log = logging.getLogger(__name__)

CHANNEL = "zlh_journal"
TIMEOUT = 5.0  # seconds a NOTIFY may take, waiting for a pooled connection included


def payload(replica_id: uuid.UUID) -> str:
    """What an announcement from `replica_id` carries (the trigger's payloads name an entry instead)."""
    return orjson.dumps({"replica": str(replica_id)}).decode()


def sender(text: str) -> uuid.UUID | None:
    """The replica that sent an announcement, or None for any other payload (the trigger's)."""
    try:
        return uuid.UUID(orjson.loads(text)["replica"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return None


class Announcer:
    """Announces that this replica committed journal entries; see the module's docstring."""

    def __init__(self, pool: asyncpg.Pool, replica_id: uuid.UUID) -> None:
        self._pool = pool
        self.replica_id = replica_id
        self._payload = payload(replica_id)
        self._local: list[Callable[[], None]] = []
        self._sending: asyncio.Task[None] | None = None
        self._again = False
        self._closed = False
        self.sent = 0  # NOTIFYs sent: fewer than announcements under load (tests read it)

    @property
    def in_flight(self) -> bool:
        """A NOTIFY is being sent (or waits for a pooled connection)."""
        return self._sending is not None

    def on_local(self, callback: Callable[[], None]) -> None:
        """Call `callback` on every announcement, synchronously: it must neither block nor raise."""
        self._local.append(callback)

    def announce(self) -> None:
        """Journal entries of this replica have committed: tell its listeners now, its peers soon."""
        for callback in self._local:
            callback()
        if self._closed:
            return
        if self._sending is None:
            self._sending = asyncio.get_running_loop().create_task(self._send(), name="journal-announcer")
        else:
            self._again = True  # covered by the NOTIFY sent after the one in flight

    async def close(self) -> None:
        """Stop sending (before the pool closes); an announcement in flight is given up."""
        self._closed = True
        sending, self._sending = self._sending, None
        if sending is not None:
            sending.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sending

    async def _send(self) -> None:
        try:
            while True:
                self._again = False
                await self._notify()
                if not self._again or self._closed:
                    return
        finally:
            if not self._closed:
                self._sending = None

    async def _notify(self) -> None:
        try:
            # Bounded: a connection gone silent must not hold every later announcement behind it.
            async with asyncio.timeout(TIMEOUT), database.acquire(self._pool) as conn:
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, self._payload)
            self.sent += 1
        except (errors.ZlhError, TimeoutError) as exc:
            # The peers' hubs read the journal periodically anyway: they are late, not wrong.
            log.warning("could not announce journal entries to the other replicas: %s", exc)
