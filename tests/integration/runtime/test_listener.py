"""The LISTEN loop of the inbox, the token cache and the stream hub: whatever ends its connection (a
terminated session, a frozen backend, a failing hook, a database that refuses), it backs off,
reconnects, listens again and tells its owner; stopped, it returns and leaves no session behind."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from tests import helpers
from zlh_actors import errors
from zlh_actors.runtime import listener

APP = "test-listener"
CHANNEL = "test_listener"
BACKOFF = (0.2, 1.0)
PROBE_TIMEOUT = 0.5
SESSION = (
    "SELECT pid, backend_start FROM pg_stat_activity"
    " WHERE application_name = $1 AND datname = current_database()"
)


class Owner:
    """The hooks of a listener under test: connects and losses counted; connects may be made to fail."""

    def __init__(self) -> None:
        self.connects = 0
        self.losses = 0
        self.failing = 0  # connects still to fail

    async def connected(self) -> None:
        self.connects += 1
        if self.failing:
            self.failing -= 1
            raise errors.StorageUnavailable("the rescan failed")

    def lost(self) -> None:
        self.losses += 1

    def connected_times(self, count: int) -> Callable[[], Awaitable[bool]]:
        async def check() -> bool:
            return self.connects >= count

        return check


def _listener(
    url: str, owner: Owner, heard: helpers.Heard, backoff: tuple[float, float] = BACKOFF
) -> listener.Listener:
    return listener.Listener(
        url,
        name="test listener",
        server_settings={"application_name": APP},
        channels={CHANNEL: heard},
        on_connect=owner.connected,
        on_lost=owner.lost,
        probe_interval=0.05,
        probe_timeout=PROBE_TIMEOUT,
        backoff=backoff,
    )


@contextlib.asynccontextmanager
async def running(subject: listener.Listener) -> AsyncIterator[None]:
    task = asyncio.create_task(subject.run())
    try:
        yield
    finally:
        subject.stop()
        async with asyncio.timeout(10):  # `stop` ends `run` by itself, without a cancellation
            await task


def _delays(caplog: pytest.LogCaptureFixture) -> list[str]:
    """The back-offs the listener announced, in order, as logged ("reconnecting in 0.2s")."""
    return [
        match.group(1)
        for record in caplog.records
        if record.name == listener.__name__
        and (match := re.search(r"reconnecting in ([\d.]+)s", record.getMessage())) is not None
    ]


async def _new_session(pool: asyncpg.Pool, old_pid: int) -> asyncpg.Record:
    """The listener's session once it is the only one and not `old_pid` (a terminated backend can
    linger in pg_stat_activity for a moment)."""
    rows: list[asyncpg.Record] = []

    async def replaced() -> bool:
        rows[:] = await pool.fetch(SESSION, APP)
        return len(rows) == 1 and rows[0]["pid"] != old_pid

    await helpers.assert_eventually(replaced, message=f"listener sessions: {rows}")
    return rows[0]


async def test_a_terminated_session_is_replaced_after_the_first_backoff_and_listened_on_again(
    db_url: str, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=listener.__name__)
    owner, heard = Owner(), helpers.Heard()
    subject = _listener(db_url, owner, heard)
    async with running(subject):
        await helpers.assert_eventually(owner.connected_times(1), message="never connected")
        await pool.execute("SELECT pg_notify($1, 'one')", CHANNEL)
        await heard.until("one")
        answered = subject.answered

        async def probed() -> bool:
            return subject.answered > answered

        await helpers.assert_eventually(probed, message="no probe answered")

        session = await pool.fetchrow(SESSION, APP)
        assert session is not None
        for attempt in (1, 2):
            cut_at = await pool.fetchval(
                "SELECT statement_timestamp() FROM pg_terminate_backend($1)", session["pid"]
            )
            session = await _new_session(pool, session["pid"])
            await helpers.assert_eventually(
                owner.connected_times(attempt + 1), message="the hook did not run"
            )
            assert subject.reconnects == attempt
            assert owner.losses >= attempt
            # Not at once: after the back-off. The same first back-off each time, since a good
            # connection resets it.
            assert (session["backend_start"] - cut_at).total_seconds() >= BACKOFF[0]
            assert _delays(caplog) == [f"{BACKOFF[0]:.1f}"] * attempt
            await pool.execute("SELECT pg_notify($1, $2)", CHANNEL, f"after {attempt}")
            await heard.until(f"after {attempt}")


async def test_a_frozen_backend_is_given_up_once_its_probe_times_out(db_url: str, pool: asyncpg.Pool) -> None:
    """A backend that stops answering sends no error, no FIN: only the probe's timeout notices."""
    owner, heard = Owner(), helpers.Heard()
    subject = _listener(db_url, owner, heard)
    async with running(subject):
        await helpers.assert_eventually(owner.connected_times(1), message="never connected")
        frozen = await pool.fetchval(SESSION, APP)
        loop = asyncio.get_running_loop()
        os.kill(frozen, signal.SIGSTOP)
        try:
            frozen_at = loop.time()
            await helpers.assert_eventually(owner.connected_times(2), message="the frozen session was kept")
            assert loop.time() - frozen_at >= PROBE_TIMEOUT
            assert subject.reconnects == 1
            assert owner.losses >= 1
        finally:
            os.kill(frozen, signal.SIGCONT)
        await pool.execute("SELECT pg_notify($1, 'thawed')", CHANNEL)
        await heard.until("thawed")


async def test_a_failing_connect_hook_is_a_loss_like_any_other_and_runs_again(
    db_url: str, pool: asyncpg.Pool
) -> None:
    owner, heard = Owner(), helpers.Heard()
    owner.failing = 1
    subject = _listener(db_url, owner, heard)
    async with running(subject):
        await helpers.assert_eventually(owner.connected_times(2), message="the hook was not run again")
        assert subject.reconnects == 1
        assert owner.losses >= 1
        await pool.execute("SELECT pg_notify($1, 'heard')", CHANNEL)
        await heard.until("heard")


async def test_a_refusing_database_is_retried_with_a_doubling_backoff_up_to_its_largest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger=listener.__name__)
    owner = Owner()
    subject = _listener("postgresql://postgres@127.0.0.1:1/none", owner, helpers.Heard(), backoff=(0.1, 0.4))

    async def four_attempts() -> bool:
        return len(_delays(caplog)) >= 4

    async with running(subject):
        await helpers.assert_eventually(four_attempts, message=f"announced: {_delays(caplog)}")
    assert _delays(caplog)[:4] == ["0.1", "0.2", "0.4", "0.4"]
    assert owner.connects == 0


async def test_stop_ends_the_loop_without_a_warning_and_closes_the_session(
    db_url: str, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger=listener.__name__)
    owner = Owner()
    subject = _listener(db_url, owner, helpers.Heard())
    async with running(subject):
        await helpers.assert_eventually(owner.connected_times(1), message="never connected")
    assert owner.losses >= 1
    assert subject.reconnects == 0
    assert _delays(caplog) == []

    async def closed() -> bool:
        return not await pool.fetch(SESSION, APP)

    await helpers.assert_eventually(closed, message="the listener's session outlived stop")
