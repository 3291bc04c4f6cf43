"""The schema itself refuses every write that would break an invariant.

Each test writes the bad thing through the typed stores (or, where the point is that application
code cannot bypass the rule, with raw SQL) against the real PostgreSQL, and expects a typed error.
The races open every transaction before any of them writes, so the database, not timing, decides.
"""

from __future__ import annotations

import datetime
import uuid
from collections.abc import Sequence

import asyncpg
import pytest

from statemachines import lifecycle
from storage import allocations, commands, database, idempotency, journal, servers
from tests import helpers
from zlh_actors import errors

SPEC = {"minecraft_version": "1.21.1", "fabric": {"loader": "0.16.14", "installer": "1.0.1"}}


async def new_server(pool: asyncpg.Pool, name: str = "alpha", tenant: str = "acme") -> servers.Server:
    async with database.transaction(pool) as conn:
        return await servers.insert(
            conn, tenant=tenant, name=name, spec=SPEC, state="requested", event="create"
        )


def winners_and_losers(results: Sequence[object]) -> tuple[list[object], list[BaseException]]:
    wins = [r for r in results if not isinstance(r, BaseException)]
    losses = [r for r in results if isinstance(r, BaseException)]
    return wins, losses


# --- servers: one live (tenant, name) ------------------------------------------------------------


async def test_live_name_is_unique_per_tenant(pool: asyncpg.Pool) -> None:
    await new_server(pool, "alpha", "acme")
    with pytest.raises(errors.NameTaken):
        await new_server(pool, "alpha", "acme")
    other = await new_server(pool, "alpha", "globex")
    assert other.tenant == "globex"


async def test_deleted_server_frees_its_name(pool: asyncpg.Pool) -> None:
    first = await new_server(pool, "alpha")
    async with database.transaction(pool) as conn:
        gone = await servers.transition(conn, first, "deleted", "released")
    assert gone.deleted_at is not None
    again = await new_server(pool, "alpha")
    assert again.id != first.id


async def test_concurrent_creates_with_one_name_one_wins(pool: asyncpg.Pool) -> None:
    async def create(conn: database.Conn) -> servers.Server:
        return await servers.insert(
            conn, tenant="acme", name="race", spec=SPEC, state="requested", event="create"
        )

    wins, losses = winners_and_losers(await helpers.race(pool, create, contenders=4))
    assert len(wins) == 1
    assert len(losses) == 3
    assert all(isinstance(loss, errors.NameTaken) for loss in losses), losses
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM servers WHERE name = 'race'") == 1


async def test_bad_name_and_state_are_refused(pool: asyncpg.Pool) -> None:
    with pytest.raises(errors.InvalidData):
        await new_server(pool, "Not A DNS Label")
    with pytest.raises(errors.InvalidData):
        async with database.transaction(pool) as conn:
            await servers.insert(
                conn, tenant="acme", name="x", spec=SPEC, state="teleporting", event="create"
            )


# --- allocations ----------------------------------------------------------------------------------


async def test_vmid_has_one_live_allocation(pool: asyncpg.Pool) -> None:
    a, b = await new_server(pool, "a"), await new_server(pool, "b")
    async with database.transaction(pool) as conn:
        await allocations.reserve_vmid(conn, 1000, a.id)
    with pytest.raises(errors.VmidAllocated):
        async with database.transaction(pool) as conn:
            await allocations.reserve_vmid(conn, 1000, b.id)
    async with database.transaction(pool) as conn:
        moved = await allocations.move(conn, a.id, allocations.LIVE, "released")
    assert moved == allocations.Released(vmids=1, ips=0, ports=0)
    async with database.transaction(pool) as conn:
        reused = await allocations.reserve_vmid(conn, 1000, b.id)
    assert reused.server_id == b.id


