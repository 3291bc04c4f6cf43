"""The invariant checker finds what is planted: a seeded, consistent world (rows written as the
service writes them, containers in fakepve marked as the driver marks them) checks clean; then each
kind of violation is planted directly, by SQL on the test database and by changing fakepve's model,
and must be reported under the right invariant, all of them when several are planted at once.

Violations the schema itself refuses (a journal gap, two live allocations of one VMID, ...) cannot
be planted here; tests/unit/lab/test_invariants.py plants them in hand-built
snapshots instead.
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import hashlib
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import fakepve
import pytest

from statemachines import lifecycle
from storage import database
from zlh_actors.lab import cluster as lab_cluster
from zlh_actors.lab import invariants
from zlh_actors.proxmox import marks

# Each step of a path: the chart event, and the kind of the command that caused it (None: a step).
TO_RUNNING = [
    ("create", "create"),
    ("cloned", None),
    ("configured", None),
    ("booted", None),
    ("enrolled", None),
    ("installed", None),
    ("ready", None),
]
TO_STOPPED = [*TO_RUNNING, ("stop", "stop"), ("stopped", None)]
TO_DELETED = [
    *TO_RUNNING,
    ("delete", "delete"),
    ("game_stopped", None),
    ("container_stopped", None),
    ("destroyed", None),
    ("released", None),
]


@dataclasses.dataclass
class Seeded:
    """A server as seeded: its row's placement and the commands of its path, by kind."""

    id: uuid.UUID
    tenant: str
    name: str
    state: str
    vmid: int
    ip: str
    node: str
    port: int
    key: str | None
    commands: dict[str, uuid.UUID]


@dataclasses.dataclass
class World:
    pool: asyncpg.Pool
    cluster: lab_cluster.Cluster
    log: invariants.ClientLog
    running: Seeded  # alpha's, running
    stopped: Seeded  # beta's, stopped
    deleted: Seeded  # alpha's, deleted

    async def check(self) -> invariants.Report:
        return await invariants.check(self.pool, self.cluster, self.log)

    async def ct(self, vmid: int) -> Any:
        return await self.cluster.call(lambda: next(ct for ct in self.cluster.pve.cts if ct.vmid == vmid))


async def seed(
    pool: asyncpg.Pool,
    cluster: lab_cluster.Cluster,
    log: invariants.ClientLog,
    *,
    tenant: str,
    name: str,
    path: list[tuple[str, str | None]],
    vmid: int,
    port: int,
    key: str | None = "default",
) -> Seeded:
    """Write a server as the service would have, with its container when its state needs one."""
    server_id = uuid.uuid4()
    states = [lifecycle.INITIAL_STATE]
    for event, _ in path:
        states.append(lifecycle.apply(states[-1], event))
    server = Seeded(
        server_id, tenant, name, states[-1], vmid, f"127.20.0.{vmid % 250 + 2}", "pve1", port, None, {}
    )
    deleted = server.state == "deleted"
    async with pool.acquire() as conn, conn.transaction():
        await conn.execute(
            "INSERT INTO servers (id, tenant, name, spec, state, node, vmid, ip, game_port, deleted_at) "
            "VALUES ($1, $2, $3, '{}', $4, $5, $6, $7, $8, CASE WHEN $9 THEN now() END)",
            server_id,
            tenant,
            name,
            server.state,
            server.node,
            vmid,
            server.ip,
            port,
            deleted,
        )
        await append(conn, server_id, 1, None, lifecycle.INITIAL_STATE, "request")
        for seq, (event, kind) in enumerate(path, start=2):
            command = None
            if kind is not None:
                command = server.commands[kind] = await command_row(conn, server_id, kind, "done")
            await append(conn, server_id, seq, states[seq - 2], states[seq - 1], event, command)
        status = "released" if deleted else "in_use"
        await conn.execute(
            "INSERT INTO vmid_allocations (vmid, server_id, status) VALUES ($1, $2, $3)",
            vmid,
            server_id,
            status,
        )
        await conn.execute(
            "INSERT INTO ip_allocations (ip, server_id, status) VALUES ($1, $2, $3)",
            server.ip,
            server_id,
            status,
        )
        await conn.execute(
            "INSERT INTO port_allocations (node, port, server_id, status) VALUES ($1, $2, $3, $4)",
            server.node,
            port,
            server_id,
            status,
        )
        if key is not None:
            server.key = f"{key}-{name}"
            body = {"id": str(server_id), "name": name, "command": {"id": str(server.commands["create"])}}
            await conn.execute(
                "INSERT INTO idempotency_keys (tenant, key, fingerprint, server_id, response_status, "
                "response_body, expires_at) VALUES ($1, $2, $3, $4, 202, $5, $6)",
                tenant,
                server.key,
                hashlib.sha256(server.key.encode()).digest(),
                server_id,
                body,
                datetime.datetime.now(datetime.UTC) + datetime.timedelta(days=1),
            )
            log.created(tenant, server.key, 202, body)
    if server.state in ("running", "stopped"):
        owner = marks.Marks(server_id, 1)
        config = {"description": marks.description(owner, name), "tags": marks.format_tags(owner)}
        await cluster.call(
            lambda: cluster.pve.add_ct(vmid, name, node=server.node, status=server.state, config=config)
        )
    for kind, command_id in server.commands.items():
        if kind != "create":  # a create's answer is logged with its key, above
            log.commanded(
                tenant, str(server_id), kind, 202, {"id": str(server_id), "command": {"id": str(command_id)}}
            )
    log.saw(tenant, str(server_id), "get")
    return server


