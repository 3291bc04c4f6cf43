"""A LISTEN connection that stays connected: the one reconnect loop of the inbox, the token cache and
the stream hub.

A notification reaches only the sessions listening when it is sent, so each of them keeps a dedicated
connection (a pooled one is `UNLISTEN`ed on release) and must notice when that connection is gone.
One that only receives shows no error until it is used, so it is probed with `SELECT 1` every
`probe_interval`; an answer slower than `probe_timeout` counts as a loss, since a frozen backend sends
neither FIN nor RST. On any failure the connection is terminated, the failure logged (a warning when
the database is lost, an error with its traceback otherwise: a bug), and it reconnects after a
back-off that doubles from the first to the largest of `backoff`, until `stop`.

Notifications sent while nobody listened are lost, and only the owner knows what to do about that: its
`on_connect` runs after every (re)connect, once the channels are listened to (the inbox rescans, the
token cache forgets, the hub re-reads). A failure there is a failure like any other: reconnect, and
run it again. `on_lost`, if given, runs as soon as the connection is known to be gone: when asyncpg
reports it closed, and whenever the loop gives it up.

An owner that has work of its own to wait for while connected (the stream hub) passes it as `serve`,
which replaces the periodic probe: it must call `probe` whenever it has been idle for
`probe_interval`, and return only once stopping; whatever it raises has the connection replaced.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Mapping

import asyncpg

from storage import database
from zlh_actors import errors

log = logging.getLogger(__name__)

# asyncpg's notification callback: (connection, sender's pid, channel, payload).
Callback = Callable[[object, int, str, object], None]

# What a lost database looks like; anything else is logged with its traceback, as a bug.
_DATABASE_ERRORS = (
    errors.ZlhError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    # What a session terminated mid-operation can raise (a replica woken from SIGSTOP after a peer
    # evicted it): no more than a lost connection.
    asyncpg.InternalClientError,
    OSError,
    TimeoutError,
)


class Listener:
    """A dedicated connection listening on `channels`, probed, and reconnected until `stop`."""

    def __init__(
        self,
        url: str,
        *,
        name: str,
        server_settings: dict[str, str],
        channels: Mapping[str, Callback],
        on_connect: Callable[[], Awaitable[None]],
        on_lost: Callable[[], None] | None = None,
        serve: Callable[[], Awaitable[None]] | None = None,
        probe_interval: float,
        probe_timeout: float,
        backoff: tuple[float, float],
    ) -> None:
        self._url = url
        self._name = name
        self._server_settings = server_settings
        self._channels = dict(channels)
        self._on_connect = on_connect
        self._on_lost = on_lost or _nothing
        self._serve = serve or self._probing
        self._probe_interval = probe_interval
        self._probe_timeout = probe_timeout
        self._backoff = backoff
        self._conn: database.Connection | None = None
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self.answered = 0.0  # monotonic time the connection last answered: connected, or probed
        self.reconnects = 0  # connections lost (or never made), each followed by a new attempt

    async def run(self) -> None:
        """Stay connected and listening until `stop`. This loop must never die of a failure."""
        backoff = self._backoff[0]
        while not self._stopping:
            try:
                self._conn = await database.connect(self._url, server_settings=self._server_settings)
                self._conn.add_termination_listener(self._terminated)
                for channel, callback in self._channels.items():
                    await self._conn.add_listener(channel, callback)
                self.answered = time.monotonic()
                await self._on_connect()
                backoff = self._backoff[0]
                await self._serve()
            except _DATABASE_ERRORS as exc:
                if not self._stopping:
                    log.warning("%s lost the database (%s); reconnecting in %.1fs", self._name, exc, backoff)
            except Exception:
                if not self._stopping:
                    # Without its listener the owner is slower or deaf: a bug must cost a retry, not that.
                    log.exception("%s failed; restarting in %.1fs", self._name, backoff)
            finally:
                # Also when cancelled (its owner stopping): leave nothing open.
                self._on_lost()
                if self._conn is not None:
                    self._conn.terminate()
                    self._conn = None
            if self._stopping:
                return
            self.reconnects += 1
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff[1])

    async def probe(self) -> None:
        """Use the connection (`SELECT 1` within `probe_timeout`): the only way to learn it is gone."""
        assert self._conn is not None, "probed outside `serve`"
        async with asyncio.timeout(self._probe_timeout):
            await self._conn.fetchval("SELECT 1")
        self.answered = time.monotonic()

    def stop(self) -> None:
        """Make `run` return: at once if it is using the connection, else after its current wait."""
        self._stopping = True
        if self._conn is not None:
            self._conn.terminate()

    def start(self, task_name: str) -> None:
        """`run` in a task of its own, for an owner that has no loop to run it in (`close` ends it)."""
        self._task = asyncio.create_task(self.run(), name=task_name)

    async def close(self) -> None:
        """`stop`, and end the task `start` made: cancelled, in case it waits (its back-off, say)."""
        self.stop()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _probing(self) -> None:
        while not self._stopping:
            await self.probe()
            await asyncio.sleep(self._probe_interval)

    def _terminated(self, _conn: object) -> None:
        self._on_lost()


def _nothing() -> None:
    pass
