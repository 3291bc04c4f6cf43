"""Shared fixtures: a real PostgreSQL, and a fresh migrated database per test.

The server is `DATABASE_URL` when set, else the development machines' server on 127.0.0.1:5432
(database `test`) when it answers, else a private one under `.zlh/test-pg`. A template database is
migrated once per session; each test gets `CREATE DATABASE ... TEMPLATE` of it, which is fast and
fully isolated, and is dropped afterwards.
"""

from __future__ import annotations

import asyncio
import os
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest

from storage import database, migrate
from zlh_actors import localdb
from zlh_actors.lab import scratchdb

ROOT = Path(__file__).resolve().parent.parent
DEV_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/test"


@pytest.fixture(scope="session")
def admin_url() -> Iterator[str]:
    """A URL of the test server, on a database we may create databases from."""
    if os.environ.get("DATABASE_URL"):
        yield os.environ["DATABASE_URL"]
    elif asyncio.run(scratchdb.answers(DEV_SERVER_URL)):
        yield DEV_SERVER_URL
    else:
        local = localdb.ensure_running(ROOT / ".zlh" / "test-pg")
        yield asyncio.run(localdb.ensure_database(local))
        if local.started_here:
            localdb.stop(local)


async def _create_template(admin: str, name: str) -> None:
    conn = await database.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    conn = await database.connect(scratchdb.with_database(admin, name))
    try:
        await migrate.migrate(conn)
    finally:
        await conn.close()


async def drop_database(admin: str, name: str) -> None:
    conn = await database.connect(admin)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def template_db(admin_url: str) -> Iterator[str]:
    """A migrated database to clone; dropped at the end of the session."""
    name = f"zlh_template_{uuid.uuid4().hex[:12]}"
    asyncio.run(_create_template(admin_url, name))
    yield name
    asyncio.run(drop_database(admin_url, name))


async def create_database(admin: str, template: str | None = None) -> str:
    """A new empty (or cloned) database; returns its URL."""
    name = f"zlh_test_{uuid.uuid4().hex[:12]}"
    conn = await database.connect(admin)
    try:
        clause = f' TEMPLATE "{template}"' if template else ""
        await conn.execute(f'CREATE DATABASE "{name}"{clause}')
    finally:
        await conn.close()
    return scratchdb.with_database(admin, name)


@pytest.fixture
async def db_url(admin_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database of this test's own."""
    url = await create_database(admin_url, template_db)
    yield url
    await drop_database(admin_url, urllib.parse.urlsplit(url).path.lstrip("/"))


@pytest.fixture
async def pool(db_url: str) -> AsyncIterator[asyncpg.Pool]:
    pool = await database.create_pool(db_url, max_size=10)
    yield pool
    await pool.close()
