"""Agent credentials and reports.

Each server generation gets its own callback token (only its SHA-256 is kept); a new generation's
agent cannot use an old token, and deleting a server revokes them all. The newest accepted report of
each agent is kept: a report is accepted only if it is newer (a higher generation, or the same
generation with a higher sequence number), so a replayed or reordered report never overwrites a
newer one. An accepted report becomes a `report` command for the server's actor in the same
statement, so the two commit together and a callback costs one write.
"""

from __future__ import annotations

import dataclasses
import datetime
import secrets
import uuid
from typing import Any

from storage import commands, database, queries, tokens


@dataclasses.dataclass(frozen=True)
class AgentToken:
    server_id: uuid.UUID
    generation: int
    token_hash: bytes
    issued_at: datetime.datetime
    revoked_at: datetime.datetime | None
    server_generation: int  # the server's current generation, read with the token


@dataclasses.dataclass(frozen=True)
class Report:
    server_id: uuid.UUID
    generation: int
    seq: int
    state: str
    manifest_sha256: str | None
    detail: str | None
    received_at: datetime.datetime


async def issue_token(conn: database.Conn, server_id: uuid.UUID, generation: int) -> str:
    """A new callback token for the generation, replacing any earlier one; returns the secret."""
    secret = "zlha_" + secrets.token_urlsafe(32)
    await queries.fetchrow(conn, "issue_agent_token", server_id, generation, tokens.digest(secret))
    return secret


async def find_token(conn: database.Conn, secret: str) -> AgentToken | None:
    """The live token with this secret, with its server's current generation."""
    record = await queries.fetchrow(conn, "find_agent_callback_token", tokens.digest(secret))
    return None if record is None else database.row(AgentToken, record)


async def revoke_tokens(conn: database.Conn, server_id: uuid.UUID) -> None:
    await queries.fetch(conn, "revoke_agent_tokens", server_id)


async def record_report(
    conn: database.Conn,
    server_id: uuid.UUID,
    *,
    generation: int,
    seq: int,
    state: str,
    manifest_sha256: str | None,
    detail: str | None,
    command_id: uuid.UUID,
    payload: dict[str, Any],
) -> commands.Command | None:
    """Keep the report if it is the newest and enqueue it as the `report` command `command_id`
    (with `payload`), atomically; None when it is stale (replayed or reordered): nothing written."""
    record = await queries.fetchrow(
        conn,
        "record_agent_report_command",
        server_id,
        generation,
        seq,
        state,
        manifest_sha256,
        detail,
        command_id,
        payload,
    )
    return None if record is None else database.row(commands.Command, record)


async def latest_report(conn: database.Conn, server_id: uuid.UUID) -> Report | None:
    record = await queries.fetchrow(conn, "get_agent_report", server_id)
    return None if record is None else database.row(Report, record)
