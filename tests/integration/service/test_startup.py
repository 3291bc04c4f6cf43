"""server.py as a user runs it: it migrates, serves health and readiness, and fails in one line."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from storage import database
from tests import helpers

ROOT = Path(__file__).resolve().parents[3]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZLH_") and k != "DATABASE_URL"}
    env.update(extra)
    return env


def run_failing(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "server.py", *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def service(db_url: str, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "server.py", "--port", str(port)],
        cwd=ROOT,
        env=environment(DATABASE_URL=db_url, ZLH_DATA_DIR=str(tmp_path)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    yield f"http://127.0.0.1:{port}"
    proc.terminate()
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    assert "Traceback" not in output, output


async def test_serves_health_and_readiness(service: str) -> None:
    async with aiohttp.ClientSession() as session:

        async def ready() -> bool:
            try:
                async with session.get(f"{service}/readyz") as response:
                    return response.status == 200
            except aiohttp.ClientConnectionError:
                return False

        await helpers.assert_eventually(ready, timeout=30, message="service never became ready")
        async with session.get(f"{service}/healthz") as response:
            assert response.status == 200
            assert (await response.json())["status"] == "ok"
        async with session.get(f"{service}/no-such-page") as response:
            assert response.status == 404
            assert response.content_type == "application/problem+json"


async def test_readiness_fails_while_migrations_are_pending(service: str, db_url: str) -> None:
    async with aiohttp.ClientSession() as session:

        async def status() -> int:
            try:
                async with session.get(f"{service}/readyz") as response:
                    return response.status
            except aiohttp.ClientConnectionError:
                return 0

        async def is_ready() -> bool:
            return await status() == 200

        await helpers.assert_eventually(is_ready, timeout=30, message="service never became ready")
        conn = await database.connect(db_url)
        try:
            await conn.execute("DELETE FROM schema_migrations")
        finally:
            await conn.close()
        async with session.get(f"{service}/readyz") as response:
            assert response.status == 503
            assert "pending" in (await response.json())["reason"]


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({"ZLH_PROT": "8080"}, "unknown setting ZLH_PROT"),
        ({"ZLH_PORT": "eighty"}, "ZLH_PORT='eighty' is invalid"),
        ({"DATABASE_URL": "postgresql://nobody@127.0.0.1:1/none"}, "cannot reach the database"),
    ],
)
async def test_bad_configuration_is_one_clear_line(env: dict[str, str], expected: str) -> None:
    result = await asyncio.to_thread(run_failing, environment(**env))
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
