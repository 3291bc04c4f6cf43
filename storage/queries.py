"""The named queries of `queries.sql`, and the only module that knows their names.

A block is `-- name --`, then a one-line `-- description` that lists the parameters, then the
statement. Keeping every statement in one SQL file lets a reviewer read the whole data access of the
service in one place, and lets tests check each statement against the real schema.

The helpers run a named query on a connection and translate driver errors, so stores read as
`await queries.fetchrow(conn, "get_server", server_id)`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from pathlib import Path
from typing import Any

import asyncpg

from storage import database

QUERIES_FILE = Path(__file__).parent / "queries.sql"

_HEADER = re.compile(r"^-- ([a-z_]+) --$")


@dataclasses.dataclass(frozen=True)
class Query:
    name: str
    description: str
    sql: str


def parse(text: str) -> dict[str, Query]:
    """Split the file into named blocks; a malformed or repeated block is an error."""
    found: dict[str, Query] = {}
    lines = text.splitlines()
    headers = [(i, match[1]) for i, line in enumerate(lines) if (match := _HEADER.match(line))]
    for n, (start, name) in enumerate(headers):
        end = headers[n + 1][0] if n + 1 < len(headers) else len(lines)
        description = lines[start + 1] if start + 1 < end else ""
        if not description.startswith("-- "):
            raise ValueError(f"query {name} has no one-line description")
        sql = "\n".join(lines[start + 2 : end]).strip()
        if not sql:
            raise ValueError(f"query {name} has no statement")
        if name in found:
            raise ValueError(f"query {name} is defined twice")
        found[name] = Query(name, description[3:], sql)
    return found


@functools.cache
def all_queries() -> dict[str, Query]:
    return parse(QUERIES_FILE.read_text())


def sql(name: str) -> str:
    return all_queries()[name].sql


async def fetchrow(conn: database.Conn, name: str, *args: Any) -> asyncpg.Record | None:
    return await database.guarded(conn.fetchrow(sql(name), *args))


async def fetch(conn: database.Conn, name: str, *args: Any) -> list[asyncpg.Record]:
    return await database.guarded(conn.fetch(sql(name), *args))


async def fetchval(conn: database.Conn, name: str, *args: Any) -> Any:
    return await database.guarded(conn.fetchval(sql(name), *args))
