"""The journal announcer: its own replica hears at once, the peers through one NOTIFY per burst, and a
database it cannot reach costs a warning, never an error in the writer that announced."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest

from storage import database
from tests import helpers
from zlh_actors.runtime import announcer


async def test_a_burst_is_told_locally_each_time_and_to_the_peers_once(
    db_url: str, pool: asyncpg.Pool
) -> None:
    ours = announcer.Announcer(pool, uuid.uuid4())
    local: list[int] = []
    ours.on_local(lambda: local.append(1))
    expected = announcer.payload(ours.replica_id)
    try:
        async with helpers.listening(db_url, announcer.CHANNEL) as heard:
            for _ in range(100):
                ours.announce()
            assert len(local) == 100  # synchronously, before any round trip
            await heard.until(expected, timeout=10)
            await helpers.assert_eventually(_idle(ours), message="the NOTIFY task never ended")
            assert ours.sent == 1  # the whole burst came before the NOTIFY: one covers it
            ours.announce()  # a later one is sent on its own
            await helpers.assert_eventually(lambda: _heard(heard, 2), message="no second NOTIFY")
            assert heard.payloads == [expected, expected]
            assert announcer.sender(heard.payloads[0]) == ours.replica_id
    finally:
        await ours.close()


class _GatedPool:
    """The pool, but `acquire` waits for the test to open the gate: a NOTIFY held in flight."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.waiting = asyncio.Event()
        self.gate = asyncio.Event()

    @contextlib.asynccontextmanager
    async def acquire(self) -> AsyncIterator[database.Conn]:
        self.waiting.set()
        await self.gate.wait()
        async with self._pool.acquire() as conn:
            yield conn


async def test_an_announcement_made_while_one_is_in_flight_is_sent_after_it(
    db_url: str, pool: asyncpg.Pool
) -> None:
    gated = _GatedPool(pool)
    ours = announcer.Announcer(gated, uuid.uuid4())  # type: ignore[arg-type]
    async with contextlib.AsyncExitStack() as stack:
        stack.push_async_callback(ours.close)
        heard = await stack.enter_async_context(helpers.listening(db_url, announcer.CHANNEL))
        ours.announce()
        async with asyncio.timeout(10):
            await gated.waiting.wait()
        ours.announce()  # committed after the first NOTIFY began: not covered by it
        ours.announce()
        assert ours.in_flight
        gated.gate.set()
        await helpers.assert_eventually(lambda: _heard(heard, 2), message="the second NOTIFY never came")
        await helpers.assert_eventually(_idle(ours))
        assert ours.sent == 2  # the two made meanwhile share one


async def test_an_unreachable_database_is_a_warning_and_the_local_listeners_still_hear(
    db_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    closed = await database.create_pool(db_url, max_size=1)
    await closed.close()
    ours = announcer.Announcer(closed, uuid.uuid4())
    local: list[int] = []
    ours.on_local(lambda: local.append(1))
    with caplog.at_level(logging.WARNING, logger=announcer.__name__):
        ours.announce()
        await helpers.assert_eventually(_idle(ours))
    assert local == [1]
    assert ours.sent == 0
    assert "could not announce journal entries" in caplog.text
    await ours.close()


async def test_a_notify_that_takes_too_long_is_given_up_and_the_next_one_goes_out(
    db_url: str, pool: asyncpg.Pool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(announcer, "TIMEOUT", 0.2)
    gated = _GatedPool(pool)  # never opened: a pool whose connections have all gone silent
    ours = announcer.Announcer(gated, uuid.uuid4())  # type: ignore[arg-type]
    try:
        with caplog.at_level(logging.WARNING, logger=announcer.__name__):
            ours.announce()
            await helpers.assert_eventually(_idle(ours), message="the NOTIFY was never given up")
        assert "could not announce journal entries" in caplog.text
        assert ours.sent == 0
        gated.gate.set()
        async with helpers.listening(db_url, announcer.CHANNEL) as heard:
            ours.announce()
            await heard.until(announcer.payload(ours.replica_id), timeout=10)
    finally:
        await ours.close()


async def test_closing_gives_up_an_announcement_in_flight_and_sends_no_more(pool: asyncpg.Pool) -> None:
    gated = _GatedPool(pool)
    ours = announcer.Announcer(gated, uuid.uuid4())  # type: ignore[arg-type]
    ours.announce()
    async with asyncio.timeout(10):
        await gated.waiting.wait()
    await ours.close()
    gated.gate.set()
    ours.announce()
    assert not ours.in_flight
    assert ours.sent == 0


def _idle(ours: announcer.Announcer) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return not ours.in_flight

    return check


async def _heard(heard: helpers.Heard, count: int) -> bool:
    return len(heard.payloads) >= count
