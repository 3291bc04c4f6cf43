"""The REST contract: authentication, tenancy, idempotency rules, validation, pagination, 409s."""

from __future__ import annotations

import uuid

from tests.e2e import harness


async def test_requests_without_a_valid_token_are_401(control: harness.Control) -> None:
    async with control.http.get(f"{control.base_urls[0]}/v1/servers") as response:
        assert response.status == 401
        assert response.content_type == "application/problem+json"
    async with control.http.get(
        f"{control.base_urls[0]}/v1/servers", headers={"Authorization": "Bearer nope"}
    ) as response:
        assert response.status == 401


async def test_tenants_never_see_each_others_servers(control: harness.Control) -> None:
    mine = await control.create("mine", who="alpha")
    status, body, _ = await control.call("GET", f"/v1/servers/{mine['id']}", who="beta")
    assert status == 404, body
    status, body, _ = await control.call("POST", f"/v1/servers/{mine['id']}/stop", who="beta")
    assert status == 404, body
    status, body, _ = await control.call("DELETE", f"/v1/servers/{mine['id']}", who="beta")
    assert status == 404, body
    status, listing, _ = await control.call("GET", "/v1/servers", who="beta")
    assert listing["items"] == []
    status, listing, _ = await control.call("GET", "/v1/servers", who="admin")
    assert [item["id"] for item in listing["items"]] == [mine["id"]]
    assert (await control.get(mine["id"], who="alpha"))["name"] == "mine"


async def test_idempotency_key_rules(control: harness.Control) -> None:
    key = str(uuid.uuid4())
    first = await control.create("keyed", key=key)
    status, body, _ = await control.call(
        "POST", "/v1/servers", json=control.body("other-name"), headers={"Idempotency-Key": key}
    )
    assert status == 422, body
    status, body, _ = await control.call("POST", "/v1/servers", json=control.body("no-key"))
    assert status == 400
    assert "Idempotency-Key" in body["fields"]
    status, body, _ = await control.call(
        "POST", "/v1/servers", json=control.body("long-key"), headers={"Idempotency-Key": "k" * 256}
    )
    assert status == 400
    status, body, _ = await control.call(
        "POST", "/v1/servers", json=control.body("keyed"), headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    assert status == 409, body  # a live server with that name already exists in the tenant
    assert body["type"].endswith("name-taken")
    assert body["title"] == "a live server named 'keyed' already exists"
    assert body["fields"] == {"name": "taken"}
    same_key_other_tenant = await control.create("keyed", key=key, who="beta")
    assert same_key_other_tenant["id"] != first["id"]


async def test_validation_names_every_bad_field_and_unpinned_launchers(control: harness.Control) -> None:
    status, body, _ = await control.call(
        "POST",
        "/v1/servers",
        json={
            "name": "Bad!",
            "minecraft_version": "latest",
            "fabric": {"loader": "stable", "installer": "1"},
        },
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert status == 400
    assert set(body["fields"]) == {"name", "minecraft_version", "fabric.loader"}
    status, body, _ = await control.call(
        "POST",
        "/v1/servers",
        json=control.body("unpinned", minecraft_version="1.19.2"),
        headers={"Idempotency-Key": str(uuid.uuid4())},
    )
    assert status == 400
    assert "pinned" in body["title"]
    async with control.http.post(
        f"{control.base_urls[0]}/v1/servers",
        data=b"{not json",
        headers={"Authorization": f"Bearer {control.tokens['alpha']}", "Idempotency-Key": "x1"},
    ) as response:
        assert response.status == 400
    assert await control.pool.fetchval("SELECT count(*) FROM servers") == 0


async def test_refused_actions_are_409_naming_state_and_allowed_events(control: harness.Control) -> None:
    server = await control.create("picky")
    await control.wait_state(server["id"], "running")
    status, body, _ = await control.call("POST", f"/v1/servers/{server['id']}/start")
    assert status == 409, body
    assert body["state"] == "running"
    assert "stop" in body["allowed"]
    assert "start" not in body["allowed"]
    status, body, _ = await control.call("POST", f"/v1/servers/{server['id']}/teleport")
    assert status == 404


async def test_listing_pages_with_a_cursor_and_filters_by_state(control: harness.Control) -> None:
    created = [await control.create(f"page-{n}") for n in range(5)]
    seen: list[str] = []
    cursor = None
    while True:
        path = "/v1/servers?limit=2" + (f"&cursor={cursor}" if cursor else "")
        status, body, _ = await control.call("GET", path)
        assert status == 200, body
        seen.extend(item["id"] for item in body["items"])
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == [server["id"] for server in created]
    for server in created:
        await control.wait_state(server["id"], "running")
    status, body, _ = await control.call("GET", "/v1/servers?state=running")
    assert len(body["items"]) == 5
    status, body, _ = await control.call("GET", "/v1/servers?state=provisioning.")
    assert body["items"] == []
    status, body, _ = await control.call("GET", "/v1/servers?cursor=garbage")
    assert status == 400


async def test_events_are_the_journal(control: harness.Control) -> None:
    server = await control.create("journaled")
    await control.wait_state(server["id"], "running")
    status, body, _ = await control.call("GET", f"/v1/servers/{server['id']}/events")
    assert status == 200
    steps = [(event["from"], event["to"]) for event in body["items"]]
    assert steps[0] == (None, "requested")
    assert steps[-1] == ("starting", "running")
    assert [event["seq"] for event in body["items"]] == list(range(1, len(steps) + 1))
    assert all(steps[n][1] == steps[n + 1][0] for n in range(len(steps) - 1))