async def test_foreign_vmid_is_never_allocated(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)
    async with database.transaction(pool) as conn:
        await allocations.mark_vmid_foreign(conn, 100)
        picked = await allocations.allocate_vmid(conn, server.id, 100, 101)
    assert picked.vmid == 101
    with pytest.raises(errors.VmidAllocated):
        async with database.transaction(pool) as conn:
            await allocations.reserve_vmid(conn, 100, server.id)


async def test_a_server_holds_one_live_vmid(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)
    async with database.transaction(pool) as conn:
        await allocations.reserve_vmid(conn, 200, server.id)
    with pytest.raises(errors.VmidAllocated):
        async with database.transaction(pool) as conn:
            await allocations.reserve_vmid(conn, 201, server.id)


async def test_concurrent_reservations_of_one_vmid_one_wins(pool: asyncpg.Pool) -> None:
    queue = [await new_server(pool, f"s{n}") for n in range(4)]

    async def reserve(conn: database.Conn) -> allocations.VmidAllocation:
        return await allocations.reserve_vmid(conn, 5000, queue.pop().id)

    wins, losses = winners_and_losers(await helpers.race(pool, reserve, contenders=4))
    assert len(wins) == 1
    assert all(isinstance(loss, errors.VmidAllocated) for loss in losses), losses
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM vmid_allocations WHERE vmid = 5000") == 1


async def test_allocation_under_the_lock_gives_concurrent_creates_distinct_vmids(pool: asyncpg.Pool) -> None:
    queue = [await new_server(pool, f"l{n}") for n in range(6)]

    async def allocate(conn: database.Conn) -> allocations.VmidAllocation:
        await allocations.lock(conn)
        return await allocations.allocate_vmid(conn, queue.pop().id, 5000, 5999)

    results = await helpers.race(pool, allocate, contenders=6)
    wins, losses = winners_and_losers(results)
    assert losses == []
    assert sorted(win.vmid for win in wins) == list(range(5000, 5006))  # type: ignore[attr-defined]


async def test_concurrent_port_reservation_one_wins(pool: asyncpg.Pool) -> None:
    contenders = [await new_server(pool, f"p{n}") for n in range(3)]
    queue = list(contenders)

    async def reserve(conn: database.Conn) -> allocations.PortAllocation:
        return await allocations.reserve_port(conn, "pve1", 25565, queue.pop().id)

    wins, losses = winners_and_losers(await helpers.race(pool, reserve, contenders=3))
    assert len(wins) == 1
    assert all(isinstance(loss, errors.PortAllocated) for loss in losses), losses


async def test_same_port_on_another_node_is_fine(pool: asyncpg.Pool) -> None:
    a, b = await new_server(pool, "a"), await new_server(pool, "b")
    async with database.transaction(pool) as conn:
        await allocations.reserve_port(conn, "pve1", 25565, a.id)
        other = await allocations.reserve_port(conn, "pve2", 25565, b.id)
    assert other.node == "pve2"
    with pytest.raises(errors.PortAllocated):
        async with database.transaction(pool) as conn:
            await allocations.reserve_port(conn, "pve2", 25565, a.id)


async def test_concurrent_ip_reservation_one_wins(pool: asyncpg.Pool) -> None:
    queue = [await new_server(pool, f"i{n}") for n in range(3)]

    async def reserve(conn: database.Conn) -> allocations.IpAllocation:
        return await allocations.reserve_ip(conn, "127.20.0.9", queue.pop().id)

    wins, losses = winners_and_losers(await helpers.race(pool, reserve, contenders=3))
    assert len(wins) == 1
    assert all(isinstance(loss, errors.IpAllocated) for loss in losses), losses


# --- idempotency keys ----------------------------------------------------------------------------


def _expiry() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=24)


