"""The checker's pure functions over hand-built snapshots: the violations the schema refuses to let
anyone plant (its unique indexes, its journal triggers), the peer's use of `check_containers`, and
the report's table. No database and no cluster: these would sit in tests/unit/ but for ownership of
the checker's tests, which live with the lab's."""

from __future__ import annotations

import dataclasses
import uuid

from zlh_actors.lab import invariants
from zlh_actors.lab.invariants import model
from zlh_actors.proxmox import marks

A, B = uuid.UUID(int=0xA), uuid.UUID(int=0xB)


def server(server_id: uuid.UUID, state: str = "running", **changes: object) -> model.Server:
    values: dict[str, object] = {
        "id": server_id,
        "tenant": "alpha",
        "name": f"s{server_id.int}",
        "state": state,
        "generation": 1,
        "node": "pve1",
        "vmid": 10000 + server_id.int,
        "ip": f"127.20.0.{server_id.int}",
        "game_port": 25565 + server_id.int,
    }
    values.update(changes)
    return model.Server(**values)  # type: ignore[arg-type]


def held(of: model.Server) -> list[model.Allocation]:
    return [
        model.Allocation("vmid", str(of.vmid), of.id, "in_use"),
        model.Allocation("ip", str(of.ip), of.id, "in_use"),
        model.Allocation("port", f"{of.node}:{of.game_port}", of.id, "in_use"),
    ]


def journal(server_id: uuid.UUID, *steps: tuple[str | None, str, str], start: int = 1) -> list[model.Entry]:
    return [
        model.Entry(server_id, seq, before, after, event, None)
        for seq, (before, event, after) in enumerate(steps, start=start)
    ]


TO_STARTING = (
    (None, "request", "requested"),
    ("requested", "create", "provisioning.cloning"),
    ("provisioning.cloning", "cloned", "provisioning.configuring"),
    ("provisioning.configuring", "configured", "provisioning.booting"),
    ("provisioning.booting", "booted", "provisioning.enrolling"),
    ("provisioning.enrolling", "enrolled", "provisioning.installing"),
    ("provisioning.installing", "installed", "starting"),
)


def violations(database: model.Database, invariant: int) -> list[str]:
    report = invariants.check_snapshot(database, [])
    return [found.detail for found in report.violations if found.invariant == invariant]


def test_allocations_the_unique_indexes_refuse_are_still_reported() -> None:
    """vmid_allocations_live and ip_allocations_one_per_server refuse these rows in the database."""
    a = server(A, "requested")
    rows = [
        *held(a),
        model.Allocation("vmid", str(a.vmid), B, "reserved"),
        model.Allocation("ip", "127.20.0.99", A, "reserved"),
    ]
    found = violations(model.Database(servers=(a, server(B, "requested")), allocations=tuple(rows)), 4)
    assert f"VMID {a.vmid} is allocated 2 times: {A} (in_use), {B} (reserved)" in found
    assert f"server {A} holds 2 IPs at once: {a.ip}, 127.20.0.99" in found
    assert f"IP 127.20.0.99 (reserved) is leaked: held by server {A}, whose IP is now {a.ip}" in found
    assert (
        f"VMID {a.vmid} (reserved) is leaked: held by server {B}, whose VMID is now {10000 + B.int}" in found
    )
    assert len(found) == 4


def test_foreign_vmids_and_released_history_are_not_leaks() -> None:
    a = server(A, "stopped")
    rows = (*held(a), model.Allocation("vmid", "10050", None, "foreign"))
    assert violations(model.Database(servers=(a,), allocations=rows), 4) == []


def test_journals_the_triggers_refuse_are_still_reported() -> None:
    """journal_append refuses a gap, a repeated seq or an entry that does not follow on, and
    servers_state_journaled a row whose state is not the journal's last: none can be planted."""
    gap = [*journal(A, *TO_STARTING[:3]), *journal(A, *TO_STARTING[3:], start=5)]
    repeated = [
        *journal(B, *TO_STARTING[:2]),
        *journal(B, ("provisioning.cloning", "cloned", "failed.provisioning"), start=2),
    ]
    unknown = uuid.UUID(int=0xC)
    database = model.Database(
        servers=(server(A, "starting"), server(B, "running")),
        journal=(*gap, *repeated, *journal(unknown, TO_STARTING[0])),
    )
    found = violations(database, 5)
    assert f"server {A}: seq jumps from 3 to 5" in found
    assert f"server {B}: seq 2 appears twice" in found
    assert (
        f"server {B}: seq 2 (provisioning.cloning -cloned-> failed.provisioning) leads to "
        "provisioning.configuring in the chart, not failed.provisioning" in found
    )
    assert f"server {B}: the journal ends in failed.provisioning, but the server is running" in found
    assert f"journal of server {unknown}, which the database does not know" in found


