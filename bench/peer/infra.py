"""The servers both systems need, found or started for one run, and left as they were found.

PostgreSQL: `DATABASE_URL` when set, else the development machines' server on 127.0.0.1:5432 when it
answers, else the project's private one under `.zlh/bench-pg` (started here, stopped at the end).
Each system gets a database of its own, created for the run and dropped afterwards: ours is migrated
with the project's migrations, the peer's holds only its own small table (`records.SCHEMA`).

Redis: 127.0.0.1:6379 when it answers PING, else a `redis-server` started here on a free port with
persistence off (and stopped at the end). The run's keys all live under a prefix of its own, so a
shared Redis is never touched outside it; `delete_prefix` removes them afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import tempfile
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import redis.asyncio as aioredis

from storage import database, migrate
from zlh_actors import localdb

ROOT = Path(__file__).resolve().parents[2]
DEV_POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
DEV_REDIS = "redis://127.0.0.1:6379/0"
START_TIMEOUT = 15.0


async def _postgres_answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


def _with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


@contextlib.asynccontextmanager
async def postgres(admin_url: str | None) -> AsyncIterator[str]:
    """A URL of a PostgreSQL server on which databases may be created (see the module docstring)."""
    if admin_url:
        yield admin_url
        return
    if await _postgres_answers(DEV_POSTGRES):
        yield DEV_POSTGRES
        return
    local = await asyncio.to_thread(localdb.ensure_running, ROOT / ".zlh" / "bench-pg")
    try:
        yield await localdb.ensure_database(local)
    finally:
        if local.started_here:
            await asyncio.to_thread(localdb.stop, local)


@contextlib.asynccontextmanager
async def fresh_database(admin_url: str, label: str, *, migrated: bool) -> AsyncIterator[str]:
    """A new database for one system of this run (migrated with ours' schema when asked); dropped after."""
    name = f"zlh_bench_{label}_{uuid.uuid4().hex[:10]}"
    conn = await database.connect(admin_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    url = _with_database(admin_url, name)
    try:
        if migrated:
            conn = await database.connect(url)
            try:
                await migrate.migrate(conn)
            finally:
                await conn.close()
        yield url
    finally:
        conn = await database.connect(admin_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


async def _redis_answers(url: str) -> bool:
    client = aioredis.Redis.from_url(url, socket_connect_timeout=2, socket_timeout=2)
    try:
        return bool(await client.ping())
    except (OSError, aioredis.RedisError):
        return False
    finally:
        await client.aclose()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.asynccontextmanager
async def redis_server() -> AsyncIterator[str]:
    """The URL of a Redis to use: the development one if it answers, else one started for this run."""
    if await _redis_answers(DEV_REDIS):
        yield DEV_REDIS
        return
    binary = shutil.which("redis-server")
    if binary is None:
        raise RuntimeError("no Redis answers on 127.0.0.1:6379 and redis-server is not installed")
    port = _free_port()
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