async def append(
    conn: database.Conn,
    server_id: uuid.UUID,
    seq: int,
    before: str | None,
    after: str,
    event: str,
    command: uuid.UUID | None = None,
) -> None:
    await conn.execute(
        "INSERT INTO journal (server_id, seq, from_state, to_state, event, command_id) "
        "VALUES ($1, $2, $3, $4, $5, $6)",
        server_id,
        seq,
        before,
        after,
        event,
        command,
    )


async def command_row(conn: database.Conn, server_id: uuid.UUID, kind: str, status: str) -> uuid.UUID:
    command_id = uuid.uuid4()
    result: dict[str, Any] | None = None if status == "queued" else {}
    await conn.execute(
        "INSERT INTO commands (id, server_id, kind, status, result) VALUES ($1, $2, $3, $4, $5)",
        command_id,
        server_id,
        kind,
        status,
        result,
    )
    return command_id


async def move(
    pool: asyncpg.Pool,
    server: Seeded,
    event: str,
    command: uuid.UUID | None = None,
    *,
    target: str | None = None,
) -> None:
    """Journal `event` on the server and move its row on, in one transaction.

    The target is the chart's unless given (to plant an event the chart rejects)."""
    target = target or lifecycle.apply(server.state, event)
    async with pool.acquire() as conn, conn.transaction():
        seq = await conn.fetchval("SELECT max(seq) + 1 FROM journal WHERE server_id = $1", server.id)
        await append(conn, server.id, seq, server.state, target, event, command)
        await conn.execute(
            "UPDATE servers SET state = $2, version = version + 1 WHERE id = $1", server.id, target
        )
    server.state = target


@pytest.fixture
async def world(tmp_path: Path, pool: asyncpg.Pool) -> AsyncIterator[World]:
    cluster = await lab_cluster.Cluster.start(tmp_path, nodes=2)
    try:
        log = invariants.ClientLog()
        running = await seed(
            pool, cluster, log, tenant="alpha", name="web", path=TO_RUNNING, vmid=10000, port=25565
        )
        stopped = await seed(
            pool, cluster, log, tenant="beta", name="db", path=TO_STOPPED, vmid=10001, port=25566
        )
        deleted = await seed(
            pool, cluster, log, tenant="alpha", name="old", path=TO_DELETED, vmid=10002, port=25567
        )
        yield World(pool, cluster, log, running, stopped, deleted)
    finally:
        await cluster.close()


