"""Admin views: shard ownership, replicas, and resident actors gathered from every replica."""

from __future__ import annotations

from typing import Any

import asyncpg

from tests import helpers
from tests.e2e import harness
from zlh_actors import service

MORE = 16  # servers at most, to have one on each of two replicas


async def test_admin_endpoints_refuse_user_tokens(control: harness.Control) -> None:
    for path in ("/admin/v1/actors", "/admin/v1/shards"):
        status, body, _ = await control.call("GET", path, who="alpha")
        assert status == 403, body
        status, body, _ = await control.call("GET", path, who="admin")
        assert status == 200, body


async def test_actors_and_shards_are_gathered_from_every_replica(
    control: harness.Control, db_url: str, pool: asyncpg.Pool
) -> None:
    second = harness.settings_for(control.lab, db_url)
    async with service.running(second, db_url):
        control.base_urls.append(f"http://127.0.0.1:{second.port}")

        async def balanced() -> bool:
            _, body, _ = await control.call("GET", "/admin/v1/shards", who="admin")
            owners = [replica["owned_shards"] for replica in body["replicas"] if replica["live"]]
            return sorted(owners) == [4, 4]

        await helpers.assert_eventually(balanced, timeout=15, message="shards never split 4/4")
        # A server's shard follows from its random id: six land on one replica's four shards once in
        # 32 runs, so they are created two at a time until each replica holds one (all MORE on one: 1 in
        # 32,768).
        created: list[dict[str, Any]] = []
        replicas: set[str] = set()
        while len(replicas) < 2 and len(created) < MORE:
            batch = [await control.create(f"watched-{len(created) + n}", replica=n) for n in range(2)]
            for server in batch:
                await control.wait_state(server["id"], "running")
            created += batch
            status, body, _ = await control.call("GET", "/admin/v1/actors", who="admin")
            assert status == 200, body
            assert body["unreachable"] == []
            by_id = {item["server_id"]: item for item in body["actors"]}
            assert set(by_id) >= {server["id"] for server in created}
            replicas = {by_id[server["id"]]["replica"] for server in created}
        assert len(replicas) == 2
        for server in created:
            item = by_id[server["id"]]
            assert item["state"] == "running"
            assert item["last_transition"]["event"] == "ready"
            assert item["epoch"] >= 1
            assert item["mailbox_depth"] == 0
        _, shards, _ = await control.call("GET", "/admin/v1/shards", who="admin")
        assert len(shards["shards"]) == 8
        assert all(lease["owner"] is not None for lease in shards["shards"])


async def test_reconcile_now_and_the_drift_report(control: harness.Control) -> None:
    server = await control.create("drifter")
    await control.wait_state(server["id"], "running")
    status, body, _ = await control.call("POST", "/admin/v1/reconcile", who="alpha")
    assert status == 403
    await control.lab.stop_container(server["vmid"])
    status, body, _ = await control.call("POST", "/admin/v1/reconcile", who="admin")
    assert status == 200, body
    assert body["unreachable"] == []
    kinds = [entry["kind"] for report in body["reports"] for entry in report["drifts"]]
    assert "power" in kinds, body
    async with control.http.get(f"{control.base_urls[0]}/metrics") as response:
        assert 'zlh_reconcile_drift{kind="power"} 1' in await response.text()
    status, drift, _ = await control.call("GET", "/admin/v1/drift", who="admin")
    assert status == 200
    assert any(entry["kind"] == "power" for report in drift["reports"] for entry in report["drifts"])
    await control.wait_state(server["id"], "running")


async def test_metrics_count_commands_transitions_and_proxmox_calls(control: harness.Control) -> None:
    server = await control.create("measured")
    await control.wait_state(server["id"], "running")
    async with control.http.get(f"{control.base_urls[0]}/metrics") as response:
        assert response.status == 200
        text = await response.text()
    assert 'zlh_commands_total{kind="create",outcome="accepted"} 1' in text
    assert 'zlh_transitions_total{event="ready"} 1' in text
    assert 'zlh_proxmox_call_seconds_count{operation="ensure_container"} 1' in text
    assert "zlh_owned_shards 8" in text
    assert "zlh_fenced_writes_rejected_total 0" in text
