"""`storage/schema.sql` is exactly what replaying every migration produces, and the runner is safe.

schema.sql is the readable, whole schema a reviewer reads; the migrations are what databases run.
If the two drift, one of them lies.
"""

from __future__ import annotations

import asyncio
import urllib.parse
from collections.abc import AsyncIterator

import pytest

from storage import database, migrate
from tests import conftest
from tests.migration import catalog
from zlh_actors import errors


@pytest.fixture
async def empty_db(admin_url: str) -> AsyncIterator[str]:
    url = await conftest.create_database(admin_url)
    yield url
    await conftest.drop_database(admin_url, urllib.parse.urlsplit(url).path.lstrip("/"))


async def test_schema_sql_equals_replayed_migrations(admin_url: str, db_url: str, empty_db: str) -> None:
    migrated = await database.connect(db_url)
    from_schema = await database.connect(empty_db)
    try:
        await from_schema.execute("CREATE TABLE schema_migrations (version integer)")
        await from_schema.execute(migrate.SCHEMA_FILE.read_text())
        expected, actual = await catalog.snapshot(from_schema), await catalog.snapshot(migrated)
    finally:
        await migrated.close()
        await from_schema.close()
    for part in expected:
        assert actual[part] == expected[part], f"schema.sql and the migrations differ in {part}"


async def test_concurrent_migrators_apply_each_migration_once(empty_db: str) -> None:
    conns = [await database.connect(empty_db) for _ in range(4)]
    try:
        applied = await asyncio.gather(*(migrate.migrate(conn) for conn in conns))
        history = await conns[0].fetch("SELECT version FROM schema_migrations ORDER BY version")
    finally:
        for conn in conns:
            await conn.close()
    everything = len(migrate.load_migrations())
    assert sorted(len(batch) for batch in applied) == [0, 0, 0, everything]
    assert [row["version"] for row in history] == list(range(1, everything + 1))


async def test_edited_migration_is_refused(db_url: str) -> None:
    conn = await database.connect(db_url)
    try:
        await conn.execute("UPDATE schema_migrations SET checksum = 'edited' WHERE version = 1")
        with pytest.raises(errors.ConfigError, match="edited after it was applied"):
            await migrate.migrate(conn)
        assert await conn.fetchval("SELECT checksum FROM schema_migrations WHERE version = 1") == "edited"
    finally:
        await conn.close()


async def test_unknown_applied_migration_is_refused(db_url: str) -> None:
    conn = await database.connect(db_url)
    try:
        await conn.execute(
            "INSERT INTO schema_migrations (version, name, checksum) VALUES (9999, 'future', 'x')"
        )
        with pytest.raises(errors.ConfigError, match="newer release"):
            await migrate.migrate(conn)
        with pytest.raises(errors.ConfigError, match="newer release"):
            await migrate.is_current(conn)
    finally:
        await conn.close()
