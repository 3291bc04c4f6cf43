"""A fresh, migrated database for one chaos run, on whichever PostgreSQL server is at hand.

The server: the one `DATABASE_URL` (or `--database-url`) points at; else the development server on
127.0.0.1:5432 when it answers (as the tests find theirs); else a private one under `.zlh/pg`
(`localdb`, as `server.py` does when nothing is configured). On it, a new database named
`zlh_chaos_<seed>_<random>` is created and migrated, so a run never meets another's rows, and is
dropped afterwards unless the caller keeps it for a post-mortem.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from storage import database, migrate
from zlh_actors import localdb

DEV_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
ROOT = Path(__file__).resolve().parents[3]


def with_database(url: str, name: str) -> str:
    parts = urllib.parse.urlsplit(url)
    return urllib.parse.urlunsplit(parts._replace(path=f"/{name}"))


async def _answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@contextlib.asynccontextmanager
async def _server(url: str | None) -> AsyncIterator[str]:
    """A URL of a database on the server to use, from which databases can be created."""
    if url:
        yield url
    elif await _answers(DEV_SERVER_URL):
        yield DEV_SERVER_URL
    else:
        local = await asyncio.to_thread(localdb.ensure_running, ROOT / ".zlh" / "pg")
        try:
            yield await localdb.ensure_database(local)
        finally:
            if local.started_here:
                await asyncio.to_thread(localdb.stop, local)


@contextlib.asynccontextmanager
async def scratch(url: str | None, seed: int, *, keep: bool = False) -> AsyncIterator[str]:
    """The URL of a new migrated database `zlh_chaos_<seed>_<random>`, dropped on exit unless `keep`."""
    async with _server(url) as admin:
        name = f"zlh_chaos_{seed}_{secrets.token_hex(3)}"
        conn = await database.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        made = with_database(admin, name)
        try:
            conn = await database.connect(made)
            try:
                await migrate.migrate(conn)
            finally:
                await conn.close()
            yield made
        finally:
            if not keep:
                conn = await database.connect(admin)
                try:
                    await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                finally:
                    await conn.close()
