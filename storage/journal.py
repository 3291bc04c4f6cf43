"""The transition journal: an append-only, gapless record of every state change of every server.

The schema guarantees the shape (seq starts at 1 and has no gap or duplicate; each entry starts in
the state the previous one ended in; nothing is ever updated or deleted), so the journal can be
replayed through the lifecycle chart and streamed to clients with a cursor.

The stream's cursor is `(txid, position)`, both set by the database (migration 0004): the position
is drawn at insert, and txid is the writing transaction's id (raised to the server's previous
entry's when smaller). Transactions commit out of order, so an entry may appear after a later
position is visible; but no entry below the oldest transaction still running can appear any more.
`committed_after` therefore hands out only that final prefix of the order, and a cursor into it
never misses an entry. The argument in full is in docs/stream.md.
"""

from __future__ import annotations

import dataclasses
import datetime
import uuid

import asyncpg

from storage import database, queries


@dataclasses.dataclass(frozen=True, order=True)
class Cursor:
    """A place in the stream's order: `txid-position` on the wire, opaque to clients."""

    txid: int
    position: int

    def __str__(self) -> str:
        return f"{self.txid}-{self.position}"

    @classmethod
    def parse(cls, text: str) -> Cursor:
        """The cursor `str()` wrote; `ValueError` for anything else."""
        txid, sep, position = text.partition("-")
        if not (sep and text.isascii() and txid.isdigit() and position.isdigit()):
            raise ValueError(f"not a cursor: {text!r}")
        cursor = cls(int(txid), int(position))
        if cursor.txid >= 2**64 or cursor.position >= 2**63:  # xid8 and bigint
            raise ValueError(f"not a cursor: {text!r}")
        return cursor


ORIGIN = Cursor(0, 0)
"""Before every entry: replaying from here replays the whole journal."""


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
    position: int
    txid: int

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.txid, self.position)


@dataclasses.dataclass(frozen=True)
class Published:
    """An entry as the stream hands it out: with its server's tenant, for filtering."""

    entry: Entry
    tenant: str


def _entry(record: asyncpg.Record) -> Entry:
    return Entry(**{field.name: record[field.name] for field in dataclasses.fields(Entry)})


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


async def horizon(conn: database.Conn) -> Cursor:
    """The newest final place in the order: no entry at or before it can still appear."""
    record = await queries.fetchrow(conn, "journal_horizon")
    return ORIGIN if record is None else Cursor(record["txid"], record["position"])


async def committed_after(conn: database.Conn, after: Cursor, *, limit: int) -> tuple[list[Published], bool]:
    """Every tenant's final entries after `after`, in order, and whether newer ones are held back.

    Held-back entries are committed, but an older transaction is still running and could yet add an
    entry before them; the caller reads again shortly.
    """
    records = await queries.fetch(conn, "journal_committed_after", after.txid, after.position, limit)
    final = [Published(_entry(r), r["tenant"]) for r in records if not r["held"]]
    return final, len(final) < len(records)


async def replay(
    conn: database.Conn, after: Cursor, upto: Cursor, *, tenant: str | None, limit: int
) -> list[Entry]:
    """A tenant's (None: every tenant's) entries after `after` up to the final `upto`, in order."""
    records = await queries.fetch(
        conn, "journal_replay", after.txid, after.position, upto.txid, upto.position, tenant, limit
    )
    return [_entry(record) for record in records]
