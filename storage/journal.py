"""The transition journal: an append-only, gapless record of every state change of every server.

The schema guarantees the shape (seq starts at 1 and has no gap or duplicate; each entry starts in
the state the previous one ended in; nothing is ever updated or deleted), so the journal can be
replayed through the lifecycle chart and streamed to clients with a cursor.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid

from storage import database, queries


@dataclasses.dataclass(frozen=True)
class Entry:
    server_id: uuid.UUID
    seq: int
    from_state: str | None
    to_state: str
    event: str
    command_id: uuid.UUID | None
    epoch: int | None
    detail: str | None
    at: datetime.datetime


async def append(
    conn: database.Conn,
    server_id: uuid.UUID,
    from_state: str | None,
    to_state: str,
    event: str,
    *,
    command_id: uuid.UUID | None = None,
    epoch: int | None = None,
    detail: str | None = None,
) -> Entry:
    """Append the server's next entry (its seq follows the newest one)."""
    record = await queries.fetchrow(
        conn, "append_journal", server_id, from_state, to_state, event, command_id, epoch, detail
    )
    return database.row(Entry, record)


async def entries(
    conn: database.Conn, server_id: uuid.UUID, *, after: int = 0, limit: int = 1000
) -> list[Entry]:
    """The server's entries with seq greater than `after`, oldest first."""
    records = await queries.fetch(conn, "list_journal", server_id, after, limit)
    return [database.row(Entry, record) for record in records]


async def newest(conn: database.Conn, server_id: uuid.UUID) -> Entry:
    """The server's newest entry: the event and time it entered its current state."""
    return database.row(Entry, await queries.fetchrow(conn, "newest_journal_entry", server_id))
