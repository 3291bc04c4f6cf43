"""Allocations of VMIDs, IP addresses and (node, port) pairs.

A resource has at most one live allocation at a time (unique partial indexes on every status but
'released'), and a server holds at most one reserved or in-use allocation of each kind. Allocation
happens only through this module, under the allocation lock (`lock`): in the transaction that records
the server (or a batch of servers: the `allocate_*s` forms give each server, in order, the lowest free
value left; a one-server form is a batch of one), and when a server needs new ones (its VMID turned
out to be a stranger's, or it is re-provisioned as a new generation). Should two transactions still
pick the same free id, they collide on the index and the loser gets a typed `Conflict`.

Statuses: reserved (allocated, container not yet confirmed), in_use, releasing (the container is
being destroyed), released (history), foreign (found in Proxmox, not ours: never allocated).
"""

from __future__ import annotations

import dataclasses
import datetime
import ipaddress
import uuid
from collections.abc import Callable
from typing import TypeVar

import asyncpg

from storage import database, queries
from zlh_actors import errors

LIVE = ("reserved", "in_use")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class VmidAllocation:
    id: int
    vmid: int
    server_id: uuid.UUID | None
    status: str
    created_at: datetime.datetime
    updated_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class IpAllocation:
    id: int
    ip: ipaddress.IPv4Address | ipaddress.IPv6Address
    server_id: uuid.UUID | None
    status: str
    created_at: datetime.datetime
    updated_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class PortAllocation:
    id: int
    node: str
    port: int
    server_id: uuid.UUID | None
    status: str
    created_at: datetime.datetime
    updated_at: datetime.datetime


@dataclasses.dataclass(frozen=True)
class Released:
    """How many allocations of each kind a release moved."""

    vmids: int
    ips: int
    ports: int


async def reserve_vmid(conn: database.Conn, vmid: int, server_id: uuid.UUID) -> VmidAllocation:
    """Reserve this VMID for the server; `VmidAllocated` if it has a live holder."""
    return database.row(VmidAllocation, await queries.fetchrow(conn, "reserve_vmid", vmid, server_id))


async def allocate_vmid(conn: database.Conn, server_id: uuid.UUID, low: int, high: int) -> VmidAllocation:
    """Reserve the lowest free VMID in [low, high] for the server (call under `lock`)."""
    [allocation] = await allocate_vmids(conn, [server_id], low, high)
    return allocation


async def mark_vmid_foreign(conn: database.Conn, vmid: int) -> VmidAllocation:
    """Record that Proxmox holds this VMID for someone else, so it is never allocated."""
    return database.row(VmidAllocation, await queries.fetchrow(conn, "mark_vmid_foreign", vmid))


async def reserve_ip(conn: database.Conn, ip: str, server_id: uuid.UUID) -> IpAllocation:
    """Reserve this IP for the server; `IpAllocated` if it has a live holder."""
    return database.row(IpAllocation, await queries.fetchrow(conn, "reserve_ip", ip, server_id))


async def reserve_port(conn: database.Conn, node: str, port: int, server_id: uuid.UUID) -> PortAllocation:
    """Reserve the game port on the node for the server; `PortAllocated` if it has a live holder."""
    return database.row(PortAllocation, await queries.fetchrow(conn, "reserve_port", node, port, server_id))


async def move(
    conn: database.Conn, server_id: uuid.UUID, from_statuses: tuple[str, ...], to: str
) -> Released:
    """Move every allocation of the server in `from_statuses` to status `to`."""
    record = await queries.fetchrow(conn, "set_allocations_status", server_id, list(from_statuses), to)
    return database.row(Released, record)


# The key of the transaction-scoped advisory lock that serializes allocation among concurrent creates:
# each create holds it for one short transaction, so two creates never pick the same free id and no
# create has to retry. It only has to differ from the migration lock and the shard namespaces.
ALLOCATION_LOCK_KEY = 0x7A6C_6861_6C6C  # "zlhall"


async def lock(conn: database.Conn) -> None:
    """Serialize allocation until the transaction ends."""
    await queries.fetchval(conn, "lock_allocations", ALLOCATION_LOCK_KEY)


async def allocate_ip(
    conn: database.Conn,
    server_id: uuid.UUID,
    network: ipaddress.IPv4Network,
    exclude: list[ipaddress.IPv4Address],
) -> IpAllocation:
    """Reserve the lowest free host address of `network` (never `exclude`, e.g. the gateway)."""
    [allocation] = await allocate_ips(conn, [server_id], network, exclude)
    return allocation


async def allocate_port(
    conn: database.Conn, server_id: uuid.UUID, node: str, low: int, high: int
) -> PortAllocation:
    """Reserve the lowest free game port in [low, high] on the node."""
    [allocation] = await allocate_ports(conn, [server_id], [node], low, high)
    return allocation


async def allocate_vmids(
    conn: database.Conn, server_ids: list[uuid.UUID], low: int, high: int
) -> list[VmidAllocation]:
    """Reserve the lowest free VMIDs in [low, high], one per server in order (call under `lock`).

    One statement for the whole batch; all or nothing (`CapacityExhausted` when the range has too
    few)."""
    rows = await queries.fetch(conn, "reserve_free_vmids", low, high, server_ids)
    if len(rows) < len(server_ids):
        raise errors.CapacityExhausted("no free VMID in the configured range", low=low, high=high)
    return _in_order(VmidAllocation, rows, server_ids)


async def allocate_ips(
    conn: database.Conn,
    server_ids: list[uuid.UUID],
    network: ipaddress.IPv4Network,
    exclude: list[ipaddress.IPv4Address],
) -> list[IpAllocation]:
    """Reserve the lowest free host addresses of `network` (never `exclude`), one per server in order."""
    first = network.network_address + 1
    candidates = max(network.num_addresses - 2, 1)
    rows = await queries.fetch(conn, "reserve_free_ips", first, candidates, exclude, server_ids)
    if len(rows) < len(server_ids):
        raise errors.CapacityExhausted("no free IP address in the configured subnet", subnet=str(network))
    return _in_order(IpAllocation, rows, server_ids)


async def allocate_ports(
    conn: database.Conn, server_ids: list[uuid.UUID], nodes: list[str], low: int, high: int
) -> list[PortAllocation]:
    """Reserve the lowest free game ports in [low, high], one per server on its node; one statement
    per node. `CapacityExhausted` when a node has too few, after
    which the caller must roll back: the nodes before it have their reservations."""
    by_node: dict[str, list[uuid.UUID]] = {}
    for server_id, node in zip(server_ids, nodes, strict=True):
        by_node.setdefault(node, []).append(server_id)
    rows: list[asyncpg.Record] = []
    for node, holders in by_node.items():
        reserved = await queries.fetch(conn, "reserve_free_ports", node, low, high, holders)
        if len(reserved) < len(holders):
            raise errors.CapacityExhausted("no free game port on the node", node=node, low=low, high=high)
        rows += reserved
    return _in_order(PortAllocation, rows, server_ids)


def _in_order(cls: Callable[..., T], rows: list[asyncpg.Record], server_ids: list[uuid.UUID]) -> list[T]:
    by_server = {row["server_id"]: row for row in rows}
    return [database.row(cls, by_server[server_id]) for server_id in server_ids]


async def vmid_to_foreign(conn: database.Conn, server_id: uuid.UUID, vmid: int) -> None:
    """Proxmox holds the server's VMID for someone else: mark it foreign so it is never allocated again."""
    await queries.fetchrow(conn, "vmid_to_foreign", server_id, vmid)
