"""Allocation takes the lowest free VMID, address and port, reuses released ones, says when none is left."""

from __future__ import annotations

import ipaddress
import uuid

import asyncpg
import pytest

from storage import allocations, database, servers
from zlh_actors import errors

SPEC = {"minecraft_version": "1.21.1", "fabric": {"loader": "0.16.14", "installer": "1.0.1"}}


async def new_servers(pool: asyncpg.Pool, count: int) -> list[uuid.UUID]:
    """Servers to hold allocations (a server holds one live allocation of each kind)."""
    async with database.transaction(pool) as conn:
        return [
            (
                await servers.insert(
                    conn, tenant="t", name=f"s{n}", spec=SPEC, state="requested", event="create"
                )
            ).id
            for n in range(count)
        ]


async def release(pool: asyncpg.Pool, server_id: uuid.UUID) -> None:
    async with database.transaction(pool) as conn:
        await allocations.move(conn, server_id, allocations.LIVE, "released")


async def test_the_lowest_free_vmid_is_taken_and_a_released_one_reused(pool: asyncpg.Pool) -> None:
    owners = await new_servers(pool, 6)
    async with database.transaction(pool) as conn:
        taken = [(await allocations.allocate_vmid(conn, owner, 100, 104)).vmid for owner in owners[:3]]
    assert taken == [100, 101, 102]
    await release(pool, owners[1])
    async with database.transaction(pool) as conn:
        refilled = [(await allocations.allocate_vmid(conn, owner, 100, 104)).vmid for owner in owners[3:5]]
        assert refilled == [101, 103]
        await allocations.allocate_vmid(conn, owners[1], 100, 104)  # 104, the last one
        with pytest.raises(errors.CapacityExhausted):
            await allocations.allocate_vmid(conn, owners[5], 100, 104)


async def test_the_lowest_free_address_skips_the_excluded_ones(pool: asyncpg.Pool) -> None:
    network = ipaddress.IPv4Network("10.9.0.0/29")  # hosts .1 to .6
    gateway = [ipaddress.IPv4Address("10.9.0.1"), ipaddress.IPv4Address("10.9.0.3")]
    owners = await new_servers(pool, 5)
    async with database.transaction(pool) as conn:
        got = [str((await allocations.allocate_ip(conn, owner, network, gateway)).ip) for owner in owners[:4]]
        assert got == ["10.9.0.2", "10.9.0.4", "10.9.0.5", "10.9.0.6"]
        with pytest.raises(errors.CapacityExhausted):
            await allocations.allocate_ip(conn, owners[4], network, gateway)
    await release(pool, owners[2])
    async with database.transaction(pool) as conn:
        assert str((await allocations.allocate_ip(conn, owners[4], network, gateway)).ip) == "10.9.0.5"


async def test_the_lowest_free_port_is_per_node(pool: asyncpg.Pool) -> None:
    owners = await new_servers(pool, 4)
    async with database.transaction(pool) as conn:
        first = [
            (await allocations.allocate_port(conn, owner, "pve1", 25565, 25566)).port for owner in owners[:2]
        ]
        assert first == [25565, 25566]
        with pytest.raises(errors.CapacityExhausted):
            await allocations.allocate_port(conn, owners[2], "pve1", 25565, 25566)
        assert (await allocations.allocate_port(conn, owners[3], "pve2", 25565, 25566)).port == 25565
