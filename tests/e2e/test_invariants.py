"""The invariant checker against a real run: a clean run has no violation, and a real duplicate
container in the lab is reported (the planted cases are in tests/integration/lab/test_invariants.py)."""

from __future__ import annotations

import uuid

from tests import helpers
from tests.e2e import harness
from zlh_actors.lab import invariants
from zlh_actors.proxmox import marks


async def _create(control: harness.Control, log: invariants.ClientLog, who: str, name: str, key: str) -> str:
    status, body, _ = await control.call(
        "POST", "/v1/servers", who=who, json=control.body(name), headers={"Idempotency-Key": key}
    )
    log.created(who, key, status, body)
    assert status == 202, body
    server_id: str = body["id"]
    return server_id


async def test_a_clean_run_has_no_violation_and_a_real_duplicate_is_reported(
    control: harness.Control,
) -> None:
    log = invariants.ClientLog()
    key = f"clean-{uuid.uuid4()}"
    kept = await _create(control, log, "alpha", "kept", key)
    assert await _create(control, log, "alpha", "kept", key) == kept  # a replay
    gone = await _create(control, log, "beta", "gone", f"gone-{uuid.uuid4()}")
    await control.wait_state(kept, "running")
    await control.wait_state(gone, "running", who="beta")
    status, body, _ = await control.call("DELETE", f"/v1/servers/{gone}", who="beta")
    assert status == 202, body
    await control.wait_state(gone, "deleted", who="beta")
    for who in ("alpha", "beta"):
        status, page, _ = await control.call("GET", "/v1/servers", who=who)
        assert status == 200, page
        for item in page["items"]:
            log.saw(who, item["id"], "list")
        status, events, _ = await control.call(
            "GET", f"/v1/servers/{kept if who == 'alpha' else gone}/events", who=who
        )
        assert status == 200, events
        for event in events["items"]:
            log.saw(who, event["server_id"], "event")

    async def quiescent() -> bool:
        # An agent's last report (the game stopped by the delete) may still be on its way in.
        queued: int = await control.pool.fetchval("SELECT count(*) FROM commands WHERE status = 'queued'")
        return queued == 0

    await helpers.assert_eventually(quiescent, timeout=30, message="commands still queued")
    report = await invariants.check(control.pool, control.lab.cluster, log)
    assert report.ok, report.table()
    assert all(report.checked[number] > 0 for number in range(1, 8)), report.table()

    server = await control.get(kept)
    duplicate = marks.Marks(uuid.UUID(kept), server["generation"])
    await control.lab.cluster.call(
        lambda: control.lab.pve.add_ct(
            server["vmid"] + 500,
            "copy",
            node=control.lab.cluster.nodes[0],
            config={
                "description": marks.description(duplicate, "kept"),
                "tags": marks.format_tags(duplicate),
            },
        )
    )
    report = await invariants.check(control.pool, control.lab.cluster, log)
    assert {violation.invariant for violation in report.violations} == {2, 3}, report.table()
    assert any(str(server["vmid"] + 500) in violation.detail for violation in report.of(3)), report.table()
