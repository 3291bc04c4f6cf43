"""Control-plane replicas as real `server.py` processes against a lab: for tests, chaos runs and benchmarks.

`prepare_database` readies a migrated database for a lab (pins its launchers, makes tokens);
`environment_for` is a replica's environment; `ReplicaProcess` starts one, waits for it to be
ready, and signals it (kill -9, SIGSTOP/SIGCONT, SIGTERM) as the caller needs.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Protocol

import aiohttp

from storage import database, tokens
from zlh_actors import operator_cli
from zlh_actors.lab import settings as lab_settings
from zlh_actors.lab import world

ROOT = Path(__file__).resolve().parents[2]
POLL_INTERVAL = 0.05


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def environment_for(lab: world.Lab, url: str, port: int, **extra: str) -> dict[str, str]:
    """The environment of a `server.py` replica against this lab and database (fast test timings)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ZLH_") and k != "DATABASE_URL"}
    env.update(
        DATABASE_URL=url,
        ZLH_ENV_FILE=str(lab.env_file),
        ZLH_PORT=str(port),
        ZLH_ALLOW_HTTP_URLS="true",
        ZLH_SHARDS="8",
        ZLH_HEARTBEAT_INTERVAL="0.2",
        ZLH_LEASE_TIMEOUT="1.5",
        ZLH_STEP_TIMEOUT="30",
        ZLH_INSTALL_TIMEOUT="30",
        ZLH_PVE_LOCK_WAIT="2",
        ZLH_LOG_LEVEL="INFO",
    )
    env.update(extra)
    return env


class _LabFiles(Protocol):
    """Where a lab keeps its files: a `world.Lab`, or one running in a process of its own."""

    @property
    def directory(self) -> Path: ...


async def prepare_database(
    lab: _LabFiles, url: str, tenants: tuple[str, ...] = ("alpha", "beta")
) -> dict[str, str]:
    """Pin the lab's launchers and make a user token per tenant plus an admin token ("admin")."""
    conn = await database.connect(url)
    try:
        async with conn.transaction():
            pins = json.loads((lab.directory / lab_settings.LAUNCHERS_FILE).read_text())
            await operator_cli.pin_all(conn, pins)
            made = {tenant: (await tokens.create(conn, tenant, "user"))[1] for tenant in tenants}
            made["admin"] = (await tokens.create(conn, "ops", "admin"))[1]
    finally:
        await conn.close()
    return made


class ReplicaProcess:
    """A real `server.py` replica, to be killed, frozen or stopped."""

    def __init__(self, env: dict[str, str], port: int, log_path: Path) -> None:
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self._log = log_path.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(ROOT / "server.py")],
            cwd=ROOT,
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    async def ready(self, timeout: float = 30.0) -> None:
        """Wait until /readyz answers 200; raise RuntimeError if the process exits or time runs out."""
        deadline = time.monotonic() + timeout
        async with aiohttp.ClientSession() as session:
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"replica exited: {self.log_path.read_text()[-2000:]}")
                try:
                    async with session.get(f"{self.url}/readyz") as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"replica {self.port} not ready within {timeout}s")
                await asyncio.sleep(POLL_INTERVAL)

    def signal(self, signum: signal.Signals) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signum)

    async def wait_exit(self, timeout: float = 30.0) -> int:
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"replica {self.port} did not exit within {timeout}s")
            await asyncio.sleep(POLL_INTERVAL)
        return self.proc.returncode

    async def close(self) -> None:
        """SIGTERM (after SIGCONT, in case it is frozen), SIGKILL after 30 s or if cancelled meanwhile."""
        try:
            if self.proc.poll() is None:
                self.signal(signal.SIGCONT)
                self.signal(signal.SIGTERM)
                await self.wait_exit(30)
        except (RuntimeError, asyncio.CancelledError) as exc:
            self.proc.kill()
            self.proc.wait()
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            self._log.close()


class Replica:
    """A replica process under a name, for the people reading a run's output and logs."""

    def __init__(self, name: str, process: ReplicaProcess) -> None:
        self.name = name
        self.process = process

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def alive(self) -> bool:
        return self.process.proc.poll() is None

    def signal(self, signum: signal.Signals) -> None:
        self.process.signal(signum)

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    def tail(self, chars: int = 4000) -> str:
        """The end of its log, headed with its name, pid and port."""
        try:
            text = self.log()
        except OSError as exc:
            text = f"<no log: {exc}>"
        return f"--- {self.name} (pid {self.pid}, port {self.process.port}) log tail ---\n{text[-chars:]}"
