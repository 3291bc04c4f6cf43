"""A comparable snapshot of a database's schema, read from the catalogs (no pg_dump needed)."""

from __future__ import annotations

import asyncpg

_QUERIES = {
    "columns": """
        SELECT table_name, column_name, data_type, is_nullable, column_default, is_identity
        FROM information_schema.columns WHERE table_schema = 'public' AND table_name <> 'schema_migrations'
        ORDER BY table_name, column_name
    """,
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace = 'public'::regnamespace
          AND conrelid <> 'schema_migrations'::regclass
        ORDER BY 1, 2
    """,
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes
        WHERE schemaname = 'public' AND tablename <> 'schema_migrations' ORDER BY 1, 2
    """,
    "triggers": """
        SELECT tgrelid::regclass::text, tgname, pg_get_triggerdef(oid)
        FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2
    """,
    "functions": """
        SELECT proname, pg_get_functiondef(oid) FROM pg_proc
        WHERE pronamespace = 'public'::regnamespace ORDER BY 1
    """,
}


async def snapshot(conn: asyncpg.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {name: [tuple(row) for row in await conn.fetch(sql)] for name, sql in _QUERIES.items()}
