"""Test helpers: waiting on conditions with a deadline instead of sleeping, racing transactions, and
hearing what a channel is NOTIFYed."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import asyncpg

from storage import database

T = TypeVar("T")


async def assert_eventually(
    check: Callable[[], Awaitable[bool]], *, timeout: float = 10.0, interval: float = 0.02, message: str = ""
) -> None:
    """Poll `check` until it returns True; fail with `message` when `timeout` seconds pass first."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s: {message}")
        await asyncio.sleep(interval)


async def at_least(items: list[T], count: int, *, message: str, timeout: float = 10.0) -> list[T]:
    """`items` (a list something else appends to), once it holds at least `count` of them."""

    async def enough() -> bool:
        return len(items) >= count

    await assert_eventually(enough, timeout=timeout, message=message)
    return items


async def race(
    pool: asyncpg.Pool, attempt: Callable[[database.Conn], Awaitable[T]], contenders: int = 2
) -> list[T | BaseException]:
    """Run `attempt` in `contenders` transactions that are all open before any of them writes.

    Each contender opens its transaction, waits until every other one has too, then writes and
    commits; the returned list holds each result or the (typed) error it raised.
    """
    barrier = asyncio.Barrier(contenders)

    async def one() -> T:
        async with database.transaction(pool) as conn:
            await barrier.wait()
            return await attempt(conn)

    return await asyncio.gather(*(one() for _ in range(contenders)), return_exceptions=True)


class Heard:
    """A LISTEN callback that keeps every payload of its channel, and waits for one with a deadline."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.changed = asyncio.Event()

    def __call__(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        self.payloads.append(str(payload))
        self.changed.set()

    async def until(self, payload: str, *, timeout: float = 30.0) -> list[str]:
        """Every payload heard so far, once `payload` is among them."""
        async with asyncio.timeout(timeout):
            while payload not in self.payloads:
                self.changed.clear()
                await self.changed.wait()
        return self.payloads


@contextlib.asynccontextmanager
async def listening(url: str, channel: str) -> AsyncIterator[Heard]:
    """Every payload NOTIFYed on `channel`, heard on a dedicated connection (another replica's, say)."""
    conn = await database.connect(url)
    heard = Heard()
    try:
        await conn.add_listener(channel, heard)
        yield heard
    finally:
        await conn.close()
