"""Fixtures for the agent's integration tests: real processes and sockets on loopback.

- `file_server`: the lab's file server (launcher = the stand-in game, fake mod jars).
- `receiver`: a fake control plane recording every status report the agent posts.
- `agents`: starts `python -m zlh_actors.agent` subprocesses on their own 127.x address, with the lab
  game command, and stops them (and any game they left) at the end of the test.

Each agent gets a fresh loopback IP, derived from this process's pid so that concurrent test runs on
one machine do not collide; Linux routes all of 127/8 to lo.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import signal
import socket
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests import helpers
from zlh_actors.agent import signing, wire
from zlh_actors.lab import files

ROOT = Path(__file__).resolve().parents[3]
KEY = b"lab-enrollment-key-0123456789abcdef-0123"
TOKEN = "callback-token-" + "x" * 24
LAB_COMMAND = "{python} {launcher} --host {ip} --port {port} --warmup 0.5 --max-players 20"
_ADDRESSES = itertools.count(1)


def loopback_ip() -> str:
    """A 127.x.y.z address no other agent of this test session uses."""
    return f"127.{40 + os.getpid() % 200}.{os.getpid() // 200 % 250}.{next(_ADDRESSES) % 250 + 1}"


def free_port(ip: str) -> int:
    with socket.socket() as probe:
        probe.bind((ip, 0))
        port: int = probe.getsockname()[1]
        return port


class Receiver:
    """A fake control plane: records `POST /agent/v1/servers/{id}/status` reports."""

    def __init__(self) -> None:
        self.reports: list[wire.Report] = []
        self.authorizations: list[str | None] = []
        self.paths: list[str] = []
        self.base_url = ""

    async def handle(self, request: web.Request) -> web.Response:
        self.paths.append(request.path)
        self.authorizations.append(request.headers.get("Authorization"))
        self.reports.append(wire.parse_report(await request.json()))
        return web.json_response({"ok": True})

    def states(self) -> list[str]:
        return [report["state"] for report in self.reports]

    async def wait_for_state(self, state: str, *, count: int = 1, timeout: float = 15.0) -> wire.Report:
        """The `count`-th report of `state`, once it has arrived."""

        async def arrived() -> bool:
            return self.states().count(state) >= count

        await helpers.assert_eventually(
            arrived, timeout=timeout, message=f"report {state!r}; got {self.states()}"
        )
        return [report for report in self.reports if report["state"] == state][count - 1]


@contextlib.asynccontextmanager
async def run_receiver(sock: socket.socket | None = None) -> AsyncIterator[Receiver]:
    """A receiver on 127.0.0.1 (any port), or on `sock`, a bound socket that is not listening yet."""
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/agent/v1/servers/{server_id}/status", receiver.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site: web.BaseSite = (
        web.SockSite(runner, sock) if sock is not None else web.TCPSite(runner, "127.0.0.1", 0)
    )
    await site.start()
    port = runner.addresses[0][1]
    receiver.base_url = f"http://127.0.0.1:{port}"
    try:
        yield receiver
    finally:
        await runner.cleanup()


class Agent:
    """One agent subprocess and a signed client for its API."""

    def __init__(self, state_dir: Path, ip: str, log_path: Path, http: aiohttp.ClientSession) -> None:
        self.state_dir = state_dir
        self.ip = ip
        self.log_path = log_path
        self.http = http
        self.process: asyncio.subprocess.Process | None = None
        self.url = ""

    async def launch(self, *extra: str) -> None:
        env = {name: value for name, value in os.environ.items() if not name.startswith("ZLH_AGENT_")}
        env["ZLH_AGENT_ENROLLMENT_KEY"] = KEY.decode()
        env["PYTHONPATH"] = str(ROOT)
        with self.log_path.open("ab") as log:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "zlh_actors.agent",
                "--listen",
                f"{self.ip}:0",
                "--state-dir",
                str(self.state_dir),
                "--game-command",
                LAB_COMMAND,
                "--stop-timeout",
                "5",
                "--log-level",
                "DEBUG",
                *extra,
                cwd=ROOT,
                env=env,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
            )
        assert self.process.stdout is not None
        try:
            line = await asyncio.wait_for(self.process.stdout.readline(), 15)
        except TimeoutError:
            line = b""
        text = line.decode().strip()
        assert text.startswith("zlh-agent listening on http://"), (
            f"agent did not start: {text!r}\n{self.log()}"
        )
        self.url = text.removeprefix("zlh-agent listening on ")

    async def terminate(self, timeout: float = 15.0) -> int:
        """SIGTERM the agent (it stops its game) and wait for it to exit."""
        process = self.process
        if process is None or process.returncode is not None:
            return process.returncode if process is not None and process.returncode is not None else 0
        process.send_signal(signal.SIGTERM)
        try:
            return await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
            raise AssertionError(f"agent did not stop within {timeout}s\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def post(
        self,
        path: str,
        payload: object,
        *,
        key: bytes = KEY,
        signed: bool = True,
        now: float | None = None,
    ) -> tuple[int, dict[str, Any]]:
        body = json.dumps(payload).encode()
        headers = {"Content-Type": "application/json"}
        if signed:
            headers.update(signing.sign(key, "POST", path, body, time.time() if now is None else now))
        async with self.http.post(self.url + path, data=body, headers=headers) as response:
            return response.status, await response.json(content_type=None)

    async def enroll(self, enrollment: dict[str, Any], **options: Any) -> tuple[int, dict[str, Any]]:
        return await self.post(wire.ENROLL_PATH, enrollment, **options)

    async def start_game(self, generation: int, **options: Any) -> tuple[int, dict[str, Any]]:
        return await self.post(wire.START_PATH, {"generation": generation}, **options)

    async def stop_game(self, generation: int, **options: Any) -> tuple[int, dict[str, Any]]:
        return await self.post(wire.STOP_PATH, {"generation": generation}, **options)

    async def status(self) -> dict[str, Any]:
        async with self.http.get(self.url + wire.STATUS_PATH) as response:
            assert response.status == 200
            result: dict[str, Any] = await response.json()
            return result

    async def wait_for_status(
        self, check: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        last: dict[str, Any] = {}

        async def matches() -> bool:
            nonlocal last
            last = await self.status()
            return check(last)

        await helpers.assert_eventually(matches, timeout=timeout, message=f"agent status; last {last}")
        return last


def enrollment(
    manifest: dict[str, Any], callback_base: str, *, generation: int = 1, server_id: str | None = None
) -> dict[str, Any]:
    return {
        "server_id": server_id or str(uuid.uuid4()),
        "generation": generation,
        "token": TOKEN,
        "callback_base": callback_base,
        "manifest": manifest,
    }


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    # A zombie still has a pid until its parent reaps it; it is not running.
    return stat.exists() and stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def file_server() -> AsyncIterator[files.FileServer]:
    async with files.serve("127.0.0.1", 0) as server:
        yield server


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    async with run_receiver() as running:
        yield running


@pytest.fixture
async def agents(
    tmp_path: Path, http: aiohttp.ClientSession, file_server: files.FileServer, receiver: Receiver
) -> AsyncIterator[Callable[..., Agent]]:
    """A factory of (not yet launched) agents; all are stopped at the end, with any game they left.

    It depends on the file server and the receiver so that they outlive the agents: an agent that is
    stopping reports `stopped`, and should find someone to deliver it to.
    """
    made: list[Agent] = []

    def make(state_dir: Path | None = None, ip: str | None = None) -> Agent:
        index = len(made)
        agent = Agent(
            state_dir or tmp_path / f"agent-{index}",
            ip or loopback_ip(),
            tmp_path / f"agent-{index}.log",
            http,
        )
        made.append(agent)
        return agent

    yield make
    for agent in made:
        await agent.terminate()
        print(f"--- {agent.log_path.name}\n{agent.log()}")  # shown by pytest when the test failed
        # A correct agent leaves no game behind; a broken one must not leak processes into later tests.
        for pid in games_in(agent.state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def games_in(directory: Path) -> list[int]:
    """Pids of this user's processes whose working directory is inside `directory`."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if Path(os.readlink(entry / "cwd")).is_relative_to(directory):
                found.append(int(entry.name))
    return found
