"""`python -m zlh_actors.lab` as its own process: its settings files work, and it leaves nothing behind."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests import helpers
from tests.integration.lab import conftest
from zlh_actors.lab import processes, settings

ROOT = Path(__file__).resolve().parents[3]
READY = b"zlh-lab: ready, settings in "


@pytest.fixture
async def lab_process(tmp_path: Path) -> AsyncIterator[tuple[asyncio.subprocess.Process, Path]]:
    directory = tmp_path / "lab"
    with (tmp_path / "lab.log").open("wb") as log:
        process = await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "zlh_actors.lab", "--dir", str(directory)),
            *("--time-scale", str(conftest.TIME_SCALE), "--warmup", str(conftest.WARMUP)),
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=log,
        )
    assert process.stdout is not None
    lines: list[bytes] = []
    try:
        async with asyncio.timeout(30):
            while not lines or not lines[-1].startswith(READY):
                line = await process.stdout.readline()
                assert line, f"the lab exited: {lines}\n{(tmp_path / 'lab.log').read_text()}"
                lines.append(line)
        assert lines[-1].removeprefix(READY).strip().decode() == str(directory / settings.ENV_FILE)
        yield process, directory
    finally:
        if process.returncode is None:
            process.kill()
        await process.communicate()
        for pid in conftest.pids_mentioning(str(directory)):
            os.kill(pid, signal.SIGKILL)  # only after a failure: the tests assert there are none


async def with_a_running_game(
    directory: Path, http: aiohttp.ClientSession, receiver: conftest.Receiver
) -> int:
    """Through the lab's settings files only: a container with an agent running a game; the game's pid."""
    lab_settings = settings.load(directory / settings.ENV_FILE)
    proxmox = conftest.fast(lab_settings)
    try:
        server = conftest.spec(1201)
        await proxmox.ensure_container(server)
        await proxmox.start(server.ref)
    finally:
        await proxmox.close()
    url = f"http://{server.ip.split('/')[0]}:{lab_settings.agent_port}"

    async def agent_answers() -> bool:
        return await conftest.answers(http, url)

    await helpers.assert_eventually(agent_answers, timeout=15, message=f"an agent at {url}")
    game_port = 25565 if lab_settings.agent_port != 25565 else 25566
    ready = await conftest.run_game(http, lab_settings, directory, url, receiver.base_url, game_port)
    pid: int = ready["game"]["pid"]
    return pid


async def test_sigterm_stops_the_lab_with_every_agent_and_game(
    lab_process: tuple[asyncio.subprocess.Process, Path],
    http: aiohttp.ClientSession,
    receiver: conftest.Receiver,
) -> None:
    process, directory = lab_process
    game = await with_a_running_game(directory, http, receiver)
    children = [pid for pid in conftest.pids_mentioning(str(directory)) if pid != process.pid]
    assert game in children
    assert len(children) == 2, "an agent and its game"

    process.send_signal(signal.SIGTERM)
    assert await asyncio.wait_for(process.wait(), 30) == 0
    assert conftest.pids_mentioning(str(directory)) == [], "nothing outlives the lab"
    assert receiver.states[-1] == "stopped", "the agents were stopped cleanly, and could say so"


async def test_a_killed_lab_takes_its_agents_and_games_along(
    lab_process: tuple[asyncio.subprocess.Process, Path],
    http: aiohttp.ClientSession,
    receiver: conftest.Receiver,
) -> None:
    process, directory = lab_process
    game = await with_a_running_game(directory, http, receiver)
    children = [pid for pid in conftest.pids_mentioning(str(directory)) if pid != process.pid]
    assert game in children

    process.kill()  # SIGKILL: the lab runs no cleanup at all
    await process.wait()

    async def all_gone() -> bool:
        return not any(processes.alive(pid) for pid in children)

    await helpers.assert_eventually(all_gone, timeout=5, message=f"agent and game {children} of a killed lab")
    assert conftest.pids_mentioning(str(directory)) == []
