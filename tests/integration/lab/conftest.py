"""Fixtures for the lab's tests: a running lab, the real Proxmox driver against it, and helpers that
play the control plane's part towards an agent (enroll it, start its game, receive its reports).

Container IPs come from the lab's default subnet 127.20.0.0/16, with host parts drawn at random so
that concurrent test runs on one machine are unlikely to pick the same address; the agent port is a
free one per lab, which makes a collision between runs even less likely.
"""

from __future__ import annotations

import contextlib
import json
import random
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests import helpers
from zlh_actors.agent import signing, wire
from zlh_actors.lab import processes, settings, world
from zlh_actors.proxmox import driver, protocol

TIME_SCALE = 0.01
WARMUP = 0.3
TOKEN = "lab-test-callback-token-0123456789"
_random = random.Random()


def loopback_ip() -> str:
    return f"127.20.{_random.randrange(1, 255)}.{_random.randrange(2, 255)}"


def spec(vmid: int, ip: str | None = None, *, node: str = "pve2") -> protocol.ContainerSpec:
    return protocol.ContainerSpec(
        server_id=uuid.uuid4(),
        generation=1,
        name=f"mc-{vmid}",
        node=node,
        vmid=protocol.Vmid(vmid),
        ip=f"{ip or loopback_ip()}/16",
        gateway=None,
        memory_mb=2048,
        cores=2,
        template_vmid=protocol.Vmid(9000),
    )


def fast(lab_settings: settings.LabSettings) -> driver.ProxmoxerDriver:
    """The driver with short budgets, so a test that goes wrong fails in seconds, not minutes."""
    return driver.ProxmoxerDriver(
        lab_settings.proxmox(
            read_timeout=10.0,
            lock_wait=10.0,
            task_timeout=15.0,
            backoff_initial=0.01,
            backoff_max=0.2,
            task_poll_initial=0.005,
            task_poll_max=0.05,
        )
    )


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[world.Lab]:
    async with world.Lab(tmp_path / "lab", time_scale=TIME_SCALE, warmup=WARMUP, stop_grace=5.0) as running:
        lab_id = running.supervisor.config.lab_id
        yield running
    leftovers = [pid for pid in processes.marked(f"{lab_id}/", prefix=True) if processes.alive(pid)]
    assert leftovers == [], "a closed lab leaves no agent or game behind"


@pytest.fixture
async def proxmox(lab: world.Lab) -> AsyncIterator[driver.ProxmoxerDriver]:
    pve = fast(lab.settings)
    try:
        yield pve
    finally:
        await pve.close()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


class Receiver:
    """The control plane's report endpoint: records the states agents post."""

    def __init__(self) -> None:
        self.states: list[str] = []
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.states.append(wire.parse_report(await request.json())["state"])
        return web.json_response({})


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recorder = Receiver()
    app = web.Application()
    app.router.add_post("/agent/v1/servers/{server_id}/status", recorder.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    recorder.base_url = f"http://127.0.0.1:{runner.addresses[0][1]}"
    try:
        yield recorder
    finally:
        await runner.cleanup()


def manifest(directory: Path, game_port: int) -> dict[str, Any]:
    """A manifest built only from the lab's settings files, as a control plane would build it."""
    pin = json.loads((directory / settings.LAUNCHERS_FILE).read_text())[0]
    mods = json.loads((directory / settings.MODS_FILE).read_text())
    return {
        "minecraft_version": pin["minecraft"],
        "fabric": {"loader": pin["loader"], "installer": pin["installer"]},
        "launcher": {"url": pin["url"], "sha256": pin["sha256"], "size": pin["size"]},
        "mods": mods[:2],
        "properties": {"motd": "lab test"},
        "game_port": game_port,
        "memory_mb": 1024,
    }


async def signed_post(
    http: aiohttp.ClientSession, lab_settings: settings.LabSettings, url: str, path: str, payload: object
) -> tuple[int, dict[str, Any]]:
    key = lab_settings.enrollment_key_file.read_bytes().strip()
    body = json.dumps(payload).encode()
    headers = {"Content-Type": "application/json", **signing.sign(key, "POST", path, body, time.time())}
    async with http.post(url + path, data=body, headers=headers) as response:
        return response.status, await response.json(content_type=None)


async def status(http: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with http.get(url + wire.STATUS_PATH) as response:
        assert response.status == 200
        result: dict[str, Any] = await response.json()
        return result


async def answers(http: aiohttp.ClientSession, url: str) -> bool:
    with contextlib.suppress(aiohttp.ClientError, TimeoutError):
        async with http.get(url + wire.STATUS_PATH) as response:
            return response.status == 200
    return False


async def run_game(
    http: aiohttp.ClientSession,
    lab_settings: settings.LabSettings,
    directory: Path,
    url: str,
    callback_base: str,
    game_port: int,
) -> dict[str, Any]:
    """Enroll the agent at `url`, start its game, and wait until the agent reports it ready."""
    enrollment = {
        "server_id": str(uuid.uuid4()),
        "generation": 1,
        "token": TOKEN,
        "callback_base": callback_base,
        "manifest": manifest(directory, game_port),
    }
    code, answer = await signed_post(http, lab_settings, url, wire.ENROLL_PATH, enrollment)
    assert code == 202, answer
    await wait_state(http, url, "installed")
    code, answer = await signed_post(http, lab_settings, url, wire.START_PATH, {"generation": 1})
    assert code == 202, answer
    return await wait_state(http, url, "ready")


async def wait_state(
    http: aiohttp.ClientSession, url: str, state: str, timeout: float = 15.0
) -> dict[str, Any]:
    last: dict[str, Any] = {}

    async def reached() -> bool:
        nonlocal last
        last = await status(http, url)
        return bool(last["state"] == state)

    try:
        await helpers.assert_eventually(reached, timeout=timeout, message=f"agent state {state}")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; last status {last}") from None
    return last


def text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else ""


def argv(pid: int) -> list[bytes]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")


def pids_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text` (a lab directory: its agents and games)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if text.encode() in (entry / "cmdline").read_bytes() and processes.alive(int(entry.name)):
                    found.append(int(entry.name))
    return found