def details(report: invariants.Report, invariant: int) -> str:
    return "\n".join(violation.detail for violation in report.of(invariant))


def numbers(report: invariants.Report) -> set[int]:
    return {violation.invariant for violation in report.violations}


async def test_the_seeded_world_checks_clean(world: World) -> None:
    report = await world.check()
    assert report.ok, report.table()
    assert all(report.checked[number] > 0 for number in range(1, 8)), report.table()
    assert report.checked[2] == 2  # the running and the stopped server's containers


async def test_a_second_container_of_a_server_and_of_a_vmid_are_reported(world: World) -> None:
    """fakepve's `add_ct` refuses a taken VMID (as PVE does): the VMID's twin goes into its list directly."""
    owner = marks.Marks(world.running.id, 1)
    config = {"description": marks.description(owner, "web"), "tags": marks.format_tags(owner)}
    await world.cluster.call(lambda: world.cluster.pve.add_ct(10500, "copy", node="pve2", config=config))
    await world.cluster.call(lambda: world.cluster.pve.cts.append(fakepve.FakeCt(10001, "twin", node="pve2")))
    report = await world.check()
    assert numbers(report) == {2, 3}, report.table()
    assert (
        f"server {world.running.id} has 2 containers: container 10000 on pve1, container 10500 on pve2"
        in details(report, 2)
    )
    assert "VMID 10001 is held by 2 containers (on pve1, pve2)" in details(report, 2)
    assert len(report.of(2)) == 2
    assert [violation.detail for violation in report.of(3)] == [
        f"container 10500 on pve2: claims server {world.running.id}, which the database places at VMID 10000"
    ]


async def test_missing_containers_and_containers_nobody_accounts_for_are_reported(world: World) -> None:
    ct = await world.ct(world.running.vmid)
    await world.cluster.call(lambda: world.cluster.pve.cts.remove(ct))
    stranger = marks.Marks(uuid.uuid4(), 1)
    of_deleted = marks.Marks(world.deleted.id, 1)
    plants = [
        (10600, {"description": marks.description(stranger, "x"), "tags": marks.format_tags(stranger)}),
        (10601, {"description": "made by hand", "tags": "zlh"}),
        (10602, {"description": marks.description(of_deleted, "old"), "tags": marks.format_tags(of_deleted)}),
        (10603, {"description": "somebody else's", "tags": "other-team"}),  # not ours: not reported
    ]
    for vmid, config in plants:
        await world.cluster.call(functools.partial(world.cluster.pve.add_ct, vmid, config=config))
    report = await world.check()
    assert numbers(report) == {3}, report.table()
    found = details(report, 3)
    assert (
        f"container 10600 on pve1: claims server {stranger.server_id}, which the database does not" in found
    )
    assert "container 10601 on pve1: tagged zlh but has no owner line" in found
    assert f"container 10602 on pve1: belongs to server {world.deleted.id}, which is deleted" in found
    assert (
        f"server {world.running.id} needs its container of generation 1 at VMID 10000, and Proxmox" in found
    )
    assert "10603" not in found
    assert len(report.of(3)) == 4


async def test_a_stale_generation_and_disagreeing_tags_are_reported(world: World) -> None:
    await world.pool.execute(
        "UPDATE servers SET generation = 2, version = version + 1 WHERE id = $1", world.running.id
    )
    ct = await world.ct(world.stopped.vmid)
    await world.cluster.call(lambda: ct.config.update(tags=f"zlh;zlh-{world.stopped.id.hex};zlh-g7"))
    report = await world.check()
    assert numbers(report) == {3}, report.table()
    found = details(report, 3)
    assert f"is generation 1 of server {world.running.id}, now at generation 2" in found
    assert f"server {world.running.id} needs its container of generation 2" in found
    assert "container 10001 on pve1: its tags" in found


