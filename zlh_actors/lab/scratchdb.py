"""A fresh, migrated database for one run (a chaos run, a benchmark), dropped when the run ends.

    async with scratchdb.scratch("zlh_bench") as url: ...                   # on the shared server
    async with scratchdb.scratch("zlh_bench", private=run_dir / "pg") as url: ...  # on a server of its own

The server, unless the caller asks for a private one: `url` when given, else `DATABASE_URL`, else the
development server on 127.0.0.1:5432 when it answers (as the tests find theirs), else the project's
local one under `.zlh/pg` (`localdb`, as `server.py` uses when nothing is configured), stopped at the
end if this run started it. A private server lives in a directory the caller names and is stopped on
the way out: nobody else's transactions hold back its horizon or take its connections and locks,
which is what a benchmark of the journal or of failover needs.

On the server, a new database `<prefix>_<random>` is created and migrated, so a run never meets
another's rows, and dropped (WITH FORCE) afterwards unless the caller keeps it for a post-mortem.
`server` and `database_on` are the two halves, for a run that wants several databases on one server.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from storage import database, migrate
from zlh_actors import localdb

DEV_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/postgres"
LOCAL_DIR = Path(__file__).resolve().parents[2] / ".zlh" / "pg"


def with_database(url: str, name: str) -> str:
    """`url` with its database replaced by `name`."""
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{name}"))


async def answers(url: str) -> bool:
    try:
        conn = await asyncpg.connect(url, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        return False
    await conn.close()
    return True


@contextlib.asynccontextmanager
async def _local(directory: Path) -> AsyncIterator[str]:
    """A `localdb` server in `directory`, stopped on the way out if it was started here."""
    server = await asyncio.to_thread(localdb.ensure_running, directory)
    try:
        yield server.url("postgres")
    finally:
        if server.started_here:
            await asyncio.to_thread(localdb.stop, server)


@contextlib.asynccontextmanager
async def server(url: str | None = None, *, private: Path | None = None) -> AsyncIterator[str]:
    """An admin URL of the server to create databases on (see the module docstring for which)."""
    if private is not None:
        async with _local(private) as admin:
            yield admin
    elif url or os.environ.get("DATABASE_URL"):
        yield url or os.environ["DATABASE_URL"]
    elif await answers(DEV_SERVER_URL):
        yield DEV_SERVER_URL
    else:
        async with _local(LOCAL_DIR) as admin:
            yield admin


@contextlib.asynccontextmanager
async def database_on(
    admin: str, prefix: str, *, migrated: bool = True, keep: bool = False
) -> AsyncIterator[str]:
    """The URL of a new database `<prefix>_<random>` on `admin`'s server, migrated unless told not to,
    dropped on the way out unless `keep`."""
    name = f"{prefix}_{secrets.token_hex(5)}"
    conn = await database.connect(admin)
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    made = with_database(admin, name)
    try:
        if migrated:
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


@contextlib.asynccontextmanager
async def scratch(
    prefix: str, url: str | None = None, *, private: Path | None = None, keep: bool = False
) -> AsyncIterator[str]:
    """The URL of a new migrated database on the chosen server (`server`), dropped unless `keep`."""
    async with server(url, private=private) as admin, database_on(admin, prefix, keep=keep) as made:
        yield made
