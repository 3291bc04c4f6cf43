"""Reading the world once the system is quiescent, then checking it: the only I/O of the checker.

The database is read in one repeatable-read, read-only transaction, so every table is seen at the
same instant. The statements are here rather than in storage/queries.sql: they read whole tables
raw, as an auditor does, not through the stores whose behaviour is being checked. Proxmox is read
from fakepve's own model on its loop (`Cluster.call`), not through its API: ground truth, untouched
by the faults a scenario injected into the API.
"""

from __future__ import annotations

import asyncpg

from zlh_actors.lab import cluster as lab_cluster
from zlh_actors.lab.invariants import allocations, clients, commands, containers, journals, model
from zlh_actors.proxmox import marks

SERVERS = """
SELECT id, tenant, name, state, generation, node, vmid, host(ip) AS ip, game_port FROM servers
"""
JOURNAL = "SELECT server_id, seq, from_state, to_state, event, command_id FROM journal"
COMMANDS = "SELECT id, server_id, kind, status, result, payload FROM commands"
KEYS = "SELECT tenant, key, server_id, response_status, response_body FROM idempotency_keys"
ALLOCATIONS = """
SELECT 'vmid' AS kind, vmid::text AS resource, server_id, status FROM vmid_allocations
    WHERE status <> 'released'
UNION ALL
SELECT 'ip', host(ip), server_id, status FROM ip_allocations WHERE status <> 'released'
UNION ALL
SELECT 'port', node || ':' || port, server_id, status FROM port_allocations WHERE status <> 'released'
"""


async def read_database(pool: asyncpg.Pool) -> model.Database:
    async with pool.acquire() as conn, conn.transaction(isolation="repeatable_read", readonly=True):
        return model.Database(
            servers=tuple(model.Server(**dict(row.items())) for row in await conn.fetch(SERVERS)),
            journal=tuple(model.Entry(**dict(row.items())) for row in await conn.fetch(JOURNAL)),
            commands=tuple(model.Command(**dict(row.items())) for row in await conn.fetch(COMMANDS)),
            keys=tuple(model.Key(**dict(row.items())) for row in await conn.fetch(KEYS)),
            allocations=tuple(model.Allocation(**dict(row.items())) for row in await conn.fetch(ALLOCATIONS)),
        )


def _tags(value: object) -> str | None:
    """The raw tag string; None for a guest without tags, so it reads as untagged, not as tags ''."""
    return None if value is None else str(value)


async def read_containers(cluster: lab_cluster.Cluster) -> list[model.Container]:
    """Every non-template guest of the lab's fake Proxmox, read from fakepve's own state (ground truth)."""

    def read() -> list[model.Container]:
        return [
            model.Container(
                vmid=int(ct.vmid),
                node=str(ct.node),
                status=str(ct.status),
                marks=marks.from_description(ct.config.get("description")),
                tagged=marks.carries_tag(ct.config.get("tags")),
                tags=_tags(ct.config.get("tags")),
            )
            for ct in cluster.pve.cts
            if not ct.template
        ]

    return await cluster.call(read)


def check_snapshot(
    database: model.Database, guests: list[model.Container], log: model.ClientLog | None = None
) -> model.Report:
    """All seven invariants over snapshots already read (1 and 7 need the log for their client side)."""
    records = [server.record() for server in database.servers]
    violations = [
        *clients.check_keys(database, log),
        *containers.check_containers(records, guests),
        *allocations.check(database),
        *journals.check(database),
        *commands.check(database, log),
        *clients.check_tenants(database, log),
    ]
    ours = sum(1 for guest in guests if guest.ours)
    checked = {
        1: clients.checked_keys(database, log),
        2: len(guests),
        3: len(records) + ours,
        4: allocations.checked(database),
        5: len(database.servers),
        6: commands.checked(database),
        7: clients.checked_tenants(log),
    }
    return model.Report(sorted(violations, key=lambda found: found.invariant), checked)


async def check(
    pool: asyncpg.Pool, cluster: lab_cluster.Cluster, log: model.ClientLog | None = None
) -> model.Report:
    """Read the database and Proxmox and check all seven invariants (1 and 7 need the log)."""
    database = await read_database(pool)
    guests = await read_containers(cluster)
    return check_snapshot(database, guests, log)
