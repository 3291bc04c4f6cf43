"""Allocating for many servers at once gives exactly what allocating for each in turn gives."""

from __future__ import annotations

import ipaddress
import random
import uuid

import asyncpg
import pytest

from storage import allocations, database
from tests.integration.storage.test_allocations import new_servers, release
from zlh_actors import errors

NETWORK = ipaddress.IPv4Network("10.9.0.0/26")  # hosts .1 to .62
Held = tuple[int, ipaddress.IPv4Address | ipaddress.IPv6Address, int]  # VMID, address, port
GATEWAY = [ipaddress.IPv4Address("10.9.0.1"), ipaddress.IPv4Address("10.9.0.9")]


async def fragment(pool: asyncpg.Pool, seed: int) -> list[uuid.UUID]:
    """Twenty servers holding allocations, then a random half of them released: gaps everywhere."""
    owners = await new_servers(pool, 40)
    async with database.transaction(pool) as conn:
        await allocations.lock(conn)
        for owner in owners[:20]:
            await allocations.allocate_vmid(conn, owner, 100, 159)
            await allocations.allocate_ip(conn, owner, NETWORK, GATEWAY)
            await allocations.allocate_port(conn, owner, "pve1", 25565, 25624)
    for owner in random.Random(seed).sample(owners[:20], 10):
        await release(pool, owner)
    return owners[20:]


async def allocate_each(conn: database.Conn, owners: list[uuid.UUID], nodes: list[str]) -> list[Held]:
    return [
        (
            (await allocations.allocate_vmid(conn, owner, 100, 159)).vmid,
            (await allocations.allocate_ip(conn, owner, NETWORK, GATEWAY)).ip,
            (await allocations.allocate_port(conn, owner, node, 25565, 25624)).port,
        )
        for owner, node in zip(owners, nodes, strict=True)
    ]


async def allocate_all(conn: database.Conn, owners: list[uuid.UUID], nodes: list[str]) -> list[Held]:
    vmids = await allocations.allocate_vmids(conn, owners, 100, 159)
    ips = await allocations.allocate_ips(conn, owners, NETWORK, GATEWAY)
    ports = await allocations.allocate_ports(conn, owners, nodes, 25565, 25624)
    assert (
        [v.server_id for v in vmids] == [i.server_id for i in ips] == [p.server_id for p in ports] == owners
    )
    return [(v.vmid, i.ip, p.port) for v, i, p in zip(vmids, ips, ports, strict=True)]


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_a_batch_allocates_what_one_at_a_time_would(pool: asyncpg.Pool, seed: int) -> None:
    owners = await fragment(pool, seed)
    nodes = [random.Random(seed).choice(["pve1", "pve2"]) for _ in owners]
    async with pool.acquire() as conn:
        one_at_a_time = conn.transaction()
        await one_at_a_time.start()
        expected = await allocate_each(conn, owners, nodes)
        await one_at_a_time.rollback()
    async with database.transaction(pool) as conn:
        assert await allocate_all(conn, owners, nodes) == expected


async def test_a_batch_that_does_not_fit_allocates_nothing(pool: asyncpg.Pool) -> None:
    owners = await new_servers(pool, 4)
    async with database.transaction(pool) as conn:
        await allocations.allocate_vmids(conn, owners[:1], 100, 102)
    async with database.transaction(pool) as conn:  # VMIDs and addresses: none, in the same statement
        with pytest.raises(errors.CapacityExhausted):
            await allocations.allocate_vmids(conn, owners[1:], 100, 102)  # 101 and 102 are left
        with pytest.raises(errors.CapacityExhausted):
            await allocations.allocate_ips(conn, owners, ipaddress.IPv4Network("10.9.0.0/30"), GATEWAY)
    with pytest.raises(errors.CapacityExhausted):  # ports, node by node: the caller rolls back
        async with database.transaction(pool) as conn:
            await allocations.allocate_ports(conn, owners, ["a", "b", "b", "b"], 1000, 1001)
    counts = await pool.fetchrow(
        "SELECT (SELECT count(*) FROM vmid_allocations) AS v, (SELECT count(*) FROM ip_allocations) AS i, "
        "(SELECT count(*) FROM port_allocations) AS p"
    )
    assert counts is not None
    assert tuple(counts) == (1, 0, 0)