async def test_leaked_and_unprotected_allocations_are_reported(world: World) -> None:
    await world.pool.execute(
        "INSERT INTO vmid_allocations (vmid, server_id, status) VALUES (10700, $1, 'reserved')",
        world.deleted.id,
    )
    await world.pool.execute(
        "UPDATE ip_allocations SET status = 'released' WHERE server_id = $1", world.running.id
    )
    await world.pool.execute(
        "UPDATE servers SET game_port = $2, version = version + 1 WHERE id = $1",
        world.stopped.id,
        world.running.port,
    )
    report = await world.check()
    assert numbers(report) == {4}, report.table()
    found = details(report, 4)
    assert f"VMID 10700 (reserved) is leaked: held by server {world.deleted.id}, which is deleted" in found
    assert f"server {world.running.id} is running at IP {world.running.ip}, but does not hold" in found
    assert "port pve1:25565 is in use by 2 servers" in found
    assert (
        f"port pve1:25566 (in_use) is leaked: held by server {world.stopped.id}, whose port is now" in found
    )


async def test_a_journal_the_chart_rejects_is_reported(world: World) -> None:
    """`create` in `running`: the schema checks that entries follow on, not that the chart allows them."""
    await move(world.pool, world.running, "create", target="provisioning.cloning")
    report = await world.check()
    assert numbers(report) == {5}, report.table()
    assert f"server {world.running.id}: seq 9 (running -create-> provisioning.cloning) is an event the " in (
        details(report, 5)
    )


async def test_commands_without_effect_or_applied_twice_are_reported(world: World) -> None:
    async with world.pool.acquire() as conn:
        queued = await command_row(conn, world.running.id, "start", "queued")
        idle = await command_row(conn, world.running.id, "restart", "accepted")
        rejected = await command_row(conn, world.running.id, "stop", "rejected")
    await move(world.pool, world.running, "stop", rejected)
    await move(world.pool, world.stopped, "start", world.stopped.commands["stop"])
    unknown = uuid.uuid4()
    await move(world.pool, world.stopped, "stop", unknown)
    report = await world.check()
    assert numbers(report) == {6}, report.table()
    found = details(report, 6)
    assert f"command {queued} (start, queued) of server {world.running.id} was never applied" in found
    assert f"command {idle} (restart, accepted) of server {world.running.id} has no effect" in found
    assert f"command {rejected} (stop, rejected) of server {world.running.id} was rejected, yet" in found
    assert (
        f"command {world.stopped.commands['stop']} (stop, done) of server {world.stopped.id} was applied more"
        in (found)
    )
    assert f"cites command {unknown}, which does not exist" in found


async def test_a_command_answered_but_lost_or_of_another_kind_is_reported(world: World) -> None:
    server, lost = str(world.running.id), uuid.uuid4()
    create = world.running.commands["create"]
    world.log.commanded("alpha", server, "stop", 202, {"id": server, "command": {"id": str(lost)}})
    world.log.commanded("alpha", server, "restart", 202, {"id": server, "command": {"id": str(create)}})
    world.log.commanded("alpha", server, "start", 202, {"id": server, "state": "running"})  # names none
    # Nothing to hold against these: refused, unanswered, and a delete of a deleted server (no command).
    world.log.commanded("alpha", server, "start", 409, {"status": 409})
    world.log.commanded("alpha", server, "start", None, None)
    gone = str(world.deleted.id)
    world.log.commanded("alpha", gone, "delete", 202, {"id": gone, "state": "deleted"})
    report = await world.check()
    assert numbers(report) == {6}, report.table()
    found = details(report, 6)
    assert f"the stop of server {server} answered command {lost}, which does not exist" in found
    assert (
        f"the restart of server {server} answered command {create}, which is a create of server {server}"
        in found
    )
    assert f"the start of server {server} was answered 2xx without naming a command" in found
    assert len(report.of(6)) == 3, report.table()