def test_a_journal_must_start_with_the_request_and_follow_on() -> None:
    broken = (
        ("requested", "create", "provisioning.cloning"),
        ("provisioning.configuring", "configured", "provisioning.booting"),
    )
    servers = (server(A, "provisioning.booting"), server(B, "requested"))
    found = violations(model.Database(servers=servers, journal=tuple(journal(A, *broken))), 5)
    assert (
        f"server {A}: seq 1 (requested -create-> provisioning.cloning) does not start the journal with "
        "request into requested" in found
    )
    assert (
        f"server {A}: seq 2 (provisioning.configuring -configured-> provisioning.booting) starts from "
        "provisioning.configuring, but the journal was at provisioning.cloning" in found
    )
    assert f"server {B}: has no journal" in found
    assert len(found) == 3


def test_commands_whose_journal_entries_do_not_match_are_reported() -> None:
    drift, report, create = uuid.UUID(int=1), uuid.UUID(int=2), uuid.UUID(int=3)
    steps = [
        model.Entry(A, 1, None, "requested", "request", None),
        model.Entry(A, 2, "requested", "provisioning.cloning", "create", create),
        model.Entry(B, 7, "running", "stopped", "stopped", drift),
        model.Entry(B, 8, "stopped", "starting", "start", drift),
        model.Entry(B, 9, "starting", "crashed", "crashed", report),
        model.Entry(B, 10, "crashed", "starting", "restart", None),
        model.Entry(B, 11, "starting", "crashed", "crashed", report),
    ]
    commands = (
        model.Command(create, B, "create", "done", {}),
        model.Command(drift, B, "drift", "accepted", {"events": ["stopped"]}),
        model.Command(report, B, "report", "accepted", {}),
    )
    database = model.Database(journal=tuple(steps), commands=commands)
    found = violations(database, 6)
    assert f"command {create} (create, done) of server {B} is cited by another server's journal" in found
    assert (
        f"command {drift} (drift, accepted) of server {B} lists the repair ['stopped'], the journal has "
        "['stopped', 'start']" in found
    )
    assert (
        f"command {report} (report, accepted) of server {B} was applied 2 times (crashed, crashed)" in found
    )
    assert (
        f"command {report} (report, accepted) of server {B} was applied more than once: journal entries "
        "[9, 11] are not consecutive" in found
    )
    assert len(found) == 4


def test_a_done_repair_is_held_to_the_repair_its_payload_calls_for() -> None:
    """A `done` drift's result keeps only the state; its payload (here as text, as a bare pool hands it
    out) and the state its first entry starts in say which events it may have left."""
    once, twice = uuid.UUID(int=1), uuid.UUID(int=2)
    payload = '{"kind": "agent", "observed": {"agent": "crashed", "game_running": false}}'
    steps = [
        model.Entry(A, 9, "running", "crashed", "crashed", once),
        model.Entry(B, 9, "running", "crashed", "crashed", twice),
        model.Entry(B, 10, "crashed", "crashed", "crashed", twice),
    ]
    commands = (
        model.Command(once, A, "drift", "done", '{"state": "crashed"}', payload),
        model.Command(twice, B, "drift", "done", {"state": "crashed"}, payload),
    )
    found = violations(model.Database(journal=tuple(steps), commands=commands), 6)
    assert found == [
        f"command {twice} (drift, done) of server {B} should repair its agent drift in running with "
        "['crashed'], the journal has ['crashed', 'crashed']"
    ]


def test_stored_answers_decode_from_text() -> None:
    """A pool without the service's jsonb codec hands `response_body` out as text."""
    a = server(A, "requested")
    key = model.Key("alpha", "k", A, 202, f'{{"id": "{A}"}}')
    log = invariants.ClientLog()
    log.created("alpha", "k", 202, {"id": str(A)})
    database = model.Database(
        servers=(a,), keys=(key,), journal=tuple(journal(A, TO_STARTING[0])), allocations=tuple(held(a))
    )
    report = invariants.check_snapshot(database, [], log)
    assert report.ok, report.table()