async def test_idempotency_key_has_one_record(pool: asyncpg.Pool) -> None:
    fp = idempotency.fingerprint("POST", "/v1/servers", {"name": "a"})
    async with database.transaction(pool) as conn:
        await idempotency.claim(conn, "acme", "key-1", fp, _expiry())
    with pytest.raises(errors.IdempotencyKeyTaken):
        async with database.transaction(pool) as conn:
            await idempotency.claim(conn, "acme", "key-1", fp, _expiry())
    async with database.transaction(pool) as conn:
        other_tenant = await idempotency.claim(conn, "globex", "key-1", fp, _expiry())
    assert other_tenant.tenant == "globex"


async def test_concurrent_claims_of_one_key_one_wins(pool: asyncpg.Pool) -> None:
    fp = idempotency.fingerprint("POST", "/v1/servers", {"name": "a"})

    async def claim(conn: database.Conn) -> idempotency.Record:
        return await idempotency.claim(conn, "acme", "same-key", fp, _expiry())

    wins, losses = winners_and_losers(await helpers.race(pool, claim, contenders=5))
    assert len(wins) == 1
    assert len(losses) == 4
    assert all(isinstance(loss, errors.IdempotencyKeyTaken) for loss in losses), losses


async def test_first_answer_is_kept(pool: asyncpg.Pool) -> None:
    fp = idempotency.fingerprint("POST", "/v1/servers", {"name": "a"})
    async with database.transaction(pool) as conn:
        await idempotency.claim(conn, "acme", "k", fp, _expiry())
        await idempotency.complete_many(conn, [(("acme", "k"), None, 202, {"id": "first"})])
    with pytest.raises(errors.Conflict):
        async with database.transaction(pool) as conn:
            await idempotency.complete_many(conn, [(("acme", "k"), None, 202, {"id": "second"})])
    async with pool.acquire() as conn:
        record = await idempotency.get(conn, "acme", "k")
    assert record is not None
    assert record.completed
    assert record.response_body == {"id": "first"}


async def test_overlong_or_invisible_key_is_refused(pool: asyncpg.Pool) -> None:
    fp = idempotency.fingerprint("POST", "/v1/servers", {})
    for bad in ("x" * 256, "has space", ""):
        with pytest.raises(errors.InvalidData):
            async with database.transaction(pool) as conn:
                await idempotency.claim(conn, "acme", bad, fp, _expiry())


def test_fingerprint_is_canonical() -> None:
    a = idempotency.fingerprint("post", "/v1/servers", {"b": 1, "a": [1, 2]})
    b = idempotency.fingerprint("POST", "/v1/servers", {"a": [1, 2], "b": 1})
    c = idempotency.fingerprint("POST", "/v1/servers", {"a": [2, 1], "b": 1})
    assert a == b
    assert a != c


# --- the journal ----------------------------------------------------------------------------------


async def test_journal_refuses_gaps_duplicates_and_discontinuity(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)
    insert = "INSERT INTO journal (server_id, seq, from_state, to_state, event) VALUES ($1, $2, $3, $4, $5)"
    cases = [
        (3, "requested", "provisioning.cloning", "create"),  # gap: next is 2
        (1, None, "requested", "create"),  # duplicate of seq 1
        (2, "running", "stopping", "stop"),  # does not start where seq 1 ended
    ]
    for seq, from_state, to_state, event in cases:
        with pytest.raises(errors.JournalConflict):
            async with database.transaction(pool) as conn:
                await database.guarded(conn.execute(insert, server.id, seq, from_state, to_state, event))
    async with pool.acquire() as conn:
        assert [e.seq for e in await journal.entries(conn, server.id)] == [1]


async def test_concurrent_appends_leave_no_gap_or_duplicate(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)

    async def append(conn: database.Conn) -> journal.Entry:
        return await journal.append(conn, server.id, "requested", "requested", "noop")

    results = await helpers.race(pool, append, contenders=4)
    wins, losses = winners_and_losers(results)
    assert wins, results
    assert all(isinstance(loss, errors.JournalConflict) for loss in losses), losses
    async with pool.acquire() as conn:
        seqs = [e.seq for e in await journal.entries(conn, server.id)]
    assert seqs == list(range(1, len(seqs) + 1))
    assert len(seqs) == 1 + len(wins)


