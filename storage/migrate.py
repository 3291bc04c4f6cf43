"""The migration runner: applies `storage/migrations/NNNN_name.sql` in order, once each.

Migrations are immutable once applied: the runner records a SHA-256 of each file and refuses to run
against a database whose applied history no longer matches the files (someone edited an applied
migration, or the database was migrated by a newer release). All pending migrations run in one
transaction that first takes a transaction-scoped advisory lock, so two processes starting at once
serialize: the second waits, then finds nothing pending. A failure rolls everything back.

`python -m storage.migrate` applies pending migrations against `DATABASE_URL` (the systemd one-shot
unit runs exactly that) and prints what it did.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import re
import sys
from pathlib import Path

import asyncpg

from storage import database
from zlh_actors import errors

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SCHEMA_FILE = Path(__file__).parent / "schema.sql"

# An arbitrary constant shared by every release: the key of the advisory lock that serializes
# migration runs. It only has to differ from the shard-lease keys (which are small integers).
MIGRATION_LOCK_KEY = 0x7A6C_6861_6D69  # "zlhami"

_FILE_NAME = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_HISTORY = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version integer PRIMARY KEY,
    name text NOT NULL,
    checksum text NOT NULL,
    applied_at timestamptz NOT NULL DEFAULT now()
)
"""


@dataclasses.dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations(directory: Path = MIGRATIONS_DIR) -> list[Migration]:
    """Every migration file, ordered by version; refuses gaps and stray names."""
    migrations = []
    for path in sorted(directory.glob("*.sql")):
        match = _FILE_NAME.match(path.name)
        if match is None:
            raise errors.ConfigError(f"migration file {path.name} is not named NNNN_name.sql")
        migrations.append(Migration(int(match[1]), match[2], path.read_text()))
    for expected, migration in enumerate(migrations, start=1):
        if migration.version != expected:
            raise errors.ConfigError(
                f"migrations must be numbered 0001 upwards without gaps; found {migration.version:04d} "
                f"where {expected:04d} belongs"
            )
    return migrations


async def pending(conn: database.Conn, migrations: list[Migration]) -> list[Migration]:
    """The migrations not yet applied, after checking the applied ones match their files."""
    exists = await conn.fetchval("SELECT to_regclass('schema_migrations') IS NOT NULL")
    applied: dict[int, str] = {}
    if exists:
        rows = await conn.fetch("SELECT version, checksum FROM schema_migrations ORDER BY version")
        applied = {row["version"]: row["checksum"] for row in rows}
    known = {migration.version: migration for migration in migrations}
    for version, checksum in applied.items():
        migration = known.get(version)
        if migration is None:
            raise errors.ConfigError(
                f"the database has migration {version:04d} applied, which this release does not know; "
                "it was migrated by a newer release"
            )
        if migration.checksum != checksum:
            raise errors.ConfigError(
                f"migration {version:04d}_{migration.name} was edited after it was applied; "
                "migrations are immutable: add a new one instead"
            )
    return [migration for migration in migrations if migration.version not in applied]


async def migrate(conn: database.Conn) -> list[Migration]:
    """Apply every pending migration in one transaction; return those applied."""
    migrations = load_migrations()
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK_KEY)
            await conn.execute(_CREATE_HISTORY)
            todo = await pending(conn, migrations)
            for migration in todo:
                await conn.execute(migration.sql)
                await conn.execute(
                    "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                    migration.version,
                    migration.name,
                    migration.checksum,
                )
    except (asyncpg.PostgresError, OSError) as exc:
        raise database.translate(exc) from exc
    return todo


async def is_current(conn: database.Conn) -> bool:
    """True when every migration this release knows has been applied."""
    return not await pending(conn, load_migrations())


async def _main(url: str) -> None:
    conn = await database.connect(url)
    try:
        applied = await migrate(conn)
    finally:
        await conn.close()
    if applied:
        for migration in applied:
            print(f"applied {migration.version:04d}_{migration.name}")
    else:
        print("database is up to date")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m storage.migrate", description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    args = parser.parse_args(argv)
    if not args.database_url:
        print("error: DATABASE_URL is not set (or pass --database-url)", file=sys.stderr)
        return 2
    try:
        asyncio.run(_main(args.database_url))
    except errors.ZlhError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
