"""The Redis the peer needs, found or started for one run, and left as it was found.

(PostgreSQL comes from `zlh_actors.lab.scratchdb`: one server for the run, and on it a database of
each system's own, created for the run and dropped afterwards: ours migrated with the project's
migrations, the peer's holding only its own small table, `records.SCHEMA`.)

Redis: 127.0.0.1:6379 when it answers PING, else a `redis-server` started here on a free port with
persistence off (and stopped at the end). The run's keys all live under a prefix of its own, so a
shared Redis is never touched outside it; `delete_prefix` removes them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
import time
from collections.abc import AsyncIterator

import redis.asyncio as aioredis

from zlh_actors.lab import replicas

DEV_REDIS = "redis://127.0.0.1:6379/0"
START_TIMEOUT = 15.0


async def _redis_answers(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    """The URL of a Redis to use: the development one if it answers, else one started for this run."""
    if await _redis_answers(DEV_REDIS):
        yield DEV_REDIS
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no Redis answers on 127.0.0.1:6379 and redis-server is not installed")
    port = replicas.free_port()
    url = f"redis://127.0.0.1:{port}/0"
    with tempfile.TemporaryDirectory(prefix="zlh-bench-redis-") as workdir:
        process = await asyncio.create_subprocess_exec(
            binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
            "--dir", workdir,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.DEVNULL,
        )  # fmt: skip
        try:
            deadline = time.monotonic() + START_TIMEOUT
            while not await _redis_answers(url):
                if process.returncode is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {port} did not start")
                await asyncio.sleep(0.1)
            yield url
        finally:
            process.terminate()
            try:
                await asyncio.wait_for(process.wait(), 10)
            except TimeoutError:
                process.kill()
                await process.wait()


async def delete_prefix(url: str, prefix: str) -> int:
    """Delete every key under `prefix:` (this run's queues); returns how many there were."""
    client = aioredis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        async for key in client.scan_iter(match=f"{prefix}:*", count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await client.delete(*batch)
                batch = []
        if batch:
            deleted += await client.delete(*batch)
    finally:
        await client.aclose()
    return deleted
