"""Many new servers written at once: their rows, first journal entries, placements and first commands.

The batched form of `servers.insert`, `servers.set_placement` and `commands.enqueue` for a batch of
creates (zlh_actors/servers/create.py): one statement per step for the whole batch instead of one
per server, with the same rows as a result and the same schema checks on each (the journal's
triggers, the version bump, the live-name index). Call inside a transaction; every function returns
its rows in the order of the ids it was given.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import uuid
from collections.abc import Sequence
from typing import Any

import asyncpg

from storage import commands, database, queries, servers
from zlh_actors import errors


@dataclasses.dataclass(frozen=True)
class New:
    """A server to insert."""

    id: servers.ServerId
    tenant: str
    name: str
    spec: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class Placement:
    """Where a server lives, as `servers.set_placement` takes it."""

    node: str
    vmid: int
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    game_port: int


def _by_id(rows: list[asyncpg.Record], ids: Sequence[uuid.UUID], column: str = "id") -> list[asyncpg.Record]:
    found = {row[column]: row for row in rows}
    return [found[server_id] for server_id in ids]


async def insert(conn: database.Conn, new: list[New], *, state: str, event: str) -> list[servers.Server]:
    """Insert the servers in `state`, each with its first journal entry (`event`), as `servers.insert`
    does one; `NameTaken` if any name is live in its tenant (the batch must then be rolled back)."""
    ids = [server.id for server in new]
    rows = await queries.fetch(
        conn,
        "insert_servers",
        ids,
        [server.tenant for server in new],
        [server.name for server in new],
        [server.spec for server in new],
        state,
        "running",
    )
    await queries.fetch(conn, "append_first_journal_entries", ids, state, event)
    return [database.row(servers.Server, row) for row in _by_id(rows, ids)]


async def set_placements(
    conn: database.Conn, rows: list[servers.Server], placements: list[Placement], *, generation: int
) -> list[servers.Server]:
    """Compare-and-set where each server lives, as `servers.set_placement`; `StaleWrite` if any row
    changed since it was read."""
    ids = [row.id for row in rows]
    updated = await queries.fetch(
        conn,
        "set_servers_placement",
        ids,
        [row.version for row in rows],
        [placement.node for placement in placements],
        [placement.vmid for placement in placements],
        [placement.ip for placement in placements],
        [placement.game_port for placement in placements],
        generation,
    )
    if len(updated) != len(rows):
        raise errors.StaleWrite("a new server was changed by another writer")
    return [database.row(servers.Server, row) for row in _by_id(updated, ids)]


async def enqueue(conn: database.Conn, server_ids: list[uuid.UUID], kind: str) -> list[commands.Command]:
    """One command of `kind` (no payload) in each server's inbox, as `commands.enqueue`."""
    ids = [uuid.uuid4() for _ in server_ids]
    rows = await queries.fetch(conn, "enqueue_commands", ids, server_ids, kind, {})
    return [database.row(commands.Command, row) for row in _by_id(rows, server_ids, "server_id")]
