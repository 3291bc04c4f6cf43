"""The server store: the ContainerInstance record and its guarded state changes.

Every change to a server is a compare-and-set on (id, version): the caller passes the row it read,
and a write that matches no row raises `StaleWrite` (or `NotFound`), never passes silently. The
schema backs this up: an UPDATE that does not bump the version by one is refused, and a state that
has no matching journal entry cannot commit. A state change therefore goes through `transition`,
which writes the row and its journal entry together, and must run inside a transaction.
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import uuid
from typing import Any, NewType

from storage import database, journal, queries
from zlh_actors import errors

ServerId = NewType("ServerId", uuid.UUID)

DELETED = "deleted"


@dataclasses.dataclass(frozen=True)
class Server:
    id: ServerId
    tenant: str
    name: str
    spec: dict[str, Any]
    state: str
    desired_state: str
    node: str | None
    vmid: int | None
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None
    game_port: int | None
    generation: int
    version: int
    last_error: str | None
    created_at: datetime.datetime
    updated_at: datetime.datetime
    deleted_at: datetime.datetime | None


_FIELDS = tuple(field.name for field in dataclasses.fields(Server))


def from_record(record: Any) -> Server:
    """The server in a record that holds its columns among others (`database.row` takes exactly them)."""
    return Server(**{name: record[name] for name in _FIELDS})


async def insert(
    conn: database.Conn,
    *,
    tenant: str,
    name: str,
    spec: dict[str, Any],
    state: str,
    event: str,
    desired_state: str = "running",
    server_id: ServerId | None = None,
    command_id: uuid.UUID | None = None,
) -> Server:
    """Insert a new server with its first journal entry (call inside a transaction)."""
    new_id = server_id or ServerId(uuid.uuid4())
    record = await queries.fetchrow(conn, "insert_server", new_id, tenant, name, spec, state, desired_state)
    await journal.append(conn, new_id, None, state, event, command_id=command_id)
    return database.row(Server, record)


async def get(conn: database.Conn, server_id: uuid.UUID, *, tenant: str | None = None) -> Server:
    """The server, or `NotFound`; with a tenant, another tenant's server is not found either."""
    if tenant is None:
        record = await queries.fetchrow(conn, "get_server", server_id)
    else:
        record = await queries.fetchrow(conn, "get_tenant_server", server_id, tenant)
    if record is None:
        raise errors.NotFound("no such server", server_id=str(server_id))
    return database.row(Server, record)


async def _compare_and_set(conn: database.Conn, server: Server, name: str, *args: Any) -> Server:
    record = await queries.fetchrow(conn, name, server.id, server.version, *args)
    if record is None:
        await get(conn, server.id)  # raises NotFound when the row is gone
        raise errors.StaleWrite(
            "server was changed by another writer", server_id=str(server.id), expected_version=server.version
        )
    return database.row(Server, record)


async def transition(
    conn: database.Conn,
    server: Server,
    to_state: str,
    event: str,
    *,
    command_id: uuid.UUID | None = None,
    epoch: int | None = None,
    last_error: str | None = None,
    detail: str | None = None,
) -> Server:
    """Move `server` (as read) to `to_state` and journal it, in one statement; call inside a transaction."""
    return await _compare_and_set(
        conn,
        server,
        "transition_server",
        to_state,
        last_error,
        to_state == DELETED,
        server.state,
        event,
        command_id,
        epoch,
        detail,
    )


async def set_placement(
    conn: database.Conn,
    server: Server,
    *,
    node: str,
    vmid: int,
    ip: str,
    game_port: int,
    generation: int,
) -> Server:
    """Record where the server's container lives (compare-and-set)."""
    return await _compare_and_set(conn, server, "set_server_placement", node, vmid, ip, game_port, generation)


async def set_desired_state(conn: database.Conn, server: Server, desired_state: str) -> Server:
    """Record what the server should converge to (compare-and-set)."""
    return await _compare_and_set(conn, server, "set_server_desired_state", desired_state)


async def set_last_error(conn: database.Conn, server: Server, last_error: str | None) -> Server:
    """Record why the server needs attention, without changing its state (compare-and-set)."""
    return await _compare_and_set(conn, server, "set_server_last_error", last_error)


async def page(
    conn: database.Conn,
    *,
    tenant: str | None,
    state: str | None,
    after: tuple[datetime.datetime, uuid.UUID] | None,
    limit: int,
) -> list[Server]:
    """Servers oldest first after the cursor; `tenant=None` lists every tenant's."""
    created, last_id = after if after is not None else (None, None)
    records = await queries.fetch(conn, "list_servers", tenant, state, created, last_id, limit)
    return [database.row(Server, record) for record in records]
