"""The command inbox: commands reach their server's owner from any replica.

The HTTP API runs on every replica; actors run only where a shard is owned. A command is a row in
`commands`, and a trigger NOTIFYs `zlh_commands` with the server id and the command id at commit.
Each replica LISTENs on its own dedicated connection (a pooled one would `UNLISTEN *` on release)
and wakes the owner's actor, which reads every queued command of its server from the table: the
notification is only a wake-up, so a lost or duplicated one is harmless. Notifications sent while
the listener was disconnected are lost, so after every (re)connect (`listener.Listener` probes the
connection and reconnects) the replica rescans its shards for queued work (and its periodic sweep
catches anything else).

The replica that enqueues a command wakes the owner's actor itself right after the commit
(`waking`: a no-op unless the server's shard is its own) and skips the command's own notification,
so the actor is not woken a second time for nothing; the notification still reaches every other
replica. Skipping it is safe: the direct wake-up comes after the commit, so the actor's read sees
the command. Should the code after the commit never run, the sweep catches the command. (An agent's
report is not announced by the trigger at all: zlh_actors/api/agent_callbacks.py wakes its owner.)

Outcomes travel the same way: settling a command submitted here NOTIFYs `zlh_command_outcomes` with
its id when it leaves `queued` (migration 0006: nobody waits for reports, drifts or `done`), and the
replica that received the HTTP request wakes its waiter; a waiter that hears nothing still re-reads
the command at its deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any

import asyncpg

from storage import commands, database
from zlh_actors.runtime import listener, ownership

COMMANDS_CHANNEL = "zlh_commands"
OUTCOMES_CHANNEL = "zlh_command_outcomes"
# Commands whose owner this replica woke itself, whose notification has not arrived yet. Bounded: a
# notification lost in a reconnect never comes, and forgetting an id costs one needless wake-up.
MAX_WOKEN = 10_000


class Inbox:
    """This replica's LISTEN connection, and the waiters for command outcomes."""

    def __init__(
        self,
        url: str,
        replica_id: uuid.UUID,
        settings: ownership.LeaseSettings,
        *,
        on_command: Callable[[uuid.UUID], None],
        on_reconnect: Callable[[], Awaitable[None]],
    ) -> None:
        self._on_command = on_command
        self._on_reconnect = on_reconnect
        self._waiters: dict[uuid.UUID, asyncio.Future[None]] = {}
        self._woken: dict[uuid.UUID, None] = {}  # insertion-ordered: the oldest is forgotten first
        self._listener = listener.Listener(
            url,
            name="command inbox",
            server_settings=ownership.session_settings(f"{ownership.LISTEN_APP}{replica_id}", settings),
            channels={COMMANDS_CHANNEL: self._command, OUTCOMES_CHANNEL: self._outcome},
            on_connect=self._connected,
            probe_interval=settings.heartbeat_interval,
            probe_timeout=settings.lease_timeout,
            backoff=(settings.heartbeat_interval, settings.lease_timeout),
        )

    @property
    def reconnects(self) -> int:
        return self._listener.reconnects

    def _command(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        server, _, command = str(payload).partition(" ")
        with contextlib.suppress(ValueError):
            command_id = uuid.UUID(command) if command else None
            if command_id is not None and command_id in self._woken:
                del self._woken[command_id]  # this replica wakes (or woke) the owner itself
                return
            self._on_command(uuid.UUID(server))

    @contextlib.contextmanager
    def waking(self, server_id: uuid.UUID, command_id: uuid.UUID) -> Iterator[None]:
        """Around the transaction that enqueues `command_id`: wake the server's actor once it commits.

        The wake-up goes through `on_command`, which does nothing unless the server's shard is owned
        here. The command's own notification is skipped on this replica (it may arrive before the
        code after the commit runs, hence the id is noted first) and still wakes the owner wherever
        it is. Nothing is woken if the block raises.
        """
        self.expect([command_id])
        try:
            yield
        except BaseException:
            self._woken.pop(command_id, None)
            raise
        self.wake([server_id])

    def expect(self, command_ids: Iterable[uuid.UUID]) -> None:
        """Note commands whose servers this replica wakes itself (`wake`) after their commit: their
        notifications are skipped here. Call before the commit. A command whose transaction rolls
        back is never notified; its id is forgotten in time, like one lost in a reconnect."""
        for command_id in command_ids:
            if len(self._woken) >= MAX_WOKEN:
                del self._woken[next(iter(self._woken))]
            self._woken[command_id] = None

    def wake(self, server_ids: Iterable[uuid.UUID]) -> None:
        """Wake the actors of the servers whose shards are owned here (the others are not ours)."""
        for server_id in server_ids:
            self._on_command(server_id)

    def _outcome(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        with contextlib.suppress(ValueError):
            waiter = self._waiters.get(uuid.UUID(str(payload)))
            if waiter is not None and not waiter.done():
                waiter.set_result(None)

    async def _connected(self) -> None:
        self._woken.clear()  # whatever was not delivered before the reconnect never will be
        await self._on_reconnect()

    async def run(self) -> None:
        """Stay subscribed until `stop`; after each (re)connect, rescan for missed commands."""
        await self._listener.run()

    async def stop(self) -> None:
        self._listener.stop()

    @contextlib.contextmanager
    def _waiting(self, command_id: uuid.UUID) -> Iterator[asyncio.Future[None]]:
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters[command_id] = waiter
        try:
            yield waiter
        finally:
            del self._waiters[command_id]

    async def submit(
        self,
        pool: asyncpg.Pool,
        server_id: uuid.UUID,
        kind: str,
        payload: dict[str, Any] | None = None,
        *,
        wait: float = 2.0,
    ) -> commands.Command:
        """Enqueue a command and wait up to `wait` seconds for its outcome; return it as last seen.

        The caller answers from the returned status: accepted (202), rejected (409), or still queued
        when the owner is slow or being replaced (202: the command stays in the inbox and will run).
        """
        command_id = uuid.uuid4()
        with self._waiting(command_id) as waiter:
            with self.waking(server_id, command_id):
                async with database.transaction(pool) as conn:
                    await commands.enqueue(conn, server_id, kind, payload, command_id=command_id)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await waiter
        async with pool.acquire() as conn:
            return await commands.get(conn, command_id)
