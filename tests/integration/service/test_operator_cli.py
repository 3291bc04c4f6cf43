"""The operator commands against a real database: tokens made, listed, revoked; errors as one line."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg
import pytest

from storage import tokens
from zlh_actors import operator_cli


async def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, list[str], str]:
    status = await asyncio.to_thread(operator_cli.main, list(argv))
    out, err = capsys.readouterr()
    return status, out.splitlines(), err


async def test_a_token_is_created_listed_and_revoked(
    db_url: str, pool: asyncpg.Pool, capsys: pytest.CaptureFixture[str]
) -> None:
    status, out, _ = await run(capsys, "--database-url", db_url, "tokens", "create", "--tenant", "acme")
    assert status == 0
    secret = out[-1]
    async with pool.acquire() as conn:
        made = await tokens.authenticate(conn, secret)
    assert made is not None
    assert (made.tenant, made.role) == ("acme", "user")

    status, out, _ = await run(capsys, "--database-url", db_url, "tokens", "list")
    assert status == 0
    assert [line.split("\t")[:3] for line in out] == [[str(made.id), "acme", "user"]]
    assert secret not in "\n".join(out)

    status, out, _ = await run(capsys, "--database-url", db_url, "tokens", "revoke", str(made.id))
    assert (status, out) == (0, [f"revoked token {made.id} of tenant acme"])
    async with pool.acquire() as conn:
        assert await tokens.authenticate(conn, secret) is None
    status, out, _ = await run(capsys, "--database-url", db_url, "tokens", "list")
    assert (status, out) == (0, [])


async def test_errors_are_one_line_with_a_non_zero_status(
    db_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    unknown = uuid.uuid4()
    status, _, err = await run(capsys, "--database-url", db_url, "tokens", "revoke", str(unknown))
    assert (status, err) == (1, f"error: no live token with this id (token_id='{unknown}')\n")
    monkeypatch.delenv("DATABASE_URL", raising=False)
    status, _, err = await run(capsys, "tokens", "list")
    assert (status, err) == (2, "error: DATABASE_URL is not set (or pass --database-url)\n")
