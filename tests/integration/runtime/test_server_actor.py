"""The server actor on a real replica and database, with the world replaced by scripted effects.

What is under test is the runtime (leases, inbox, mailbox, supervision, fencing) and the handler's
use of the chart; the effects stand in for Proxmox and the agent, whose real versions the e2e tests
exercise.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

import asyncpg
import pytest

from storage import commands, database, servers
from tests import helpers
from zlh_actors import errors, metrics
from zlh_actors.runtime import actors, ownership, replica
from zlh_actors.servers import actor, effects
from zlh_actors.servers import replica as server_replica

FAST = ownership.LeaseSettings(shard_count=4, heartbeat_interval=0.05, lease_timeout=1.0, drain_timeout=1)
POLICY = actors.Policy(idle_timeout=5, max_restarts=2, restart_window=30, backoff_base=0.01)

# The event that completes each working state, as a healthy world would report it.
COMPLETIONS = {
    "provisioning.cloning": "cloned",
    "provisioning.configuring": "configured",
    "provisioning.booting": "booted",
    "provisioning.enrolling": "enrolled",
    "provisioning.installing": "installed",
    "starting": "ready",
    "stopping": "stopped",
    "deleting.stopping_game": "game_stopped",
    "deleting.stopping_container": "container_stopped",
    "deleting.destroying": "destroyed",
    "deleting.releasing": "released",
}


class Scripted:
    """Completes every step at once, or raises in the states named in `broken`."""

    def __init__(self, broken: frozenset[str] = frozenset()) -> None:
        self.broken = broken
        self.performed: list[str] = []

    def deadline(self, state: str) -> float | None:
        return None

    async def perform(self, server: servers.Server, writes: effects.Writes) -> effects.Step:
        self.performed.append(server.state)
        if server.state in self.broken:
            raise RuntimeError(f"the world is broken in {server.state}")
        return effects.Step(event=COMPLETIONS.get(server.state))


@contextlib.asynccontextmanager
async def running(
    db_url: str, pool: asyncpg.Pool, work: Scripted
) -> AsyncIterator[replica.Replica[actor.Wake]]:
    built = server_replica.build(
        url=db_url, pool=pool, work=work, settings=FAST, policy=POLICY, sweep_interval=0.5
    )
    await built.start()
    try:
        await helpers.assert_eventually(lambda: _true(len(built.leases) == 4), timeout=5)
        yield built
    finally:
        await built.stop()


async def _true(value: bool) -> bool:
    return value


async def new_server(pool: asyncpg.Pool, name: str) -> uuid.UUID:
    async with database.transaction(pool) as conn:
        server = await servers.insert(
            conn, tenant="acme", name=name, spec={}, state="requested", event="request"
        )
    return server.id


async def submit(built: replica.Replica[actor.Wake], server_id: uuid.UUID, kind: str) -> commands.Command:
    return await built.inbox.submit(built.pool, server_id, kind, wait=5)


async def state_of(pool: asyncpg.Pool, server_id: uuid.UUID) -> str:
    async with pool.acquire() as conn:
        return (await servers.get(conn, server_id)).state


async def test_commands_apply_in_order_through_the_chart_under_the_lease(
    db_url: str, pool: asyncpg.Pool
) -> None:
    work = Scripted()
    async with running(db_url, pool, work) as built:
        server_id = await new_server(pool, "ordered")
        created = await submit(built, server_id, "create")
        assert created.status in ("accepted", "done"), created
        await helpers.assert_eventually(lambda: _is(pool, server_id, "running"), timeout=10)
        refused = await submit(built, server_id, "start")
        assert refused.status == "rejected"
        assert refused.result["state"] == "running"
        assert "stop" in refused.result["allowed"]
        stopped = await submit(built, server_id, "stop")
        assert stopped.status in ("accepted", "done")
        await helpers.assert_eventually(lambda: _is(pool, server_id, "stopped"), timeout=10)
        rows = await pool.fetch(
            "SELECT to_state, command_id, epoch FROM journal WHERE server_id = $1 ORDER BY seq", server_id
        )
    lease_epoch = built.leases.get(built.shard_of(server_id))
    assert [row["to_state"] for row in rows][-2:] == ["stopping", "stopped"]
    assert {row["command_id"] for row in rows if row["command_id"]} == {created.id, stopped.id}
    assert all(row["epoch"] is not None for row in rows[1:])
    assert lease_epoch is None  # the replica handed its shards off when it stopped
    assert work.performed.count("starting") == 1


async def _is(pool: asyncpg.Pool, server_id: uuid.UUID, state: str) -> bool:
    return await state_of(pool, server_id) == state


async def test_a_crashing_actor_is_restarted_then_given_up_and_the_server_failed(
    db_url: str, pool: asyncpg.Pool
) -> None:
    work = Scripted(broken=frozenset({"provisioning.booting"}))
    async with running(db_url, pool, work):
        server_id = await new_server(pool, "doomed")
        async with database.transaction(pool) as conn:
            await commands.enqueue(conn, server_id, "create")
        await helpers.assert_eventually(lambda: _is(pool, server_id, "failed.provisioning"), timeout=15)
        async with pool.acquire() as conn:
            server = await servers.get(conn, server_id)
    assert server.last_error is not None
    assert "gave up" in server.last_error
    assert "the world is broken" in server.last_error
    # The first failure plus max_restarts restarts, each reloading from the database.
    assert work.performed.count("provisioning.booting") == POLICY.max_restarts + 1


async def test_pending_work_resumes_when_a_replica_takes_the_shard(db_url: str, pool: asyncpg.Pool) -> None:
    server_id = await new_server(pool, "resumed")
    async with database.transaction(pool) as conn:
        await commands.enqueue(conn, server_id, "create")
    # No replica was running when the command arrived: the one that starts finds it by scanning.
    async with running(db_url, pool, Scripted()):
        await helpers.assert_eventually(lambda: _is(pool, server_id, "running"), timeout=10)


async def test_an_actors_writes_are_counted_and_announced_only_once_their_transaction_commits(
    db_url: str, pool: asyncpg.Pool
) -> None:
    counters = metrics.Metrics()
    announced: list[int] = []
    handler = actor.ServerHandler(pool, Scripted(), counters, announce=lambda: announced.append(1))

    def transitions() -> float:
        return counters.value("zlh_transitions_total", event="create")

    async with running(db_url, pool, Scripted()) as built:
        handler.bind(built)
        server_id = await new_server(pool, "counted")
        writes = handler._writes(built.lease_for(server_id))

        async def rolled_back() -> None:
            async with writes.server(server_id) as (conn, server):
                await handler._transition(conn, server, "provisioning.cloning", "create")
                raise RuntimeError("a later statement failed")

        with pytest.raises(RuntimeError):
            await rolled_back()
        assert (transitions(), announced) == (0, [])
        async with writes.transaction():
            pass  # a write that journals nothing is not announced
        assert announced == []
        async with writes.server(server_id) as (conn, server):
            await handler._transition(conn, server, "provisioning.cloning", "create")
            assert (transitions(), announced) == (0, [])  # not before the commit
        assert (transitions(), announced) == (1, [1])


async def test_a_replica_frozen_past_its_lease_refuses_to_act_the_instant_it_wakes(
    db_url: str, pool: asyncpg.Pool
) -> None:
    # `Writes.ensure_lease_held` guards what the database cannot fence (requests to Proxmox and
    # agents) on the replica's own clock. A frozen replica's pending retries run as soon as it
    # wakes, possibly before its lease loop has noticed anything, so the check must refuse then.
    handler = actor.ServerHandler(pool, Scripted())
    async with running(db_url, pool, Scripted()) as built:
        handler.bind(built)
        server_id = await new_server(pool, "frozen")
        lease = built.lease_for(server_id)
        writes = handler._writes(lease)
        writes.ensure_lease_held()  # held

        # The fault, not a wait: blocking the loop stops the replica's event loop, its leasing
        # included, as SIGSTOP would (its worker threads go on; here they have nothing to do).
        time.sleep(FAST.lease_timeout + 0.2)  # noqa: ASYNC251
        with pytest.raises(errors.OwnershipLost):
            writes.ensure_lease_held()

        # The lease loop then drops the shards and takes them again, under new leases: the old one
        # stays void though the heartbeat is fresh again.
        await helpers.assert_eventually(
            lambda: _true(built.leases.get(lease.shard) not in (None, lease)), timeout=5
        )
        with pytest.raises(errors.OwnershipLost):
            writes.ensure_lease_held()
        handler._writes(built.lease_for(server_id)).ensure_lease_held()


class HeldInCloning(Scripted):
    """Stays in a clone until `go` is set, then records whether its lease still held."""

    def __init__(self) -> None:
        super().__init__()
        self.cloning = asyncio.Event()
        self.go = asyncio.Event()
        self.outcome: str | None = None

    async def perform(self, server: servers.Server, writes: effects.Writes) -> effects.Step:
        if server.state == "provisioning.cloning" and self.outcome is None:
            self.cloning.set()
            await self.go.wait()
            try:
                writes.ensure_lease_held()
                self.outcome = "held"
            except errors.OwnershipLost:
                self.outcome = "lost"
        return await super().perform(server, writes)


async def test_a_step_in_flight_keeps_its_lease_while_its_shard_is_handed_off(
    db_url: str, pool: asyncpg.Pool
) -> None:
    # A graceful hand-off (rebalance, shutdown) stops routing to the shard and lets its actors
    # finish what they are doing: the database still holds the lease until the drain is over, so a
    # step in flight may still send its requests to Proxmox and agents.
    work = HeldInCloning()
    async with running(db_url, pool, work) as built:
        server_id = await new_server(pool, "handed-off")
        await submit(built, server_id, "create")
        await asyncio.wait_for(work.cloning.wait(), timeout=5)
        handing_off = asyncio.ensure_future(built.releasing(built.shard_of(server_id)))
        await helpers.assert_eventually(lambda: _true(not built.owns(server_id)), timeout=5)
        work.go.set()
        await asyncio.wait_for(handing_off, timeout=5)
        assert work.outcome == "held"
