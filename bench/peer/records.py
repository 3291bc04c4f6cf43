"""The peer's own table of servers, as the platform it stands for kept one: a row per request.

One table, `peer_servers`: the server id, the client's idempotency key (UNIQUE), the name, a state
(`requested -> provisioning -> running -> deleting -> deleted`), and the node and VMID of its
container once the create job has cloned one. Updates are plain `UPDATE ... WHERE id = $1`, as in
such platforms: no row version, no compare-and-set, no fencing of a worker that lost its job.

What it does guard, because a reasonable engineer would: the API inserts with `ON CONFLICT
(idempotency_key) DO NOTHING`, so a client that repeats a create gets the same row back and
never a second one. Duplicates can then only come from a job running more than once.
"""

from __future__ import annotations

import dataclasses
import uuid

import asyncpg

SCHEMA = """
CREATE TABLE IF NOT EXISTS peer_servers (
    id uuid PRIMARY KEY,
    idempotency_key text NOT NULL UNIQUE,
    name text NOT NULL,
    state text NOT NULL,
    node text,
    vmid integer,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
)
"""

REQUESTED = "requested"
PROVISIONING = "provisioning"
RUNNING = "running"
DELETING = "deleting"
DELETED = "deleted"


@dataclasses.dataclass(frozen=True)
class Row:
    id: uuid.UUID
    idempotency_key: str
    name: str
    state: str
    node: str | None
    vmid: int | None

    @property
    def live(self) -> bool:
        return self.state != DELETED

    @property
    def holds_vmid(self) -> bool:
        """The row claims its VMID: any state but deleted, once one is recorded."""
        return self.live and self.vmid is not None


def _row(record: asyncpg.Record) -> Row:
    return Row(
        id=record["id"],
        idempotency_key=record["idempotency_key"],
        name=record["name"],
        state=record["state"],
        node=record["node"],
        vmid=record["vmid"],
    )


async def create_schema(pool: asyncpg.Pool) -> None:
    await pool.execute(SCHEMA)


async def submit(pool: asyncpg.Pool, key: str, name: str) -> uuid.UUID:
    """The API's half of a create: the row for this idempotency key, made on the first call only."""
    made = await pool.fetchval(
        "INSERT INTO peer_servers (id, idempotency_key, name, state) VALUES ($1, $2, $3, $4) "
        "ON CONFLICT (idempotency_key) DO NOTHING RETURNING id",
        uuid.uuid4(),
        key,
        name,
        REQUESTED,
    )
    if made is not None:
        return uuid.UUID(str(made))
    found = await pool.fetchval("SELECT id FROM peer_servers WHERE idempotency_key = $1", key)
    return uuid.UUID(str(found))


async def load(pool: asyncpg.Pool, server_id: uuid.UUID) -> Row | None:
    found = await pool.fetchrow("SELECT * FROM peer_servers WHERE id = $1", server_id)
    return None if found is None else _row(found)


async def state(pool: asyncpg.Pool, server_id: uuid.UUID) -> str | None:
    found = await pool.fetchval("SELECT state FROM peer_servers WHERE id = $1", server_id)
    return None if found is None else str(found)


async def record_container(pool: asyncpg.Pool, server_id: uuid.UUID, node: str, vmid: int) -> None:
    await pool.execute(
        "UPDATE peer_servers SET node = $2, vmid = $3, state = $4, updated_at = now() WHERE id = $1",
        server_id,
        node,
        vmid,
        PROVISIONING,
    )


async def set_state(pool: asyncpg.Pool, server_id: uuid.UUID, new_state: str) -> None:
    await pool.execute(
        "UPDATE peer_servers SET state = $2, updated_at = now() WHERE id = $1", server_id, new_state
    )


async def every(pool: asyncpg.Pool) -> list[Row]:
    return [_row(found) for found in await pool.fetch("SELECT * FROM peer_servers")]