async def test_keys_and_answers_that_break_idempotency_are_reported(world: World) -> None:
    twin = await seed(
        world.pool,
        world.cluster,
        invariants.ClientLog(),
        tenant="alpha",
        name="twin",
        path=[],
        vmid=10003,
        port=25568,
        key=None,
    )
    world.log.created("alpha", world.running.key or "", 202, {"id": str(twin.id), "name": "web"})
    world.log.created("alpha", "never-stored", 202, {"id": str(twin.id)})
    world.log.created("alpha", "timed-out", None, None)  # no answer: nothing to hold against it
    await world.pool.execute(
        "INSERT INTO idempotency_keys (tenant, key, fingerprint, server_id, response_status, response_body, "
        "expires_at) VALUES ('alpha', 'borrowed', $1, $2, 202, $3, now() + interval '1 day'), "
        "('alpha', 'claimed', $1, NULL, NULL, NULL, now() + interval '1 day')",
        bytes(32),
        world.stopped.id,
        {"id": str(world.stopped.id)},
    )
    report = await world.check()
    assert numbers(report) == {1}, report.table()
    found = details(report, 1)
    assert f"server {twin.id} (alpha/twin) is named by no idempotency key" in found
    assert f"key {world.running.key!r} of tenant alpha was answered with 2 servers" in found
    assert (
        f"key {world.running.key!r} of tenant alpha: 1 of 2 answers differ from the first answer "
        "(fields command, id;" in found
    )
    assert "key 'never-stored' of tenant alpha was answered with server" in found
    assert f"key 'borrowed' of tenant alpha names server {world.stopped.id} of tenant beta" in found
    assert f"server {world.stopped.id} is named by 2 keys" in found
    assert "key 'claimed' of tenant alpha was claimed but never answered" in found
    assert "timed-out" not in found


async def test_a_tenant_seeing_another_tenants_server_is_reported(world: World) -> None:
    world.log.saw("beta", str(world.running.id), "stream")
    world.log.saw("beta", str(world.running.id), "stream")  # the same sighting once
    nowhere = uuid.uuid4()
    world.log.saw("alpha", str(nowhere), "list")
    report = await world.check()
    assert numbers(report) == {7}, report.table()
    found = details(report, 7)
    assert f"tenant beta saw server {world.running.id} of tenant alpha (stream)" in found
    assert f"tenant alpha saw server {nowhere} (list), which the database does not know" in found
    assert len(report.of(7)) == 2


async def test_every_violation_planted_at_once_is_reported(world: World) -> None:
    stranger = marks.Marks(uuid.uuid4(), 1)
    config = {"description": marks.description(stranger, "x"), "tags": marks.format_tags(stranger)}
    await world.cluster.call(lambda: world.cluster.pve.add_ct(10600, config=config))
    await world.cluster.call(lambda: world.cluster.pve.cts.append(fakepve.FakeCt(10001, "twin", node="pve2")))
    await world.pool.execute(
        "INSERT INTO vmid_allocations (vmid, server_id, status) VALUES (10700, $1, 'reserved')",
        world.deleted.id,
    )
    await move(world.pool, world.stopped, "create", target="provisioning.cloning")
    async with world.pool.acquire() as conn:
        queued = await command_row(conn, world.running.id, "stop", "queued")
    world.log.created("beta", world.stopped.key or "", 202, {"id": str(world.running.id)})
    world.log.saw("alpha", str(world.stopped.id), "event")
    report = await world.check()
    assert numbers(report) == {1, 2, 3, 4, 5, 6, 7}, report.table()
    table = report.table()
    for needle in ("VMID 10001 is held by 2", "container 10600", "VMID 10700", "-create->", str(queued)):
        assert needle in table, table
    # Each planted violation, plus the ones it implies: the replay names alpha's server (1 and 7).
    assert len(report.violations) >= 8, table


