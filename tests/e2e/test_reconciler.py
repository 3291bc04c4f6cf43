"""The reconciler end to end: drift made behind the control plane's back is found and repaired.

Each test makes one kind of drift directly in the lab (fakepve and the agents), runs a pass on demand
(the periodic one is set to an hour, so only the test decides when a pass happens), and checks that
the repair happened the way the design says: server state changes only in journal entries written by
the owning actor under its lease epoch, carrying the drift command's id and the reason, and what
belongs to no server (an orphan container, a foreign VMID) is handled by the reconciler itself and
recorded in its report.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import uuid
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from storage import allocations, commands, database
from tests import helpers
from tests.e2e import harness
from zlh_actors import service
from zlh_actors.lab import replicas, world
from zlh_actors.proxmox import marks
from zlh_actors.reconciler import reports

GRACE = 1.0
RETENTION = datetime.timedelta(hours=1)  # ZLH_COMMAND_RETENTION; the default is a week

Plane = tuple[harness.Control, service.Service]


@pytest.fixture
async def plane(lab: world.Lab, db_url: str, pool: asyncpg.Pool) -> AsyncIterator[Plane]:
    made = await replicas.prepare_database(lab, db_url)
    settings = harness.settings_for(
        lab,
        db_url,
        reconcile_interval=3600.0,
        orphan_grace=GRACE,
        crash_backoff=0.1,
        command_retention=RETENTION.total_seconds(),
        idempotency_ttl=RETENTION.total_seconds(),  # never longer than the retention (config.load)
    )
    async with service.running(settings, db_url) as running:
        control = harness.Control([f"http://127.0.0.1:{settings.port}"], made, lab, pool)
        try:
            await helpers.assert_eventually(
                lambda: _true(len(running.replica.leases) == settings.shards), message="shards not owned"
            )
            yield control, running
        finally:
            await control.close()


async def _true(value: bool) -> bool:
    return value


async def reconcile(svc: service.Service, kind: str) -> list[reports.Entry]:
    """One pass now; the drifts of `kind` it found."""
    report = await svc.reconciler.run_now()
    assert report.error is None, report.error
    assert report.shards == tuple(sorted(svc.replica.leases))
    return [entry for entry in report.drifts if entry["kind"] == kind]


async def running_server(control: harness.Control, name: str) -> dict[str, Any]:
    created = await control.create(name)
    return await control.wait_state(created["id"], "running")


async def journal(control: harness.Control, server_id: str) -> list[asyncpg.Record]:
    return await control.pool.fetch(
        "SELECT seq, from_state, to_state, event, command_id, epoch, detail FROM journal "
        "WHERE server_id = $1 ORDER BY seq",
        uuid.UUID(server_id),
    )


async def assert_journaled_by_actors(control: harness.Control, server_id: str) -> None:
    """Every state change after the create was written by an actor under a lease epoch."""
    entries = await journal(control, server_id)
    assert entries[0]["event"] == "request"
    assert [entry["seq"] for entry in entries[1:] if entry["epoch"] is None] == []


async def wait_journal_tail(control: harness.Control, server_id: str, tail: list[str]) -> None:
    async def reached() -> bool:
        states = await control.journal_states(server_id)
        return states[-len(tail) :] == tail

    await helpers.assert_eventually(
        reached, timeout=60, interval=0.1, message=f"journal of {server_id} never ended in {tail}"
    )


async def drift_entry(control: harness.Control, command_id: str | None, event: str) -> asyncpg.Record:
    """The journal entry the drift command made with `event`, and check the command."""
    assert command_id is not None
    command = await control.pool.fetchrow("SELECT * FROM commands WHERE id = $1", uuid.UUID(command_id))
    assert command is not None
    assert command["kind"] == "drift"
    assert command["status"] in ("accepted", "done"), command["result"]
    row = await control.pool.fetchrow(
        "SELECT * FROM journal WHERE command_id = $1 AND event = $2", uuid.UUID(command_id), event
    )
    assert row is not None
    return row


async def plant_ours(
    lab: world.Lab, vmid: int, server_id: uuid.UUID, generation: int, *, tagged: bool = True
) -> None:
    """A container marked (description, and tags unless `tagged` is False: a clone whose step never
    got to tag it) as a generation of `server_id`, made behind our back."""
    owner = marks.Marks(server_id, generation)
    tags = {"tags": marks.format_tags(owner)} if tagged else {}

    def plant() -> None:
        lab.pve.add_ct(
            vmid,
            "ghost",
            node="pve1",
            status="stopped",
            config={
                "rootfs": f"ceph-ct:vm-{vmid}-disk-0,size=4G",
                "net0": "name=eth0,bridge=vmbr0,hwaddr=BC:24:11:0E:00:01,ip=dhcp,type=veth",
                **tags,
                "description": marks.description(owner, "ghost"),
                "memory": 512,
            },
        )

    await lab.cluster.call(plant)


async def test_orphan_is_destroyed_after_the_grace_and_a_foreign_vmid_is_never_allocated(
    plane: Plane,
) -> None:
    control, svc = plane
    stranger, orphan, ghost = 10000, 10050, uuid.uuid4()
    await control.lab.plant_foreign(stranger)
    await plant_ours(control.lab, orphan, ghost, generation=3)
    foreign_config = await control.lab.cluster.call(lambda: dict(control.lab.pve.ct(stranger).config))

    report = await svc.reconciler.run_now()
    [found_orphan] = [entry for entry in report.drifts if entry["kind"] == "orphan"]
    [found_foreign] = [entry for entry in report.drifts if entry["kind"] == "foreign"]
    assert (found_orphan["server_id"], found_orphan["vmid"], found_orphan["generation"]) == (
        str(ghost),
        orphan,
        3,
    )
    assert "unknown" in found_orphan["reason"]
    assert found_orphan["action"].startswith("waiting")
    assert found_foreign["vmid"] == stranger
    assert found_foreign["action"].startswith("marked foreign")
    assert orphan in await control.containers()  # not before the grace period
    assert (
        await control.pool.fetchval(
            "SELECT status FROM vmid_allocations WHERE vmid = $1 AND status <> 'released'", stranger
        )
        == "foreign"
    )

    destroyed: list[reports.Entry] = []

    async def gone() -> bool:
        destroyed.extend(e for e in await reconcile(svc, "orphan") if e["action"].startswith("destroyed"))
        return bool(destroyed)

    await helpers.assert_eventually(gone, timeout=GRACE + 10, interval=0.2, message="orphan never destroyed")
    assert orphan not in await control.containers()
    # Marked once; later passes no longer see drift in it.
    assert await reconcile(svc, "foreign") == []
    [stored] = await reports.latest(control.pool)
    assert stored.replica_id == svc.replica.id
    assert stored.by_kind() == {"orphan": 0, "missing": 0, "power": 0, "agent": 0, "foreign": 0}
    # The reconciler wrote no server: the ghost never existed, and nothing else did.
    assert await control.pool.fetchval("SELECT count(*) FROM servers") == 0
    assert await control.pool.fetchval("SELECT count(*) FROM commands") == 0

    server = await running_server(control, "after-foreign")
    assert server["vmid"] != stranger
    assert await control.lab.cluster.call(lambda: dict(control.lab.pve.ct(stranger).config)) == foreign_config
    assert sorted(await control.containers()) == sorted([stranger, server["vmid"]])


async def test_an_untagged_container_with_our_marks_is_an_orphan_not_a_stranger(plane: Plane) -> None:
    # What a clone request that outlived its replica leaves when it lands after its server was
    # deleted: our marks in the description, no tags, a VMID nobody holds.
    control, svc = plane
    vmid, ghost = 10060, uuid.uuid4()
    await plant_ours(control.lab, vmid, ghost, generation=1, tagged=False)
    [found] = await reconcile(svc, "orphan")
    assert (found["vmid"], found["server_id"], found["generation"]) == (vmid, str(ghost), 1)
    assert await reconcile(svc, "foreign") == []

    async def gone() -> bool:
        return any(e["action"].startswith("destroyed") for e in await reconcile(svc, "orphan"))

    await helpers.assert_eventually(gone, timeout=GRACE + 10, interval=0.2, message="orphan never destroyed")
    assert vmid not in await control.containers()
    assert await control.pool.fetchval("SELECT count(*) FROM vmid_allocations WHERE vmid = $1", vmid) == 0


async def test_our_orphan_at_a_vmid_marked_foreign_is_destroyed_and_the_vmid_freed(plane: Plane) -> None:
    # A clone retried by a frozen replica once it woke, after the new owner had deleted its server:
    # the next server given the VMID found it there, took it for a stranger's and marked the VMID
    # foreign (seen in `python -m bench.peer`, session 9). Our marks still make it an orphan.
    control, svc = plane
    vmid, ghost = 10061, uuid.uuid4()
    await plant_ours(control.lab, vmid, ghost, generation=1, tagged=False)
    async with control.pool.acquire() as conn:
        await allocations.mark_vmid_foreign(conn, vmid)
    [found] = await reconcile(svc, "orphan")
    assert (found["vmid"], found["server_id"], found["generation"]) == (vmid, str(ghost), 1)

    async def gone() -> bool:
        return any(e["action"].startswith("destroyed") for e in await reconcile(svc, "orphan"))

    await helpers.assert_eventually(gone, timeout=GRACE + 10, interval=0.2, message="orphan never destroyed")
    assert vmid not in await control.containers()
    assert await control.pool.fetchval("SELECT count(*) FROM vmid_allocations WHERE vmid = $1", vmid) == 0


async def test_missing_container_is_reprovisioned_as_a_new_generation(plane: Plane) -> None:
    control, svc = plane
    server = await running_server(control, "phoenix")
    server_id, old_vmid = server["id"], server["vmid"]
    old_agent = control.lab.agents()[old_vmid]
    old_token = json.loads((old_agent.state_dir / "enrollment.json").read_text())["token"]
    await control.lab.destroy_container(old_vmid)
    await control.lab.wait_no_agent(old_vmid)

    [missing] = await reconcile(svc, "missing")
    assert missing["server_id"] == server_id
    assert missing["action"] == "sent to the owning actor"
    assert missing["command_id"] is not None

    async def replaced() -> bool:
        now = await control.get(server_id)
        return bool(now["generation"] == 2 and now["state"] == "running")

    await helpers.assert_eventually(replaced, timeout=60, interval=0.1, message="never re-provisioned")
    now = await control.get(server_id)
    lost = await drift_entry(control, missing["command_id"], "lost")
    assert (lost["from_state"], lost["to_state"]) == ("running", "lost")
    assert lost["detail"].startswith("reconciler: missing:")
    assert lost["epoch"] is not None
    states = await control.journal_states(server_id)
    assert states[states.index("lost") :][:2] == ["lost", "provisioning.cloning"]
    assert states[-1] == "running"
    await assert_journaled_by_actors(control, server_id)
    # One container, of the new generation; one live allocation of each kind.
    containers = await control.containers()
    assert list(containers) == [now["vmid"]]
    description = await control.lab.cluster.call(
        lambda: control.lab.pve.ct(now["vmid"]).config["description"]
    )
    assert marks.from_description(description) == marks.Marks(uuid.UUID(server_id), 2)
    assert sorted(await control.live_allocations(server_id)) == ["ip", "port", "vmid"]
    # The old generation's agent can no longer report anything.
    status, _, _ = await report(control, server_id, old_token, generation=1, seq=10_000, state="crashed")
    assert status == 401
    assert (await control.get(server_id))["state"] == "running"


async def test_container_stopped_behind_our_back_is_started_again(plane: Plane) -> None:
    control, svc = plane
    server = await running_server(control, "insomniac")
    await control.lab.stop_container(server["vmid"])
    await control.lab.wait_no_agent(server["vmid"])  # as in a real container: its agent dies with it

    [power] = await reconcile(svc, "power")
    assert power["server_id"] == server["id"]
    assert "stopped in Proxmox" in power["reason"]

    await wait_journal_tail(control, server["id"], ["running", "stopped", "starting", "running"])
    stopped = await drift_entry(control, power["command_id"], "stopped")
    started = await drift_entry(control, power["command_id"], "start")
    assert stopped["detail"] == started["detail"] == f"reconciler: power: {power['reason']}"
    assert (await control.containers())[server["vmid"]].status == "running"
    await assert_journaled_by_actors(control, server["id"])
    # Converged: the next pass finds nothing.
    assert [e for e in (await svc.reconciler.run_now()).drifts if e["server_id"] == server["id"]] == []
    # The same observation again (a replayed or late command) is about a row that has changed since.
    original = await control.pool.fetchrow(
        "SELECT payload FROM commands WHERE id = $1", uuid.UUID(str(power["command_id"]))
    )
    assert original is not None
    entries = len(await journal(control, server["id"]))
    async with database.transaction(control.pool) as conn:
        replayed = await commands.enqueue(conn, uuid.UUID(server["id"]), "drift", original["payload"])

    async def settled() -> bool:
        return bool(
            await control.pool.fetchval("SELECT status FROM commands WHERE id = $1", replayed.id) != "queued"
        )

    await helpers.assert_eventually(settled, message="the replayed drift was never settled")
    outcome = await control.pool.fetchrow("SELECT status, result FROM commands WHERE id = $1", replayed.id)
    assert outcome is not None
    assert outcome["status"] == "rejected"
    assert outcome["result"]["reason"].startswith("stale")
    assert len(await journal(control, server["id"])) == entries
    assert (await control.get(server["id"]))["state"] == "running"


async def test_agent_whose_crash_report_was_lost_is_repaired_from_its_status(plane: Plane) -> None:
    control, svc = plane
    server = await running_server(control, "quiet")
    agent = control.lab.agents()[server["vmid"]]
    before = await asyncio.to_thread(harness.agent_status, agent.ip, agent.port)
    # The agent's reports are refused from now on, so only its status can tell.
    await control.pool.execute(
        "UPDATE agent_tokens SET revoked_at = now() WHERE server_id = $1", uuid.UUID(server["id"])
    )
    assert control.lab.kill_game(server["vmid"])

    async def crashed() -> bool:
        status = await asyncio.to_thread(harness.agent_status, agent.ip, agent.port)
        return bool(status["state"] == "crashed")

    await helpers.assert_eventually(crashed, timeout=10, message="the agent never saw its game die")
    assert (await control.get(server["id"]))["state"] == "running"  # the report did not get through

    [found] = await reconcile(svc, "agent")
    assert found["server_id"] == server["id"]
    await wait_journal_tail(control, server["id"], ["running", "crashed", "starting", "running"])
    entry = await drift_entry(control, found["command_id"], "crashed")
    assert entry["detail"] == f"reconciler: agent: {found['reason']}"
    after = await asyncio.to_thread(harness.agent_status, agent.ip, agent.port)
    assert after["game"]["running"]
    assert after["game"]["pid"] != before["game"]["pid"]
    await assert_journaled_by_actors(control, server["id"])


async def report(
    control: harness.Control,
    server_id: str,
    token: str | None,
    *,
    generation: int,
    seq: int,
    state: str,
) -> tuple[int, Any, dict[str, str]]:
    """POST an agent report as an agent would."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    body = {"generation": generation, "seq": seq, "state": state, "manifest_sha256": "", "detail": "test"}
    url = f"{control.base_urls[0]}/agent/v1/servers/{server_id}/status"
    async with control.http.post(url, json=body, headers=headers) as response:
        return response.status, await response.json(content_type=None), dict(response.headers)


