"""Only the control plane may enroll an agent or drive its game, and only forward in generations."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.integration.agent.conftest import KEY, Agent, Receiver, enrollment, free_port
from zlh_actors.agent import signing, wire
from zlh_actors.lab import files


async def post_tampered(agent: Agent, path: str, payload: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Sign one body and send another (a man in the middle swapping the manifest)."""
    signed_body = json.dumps({**payload, "generation": 99}).encode()
    headers = signing.sign(KEY, "POST", path, signed_body, time.time())
    async with agent.http.post(
        agent.url + path, data=json.dumps(payload).encode(), headers=headers
    ) as response:
        return response.status, await response.json(content_type=None)


@pytest.mark.parametrize(
    ("variant", "options"),
    [
        ("unsigned", {"signed": False}),
        ("wrong key", {"key": b"not-the-enrollment-key-0123456789abcdef"}),
        ("stale", {"now": -120.0}),
        ("from the future", {"now": 120.0}),
        ("tampered", None),
    ],
)
async def test_requests_not_signed_by_the_control_plane_are_refused(
    agents: Callable[..., Agent],
    file_server: files.FileServer,
    receiver: Receiver,
    variant: str,
    options: dict[str, Any] | None,
) -> None:
    agent = agents()
    await agent.launch()
    body = enrollment(file_server.manifest(game_port=25565), receiver.base_url)
    if options is not None and "now" in options:
        # An offset from the clock at run time, not at collection (a long suite would make it fresh).
        options = {"now": time.time() + options["now"]}

    if options is None:
        code, problem = await post_tampered(agent, wire.ENROLL_PATH, body)
    else:
        code, problem = await agent.enroll(body, **options)
    start_code, _ = (
        await post_tampered(agent, wire.START_PATH, {"generation": 1})
        if options is None
        else await agent.start_game(1, **options)
    )

    assert (code, start_code) == (401, 401), variant
    assert problem["type"] == "/problems/unauthorized"
    assert (await agent.status())["state"] == "unenrolled"
    assert not (agent.state_dir / "enrollment.json").exists()
    assert not (agent.state_dir / "game" / "fabric-server-launch.jar").exists()
    assert receiver.reports == []
    assert file_server.hits(file_server.launcher.url) == 0


async def test_generations_only_move_forward(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver
) -> None:
    agent = agents()
    await agent.launch()
    file_server.add_mod("a.jar")
    port = free_port(agent.ip)
    body = enrollment(file_server.manifest(game_port=port), receiver.base_url, generation=5)
    assert (await agent.enroll(body))[0] == 202
    await receiver.wait_for_state("installed")
    reports_before = len(receiver.reports)

    older_code, older = await agent.enroll({**body, "generation": 4})
    changed = {**body, "manifest": file_server.manifest(game_port=port, memory_mb=2048)}
    changed_code, _ = await agent.enroll(changed)
    again_code, again = await agent.enroll(body)
    renewed_code, renewed = await agent.enroll({**body, "token": "zlha_" + "n" * 43})
    start_code, _ = await agent.start_game(4)
    stop_code, _ = await agent.stop_game(6)

    assert older_code == 409
    assert older["type"] == "/problems/generation-conflict"
    assert (older["current"], older["requested"]) == ("5", "4")
    assert changed_code == 409
    assert again_code == 200
    assert again["state"] == "installed"
    # A new owner's enrollment: the same install, its own token (the dead owner's was revoked).
    assert (renewed_code, renewed["state"]) == (200, "installed")
    saved = json.loads((agent.state_dir / "enrollment.json").read_text())
    assert saved["token"] == "zlha_" + "n" * 43
    assert (start_code, stop_code) == (409, 409)
    status = await agent.status()
    assert (status["generation"], status["state"]) == (5, "installed")
    assert len(receiver.reports) == reports_before
    assert file_server.hits(file_server.launcher.url) == 1


async def test_status_is_open_and_reveals_no_token(
    agents: Callable[..., Agent], file_server: files.FileServer, receiver: Receiver
) -> None:
    agent = agents()
    await agent.launch()
    body = enrollment(file_server.manifest(game_port=25565), receiver.base_url)
    assert (await agent.enroll(body))[0] == 202

    status = await agent.wait_for_status(lambda status: status["state"] == "installed")

    assert status["server_id"] == body["server_id"]
    assert body["token"] not in json.dumps(status)