def test_check_containers_for_a_peer_without_vmids() -> None:
    """The job-queue peer knows its servers' ids and generations, not where we would place them."""
    live, spare, gone, dropped, bare = (uuid.UUID(int=n) for n in range(1, 6))
    records = [
        invariants.Record(live, 2, live=True, needs_container=True),
        invariants.Record(spare, 1, live=True, needs_container=False),
        invariants.Record(gone, 1, live=True, needs_container=True),
        invariants.Record(dropped, 1, live=False, needs_container=False),
        invariants.Record(bare, 1, live=True, needs_container=True),
    ]

    def container(
        vmid: int, owner: uuid.UUID | None, generation: int = 1, **changes: object
    ) -> invariants.Container:
        found = None if owner is None else marks.Marks(owner, generation)
        values: dict[str, object] = {
            "vmid": vmid,
            "node": "pve1",
            "status": "running",
            "marks": found,
            "tagged": found is not None,
            "tags": None if found is None else marks.format_tags(found),
        }
        values.update(changes)
        return invariants.Container(**values)  # type: ignore[arg-type]

    # A clone not tagged yet, of a server that needs no container (failed while provisioning): its
    # retry adopts and tags it, its delete destroys it by its owner line.
    clean = [
        container(500, live, 2),
        container(501, spare, tagged=False, tags=""),  # tags cleared: untagged, as good as none
        container(502, None, tagged=False),
    ]
    assert invariants.check_containers(records[:2] + records[3:4], clean) == []

    found = invariants.check_containers(
        records,
        [
            *clean,
            container(503, live, 1),
            container(504, dropped, tags=None),
            container(505, spare),
            container(506, bare, tagged=False, tags=None),
        ],
    )
    text = [(violation.invariant, violation.detail) for violation in found]
    assert (2, f"server {live} has 2 containers: container 500 on pve1, container 503 on pve1") in text
    assert (2, f"server {spare} has 2 containers: container 501 on pve1, container 505 on pve1") in text
    assert (3, f"container 503 on pve1: is generation 1 of server {live}, now at generation 2") in text
    assert (3, f"container 504 on pve1: belongs to server {dropped}, which is deleted") in text
    assert (3, f"container 506 on pve1: owned by server {bare} but lacks the zlh tag") in text
    assert (3, f"server {gone} needs its container of generation 1, and Proxmox has none") in text
    assert len(found) == 6


def test_node_and_power_are_checked_only_where_the_record_names_them() -> None:
    """A record with a node and a power state holds its container to both; a peer's record (None)
    to neither; a container of another generation is reported for that alone."""
    owner = marks.Marks(A, 1)
    guest = invariants.Container(
        vmid=10, node="pve2", status="stopped", marks=owner, tagged=True, tags=marks.format_tags(owner)
    )
    placed = invariants.Record(A, 1, live=True, needs_container=True, vmid=10, node="pve1", power="running")
    assert [found.detail for found in invariants.check_containers([placed], [guest])] == [
        f"container 10 on pve2: claims server {A}, which the database places on pve1",
        f"container 10 on pve2: is stopped, and its server {A} is running",
    ]
    unplaced = invariants.Record(A, 1, live=True, needs_container=True)
    assert invariants.check_containers([unplaced], [guest]) == []
    newer = dataclasses.replace(placed, generation=2)
    assert [found.detail for found in invariants.check_containers([newer], [guest])] == [
        f"container 10 on pve2: is generation 1 of server {A}, now at generation 2",
        f"server {A} needs its container of generation 2 at VMID 10, and Proxmox has none",
    ]
    assert server(A, "running").power == "running"
    assert server(A, "stopped").power == "stopped"
    assert server(A, "starting").power is None


def test_the_report_table_counts_and_shows_the_first_details() -> None:
    report = invariants.Report([invariants.Violation(4, f"leak {n}") for n in range(8)], {4: 20, 5: 3})
    assert not report.ok
    table = report.table()
    rows = table.splitlines()
    assert rows[0].split() == ["invariant", "checked", "violations"]
    assert rows[4].split()[-2:] == ["20", "8"]
    assert rows[5].split()[-2:] == ["3", "0"]
    assert [row for row in rows if row.startswith("  [4]")] == [
        *(f"  [4] leak {n}" for n in range(model.DETAILS_SHOWN)),
        f"  [4] ... and {8 - model.DETAILS_SHOWN} more",
    ]
    assert invariants.Report([], {}).ok