async def test_an_untagged_clone_is_allowed_only_while_its_server_needs_no_container(world: World) -> None:
    """Tags follow the clone in a second request: a server that failed in between keeps a clone with
    its owner line and no tags (docs/invariants.md, invariant 3); a running server may not."""
    failed = await seed(
        world.pool,
        world.cluster,
        world.log,
        tenant="alpha",
        name="half",
        path=[("create", "create"), ("fail", None)],
        vmid=10003,
        port=25568,
    )
    assert failed.state == "failed.provisioning"
    config = {"description": marks.description(marks.Marks(failed.id, 1), "half")}
    await world.cluster.call(functools.partial(world.cluster.pve.add_ct, failed.vmid, "half", config=config))
    report = await world.check()
    assert report.ok, report.table()
    assert report.checked[2] == 3, report.table()

    ct = await world.ct(world.running.vmid)
    await world.cluster.call(lambda: ct.config.pop("tags"))
    report = await world.check()
    assert [violation.detail for violation in report.violations] == [
        f"container 10000 on pve1: owned by server {world.running.id} but lacks the zlh tag"
    ], report.table()


async def test_a_replay_refused_under_an_answered_key_is_reported(world: World) -> None:
    key = world.running.key or ""
    problem = {"type": "about:blank", "title": "Conflict", "status": 409}
    world.log.created("alpha", key, 409, problem)
    world.log.created("alpha", key, 422, {**problem, "status": 422})
    world.log.created("alpha", key, 429, {**problem, "status": 429})  # shed: the client may retry
    world.log.created("alpha", key, 503, None)  # the service could not answer: allowed
    world.log.created("alpha", key, None, None)  # no answer at all: allowed
    world.log.created("alpha", "refused-first", 422, problem)  # a key without a stored answer
    report = await world.check()
    assert [violation.detail for violation in report.violations] == [
        f"key {key!r} of tenant alpha: 2 replays refused (409, 422), though its first answer is 202"
    ], report.table()


async def test_a_done_repair_applied_twice_back_to_back_is_reported(world: World) -> None:
    """A `done` drift command's result keeps only the state: its events are recomputed from its payload."""

    async def drift(server: Seeded, observed: str) -> uuid.UUID:
        payload = {
            "kind": "power",
            "reason": f"the container is {observed}",
            "observed": {"proxmox": observed},
            "state": server.state,
            "version": 1,
            "generation": 1,
        }
        command_id = uuid.uuid4()
        await world.pool.execute(
            "INSERT INTO commands (id, server_id, kind, status, payload, result) "
            "VALUES ($1, $2, 'drift', 'done', $3, $4)",
            command_id,
            server.id,
            payload,
            {"state": "starting"},
        )
        return command_id

    once = await drift(world.stopped, "running")  # stopped, yet running: `start`
    await move(world.pool, world.stopped, "start", once)
    twice = await drift(world.running, "stopped")  # running, yet stopped: `stopped`, `start`
    await move(world.pool, world.running, "stopped", twice)
    await move(world.pool, world.running, "start", twice)
    await move(world.pool, world.running, "stopped", twice, target="stopped")
    await move(world.pool, world.running, "start", twice)
    report = await world.check()
    assert numbers(report) == {5, 6}, report.table()
    assert [violation.detail for violation in report.of(6)] == [
        f"command {twice} (drift, done) of server {world.running.id} should repair its power drift in "
        "running with ['stopped'] or ['stopped', 'start'], the journal has "
        "['stopped', 'start', 'stopped', 'start']"
    ], report.table()
    assert f"server {world.running.id}: seq 11 (starting -stopped-> stopped)" in details(report, 5)


async def test_a_container_on_another_node_or_in_the_wrong_power_state_is_reported(world: World) -> None:
    """The container is where its server needs it, but Proxmox has it on another node, or stopped
    under a running server and running under a stopped one: the database and Proxmox disagree."""
    running, stopped = await world.ct(world.running.vmid), await world.ct(world.stopped.vmid)

    def plant() -> None:
        running.status = "stopped"
        stopped.status = "running"
        stopped.node = "pve2"

    await world.cluster.call(plant)
    report = await world.check()
    assert numbers(report) == {3}, report.table()
    assert [violation.detail for violation in report.of(3)] == [
        f"container 10000 on pve1: is stopped, and its server {world.running.id} is running",
        f"container 10001 on pve2: claims server {world.stopped.id}, which the database places on pve1",
        f"container 10001 on pve2: is running, and its server {world.stopped.id} is stopped",
    ]