async def test_a_stale_agent_never_changes_state(plane: Plane) -> None:
    control, _ = plane
    server = await running_server(control, "steady")
    server_id = server["id"]
    agent = control.lab.agents()[server["vmid"]]
    token = json.loads((agent.state_dir / "enrollment.json").read_text())["token"]
    seq = await control.pool.fetchval(
        "SELECT seq FROM agent_reports WHERE server_id = $1", uuid.UUID(server_id)
    )
    assert seq > 1
    entries = len(await journal(control, server_id))
    commands = await control.pool.fetchval(
        "SELECT count(*) FROM commands WHERE server_id = $1", uuid.UUID(server_id)
    )

    status, body, _ = await report(control, server_id, None, generation=1, seq=seq + 1, state="crashed")
    assert status == 401, body
    status, body, _ = await report(
        control, server_id, "zlha_" + "x" * 40, generation=1, seq=seq + 1, state="crashed"
    )
    assert status == 401, body
    status, body, _ = await report(
        control, str(uuid.uuid4()), token, generation=1, seq=seq + 1, state="crashed"
    )
    assert status == 403, body
    status, body, _ = await report(control, server_id, token, generation=2, seq=seq + 1, state="crashed")
    assert (status, body["type"]) == (409, "/problems/stale_generation"), body
    for replayed in (seq, seq - 1):  # the newest report again, and an older one arriving late
        status, body, _ = await report(control, server_id, token, generation=1, seq=replayed, state="crashed")
        assert (status, body) == (200, {"status": "ignored", "reason": "stale_seq"})

    assert (await control.get(server_id))["state"] == "running"
    assert len(await journal(control, server_id)) == entries
    assert (
        await control.pool.fetchval(
            "SELECT count(*) FROM commands WHERE server_id = $1", uuid.UUID(server_id)
        )
        == commands
    )


