"""The command inbox: every command for a server, in arrival order, with its outcome.

The HTTP API (on any replica) enqueues; the server's owner settles. A command only moves forward
(queued -> accepted | rejected, accepted -> done, and queued -> done for an agent's report, which is
finished once applied), which the schema enforces; settling from a status the command is no longer
in matches no row and raises `StaleWrite`, so one command is never applied twice.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from typing import Any

from storage import database, queries
from zlh_actors import errors


@dataclasses.dataclass(frozen=True)
class Command:
    id: uuid.UUID
    position: int
    server_id: uuid.UUID
    kind: str
    payload: dict[str, Any]
    status: str
    result: Any
    created_at: datetime.datetime
    updated_at: datetime.datetime


async def enqueue(
    conn: database.Conn,
    server_id: uuid.UUID,
    kind: str,
    payload: dict[str, Any] | None = None,
    *,
    command_id: uuid.UUID | None = None,
) -> Command:
    record = await queries.fetchrow(
        conn, "enqueue_command", command_id or uuid.uuid4(), server_id, kind, payload or {}
    )
    return database.row(Command, record)


async def announce(conn: database.Conn, command: Command) -> None:
    """Wake the command's owner as the enqueue trigger would: for a report, whose insert does not."""
    await queries.fetchval(conn, "announce_command", command.server_id, command.id)


async def get(conn: database.Conn, command_id: uuid.UUID) -> Command:
    record = await queries.fetchrow(conn, "get_command", command_id)
    if record is None:
        raise errors.NotFound("no such command", command_id=str(command_id))
    return database.row(Command, record)


async def pending(conn: database.Conn, server_id: uuid.UUID) -> list[Command]:
    """The server's queued and accepted commands, oldest first, locked until the transaction ends."""
    return [
        database.row(Command, record) for record in await queries.fetch(conn, "pending_commands", server_id)
    ]


async def accepted(conn: database.Conn, server_id: uuid.UUID) -> list[Command]:
    """The server's accepted commands whose effect is not finished, oldest first, locked."""
    return [
        database.row(Command, record) for record in await queries.fetch(conn, "accepted_commands", server_id)
    ]


async def settle(conn: database.Conn, command: Command, status: str, result: Any) -> Command:
    """Move the command from the status it was read in to `status`, recording `result`."""
    record = await queries.fetchrow(conn, "settle_command", command.id, command.status, status, result)
    if record is None:
        raise errors.StaleWrite(
            "command was settled by another writer",
            command_id=str(command.id),
            expected_status=command.status,
        )
    return database.row(Command, record)


async def forget_settled(conn: database.Conn, older_than: datetime.timedelta, limit: int) -> int:
    """Delete at most `limit` commands settled (done or rejected) more than `older_than` ago, skipping
    rows another transaction is deleting; return how many. Pending commands are never deleted."""
    count: int = await queries.fetchval(conn, "prune_settled_commands", older_than, limit)
    return count
