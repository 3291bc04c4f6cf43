"""The shared pool's connections: what a release costs, and how jsonb travels."""

from __future__ import annotations

import uuid

from storage import database


async def test_releasing_a_pooled_connection_sends_nothing(db_url: str) -> None:
    """asyncpg's default reset (unlock, close, unlisten, reset: one round trip per release) is off."""
    pool = await database.create_pool(db_url, min_size=1, max_size=1)
    watcher = await database.connect(db_url)
    try:
        marker = f"SELECT 'last statement {uuid.uuid4()}'"
        async with pool.acquire() as conn:
            pid = await conn.fetchval("SELECT pg_backend_pid()")
            await conn.fetchval(marker)
        async with pool.acquire() as conn:
            assert await conn.fetchval("SELECT pg_backend_pid()") == pid  # the same session
        # The released session's last statement is still ours, not a reset query.
        last = await watcher.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
        assert last == "SELECT pg_backend_pid()"
    finally:
        await watcher.close()
        await pool.close()


async def test_a_transaction_left_open_is_still_rolled_back_at_release(db_url: str) -> None:
    pool = await database.create_pool(db_url, min_size=1, max_size=1)
    try:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN; CREATE TEMPORARY TABLE left_open (n integer)")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
            assert await conn.fetchval("SELECT to_regclass('pg_temp.left_open')") is None
    finally:
        await pool.close()


async def test_jsonb_round_trips_as_python_objects(db_url: str) -> None:
    conn = await database.connect(db_url)
    try:
        value = {"seq": 2**63 - 1, "detail": "é\n", "nested": [1, 2.5, None, True], "n": {1: "one"}}
        back = await conn.fetchval("SELECT $1::jsonb", value)
    finally:
        await conn.close()
    assert back == {**value, "n": {"1": "one"}}  # keys become strings, as JSON has it