async def test_a_pass_forgets_commands_settled_longer_ago_than_the_retention(plane: Plane) -> None:
    control, svc = plane
    server = await running_server(control, "forgetful")
    done: dict[str, uuid.UUID] = {}

    async def settled() -> bool:  # the create and an agent report, each settled `done`
        rows = await control.pool.fetch(
            "SELECT DISTINCT ON (kind) kind, id FROM commands WHERE server_id = $1 AND status = 'done' "
            "AND kind IN ('create', 'report') ORDER BY kind, position",
            uuid.UUID(server["id"]),
        )
        done.update((row["kind"], row["id"]) for row in rows)
        return len(done) == 2

    await helpers.assert_eventually(settled, message="the create and a report settled done")
    create, kept = done["create"], done["report"]
    path = f"/v1/servers/{server['id']}/commands/{{}}"
    assert (await control.call("GET", path.format(create)))[0] == 200
    async with database.transaction(control.pool) as conn:
        await conn.execute("SET LOCAL session_replication_role = replica")  # past the status trigger
        for command_id, age in ((create, RETENTION + datetime.timedelta(seconds=1)), (kept, RETENTION / 2)):
            await conn.execute(
                "UPDATE commands SET updated_at = now() - $2::interval WHERE id = $1", command_id, age
            )
    await svc.reconciler.run_now()
    assert (await control.call("GET", path.format(create)))[0] == 404
    assert (await control.call("GET", path.format(kept)))[0] == 200  # settled, but not long enough ago
    status, events, _ = await control.call("GET", f"/v1/servers/{server['id']}/events")
    assert status == 200
    assert str(create) in {e["command_id"] for e in events["items"]}  # its effect stays in the journal