async def test_journal_is_append_only(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)
    for statement in (
        "UPDATE journal SET event = 'forged' WHERE server_id = $1",
        "DELETE FROM journal WHERE server_id = $1",
    ):
        with pytest.raises(errors.InvalidData):
            async with database.transaction(pool) as conn:
                await database.guarded(conn.execute(statement, server.id))


# --- compare-and-set on (id, version) -------------------------------------------------------------


async def test_stale_version_raises_stale_write(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)
    async with database.transaction(pool) as conn:
        moved = await servers.transition(conn, server, "provisioning.cloning", "create")
    assert moved.version == server.version + 1
    with pytest.raises(errors.StaleWrite) as caught:
        async with database.transaction(pool) as conn:
            await servers.transition(conn, server, "deleting.stopping_game", "delete")
    assert caught.value.details["expected_version"] == server.version


async def test_concurrent_transitions_from_one_read_one_wins(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)

    async def move(conn: database.Conn) -> servers.Server:
        return await servers.transition(conn, server, "provisioning.cloning", "create")

    wins, losses = winners_and_losers(await helpers.race(pool, move, contenders=3))
    assert len(wins) == 1
    assert all(isinstance(loss, errors.StaleWrite) for loss in losses), losses
    async with pool.acquire() as conn:
        assert len(await journal.entries(conn, server.id)) == 2


async def test_update_without_version_bump_is_refused(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)
    with pytest.raises(errors.InvalidData):
        async with database.transaction(pool) as conn:
            await database.guarded(
                conn.execute("UPDATE servers SET last_error = 'x' WHERE id = $1", server.id)
            )


async def test_state_change_without_journal_entry_cannot_commit(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)
    with pytest.raises(errors.InvalidData):
        async with database.transaction(pool) as conn:
            await database.guarded(
                conn.execute(
                    "UPDATE servers SET state = 'provisioning.cloning', version = version + 1 WHERE id = $1",
                    server.id,
                )
            )
    async with pool.acquire() as conn:
        assert (await servers.get(conn, server.id)).state == "requested"


async def test_missing_server_is_not_found_not_stale(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)
    ghost = servers.Server(**{**server.__dict__, "id": uuid.uuid4()})
    with pytest.raises(errors.NotFound):
        async with database.transaction(pool) as conn:
            await servers.transition(conn, ghost, "provisioning.cloning", "create")


async def test_servers_are_never_hard_deleted(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)
    with pytest.raises(errors.InvalidData):
        async with database.transaction(pool) as conn:
            await database.guarded(conn.execute("DELETE FROM servers WHERE id = $1", server.id))


# --- commands -------------------------------------------------------------------------------------


async def test_command_status_only_moves_forward(pool: asyncpg.Pool) -> None:
    server = await new_server(pool)
    async with database.transaction(pool) as conn:
        queued = await commands.enqueue(conn, server.id, "start")
        accepted = await commands.settle(conn, queued, "accepted", {"state": "starting"})
    with pytest.raises(errors.StaleWrite):
        async with database.transaction(pool) as conn:
            await commands.settle(conn, queued, "rejected", {"reason": "late"})
    with pytest.raises(errors.InvalidData):
        async with database.transaction(pool) as conn:
            await database.guarded(
                conn.execute(
                    "UPDATE commands SET status = 'queued', result = NULL WHERE id = $1", accepted.id
                )
            )
    async with pool.acquire() as conn:
        assert (await commands.get(conn, queued.id)).status == "accepted"


async def test_schema_knows_exactly_the_charts_states(pool: asyncpg.Pool) -> None:
    async with pool.acquire() as conn:
        assert tuple(await conn.fetchval("SELECT zlh_states()")) == lifecycle.STATES
