"""What the failover and stream benchmarks share: a fresh database, a lab, and `server.py` replicas.

A benchmark must not touch anyone's data and must leave nothing behind, so `fresh_database` creates
a database of its own, migrates it, and drops it at the end: on a PostgreSQL server of the run's own
(in a directory the benchmark names, stopped at the end), or on the one the tests use
(`DATABASE_URL`, else the development server on 127.0.0.1:5432, else `.zlh/test-pg`). A server of
its own is the default of the benchmarks: on a shared server, other people's transactions hold back
the journal's horizon (docs/stream.md, "Limits") and take connections and locks.

`Deployment` runs the replicas as real processes (`zlh_actors.lab.replicas`) against a lab
(`zlh_actors.lab.world.Lab`, on a loopback /16 of its own), each logging to a file in the run's
directory, so a benchmark can kill one with SIGKILL exactly as production loses one.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import urllib.parse
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg

from storage import database, migrate
from zlh_actors import localdb
from zlh_actors.lab import replicas, world

ROOT = Path(__file__).resolve().parent.parent
DEV_SERVER_URL = "postgresql://postgres@127.0.0.1:5432/test"
REGISTER_TIMEOUT = 30.0


def _with_database(url: str, name: str) -> str:
    return urllib.parse.urlunsplit(urllib.parse.urlsplit(url)._replace(path=f"/{name}"))


async def _shared_admin_url() -> str:
    if os.environ.get("DATABASE_URL"):
        return os.environ["DATABASE_URL"]
    try:
        conn = await asyncpg.connect(DEV_SERVER_URL, timeout=3)
    except (TimeoutError, OSError, asyncpg.PostgresError):
        local = await asyncio.to_thread(localdb.ensure_running, ROOT / ".zlh" / "test-pg")
        return await localdb.ensure_database(local)
    await conn.close()
    return DEV_SERVER_URL


@contextlib.asynccontextmanager
async def _server(private: Path | None) -> AsyncIterator[str]:
    """An admin URL: of a private server in `private` (stopped on the way out), else the shared one."""
    if private is None:
        yield await _shared_admin_url()
        return
    server = await asyncio.to_thread(localdb.ensure_running, private)
    try:
        yield server.url("postgres")
    finally:
        if server.started_here:
            await asyncio.to_thread(localdb.stop, server)


@contextlib.asynccontextmanager
async def fresh_database(private: Path | None = None) -> AsyncIterator[str]:
    """The URL of a new, migrated database of this run's own, dropped on the way out.

    With `private`, on a PostgreSQL server of the run's own in that directory: nobody else's
    transactions share its horizon or its locks. Without, on the server the tests use.
    """
    async with _server(private) as admin:
        name = f"zlh_bench_{uuid.uuid4().hex[:12]}"
        conn = await database.connect(admin)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        url = _with_database(admin, name)
        try:
            conn = await database.connect(url)
            try:
                await migrate.migrate(conn)
            finally:
                await conn.close()
            yield url
        finally:
            conn = await database.connect(admin)
            try:
                await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            finally:
                await conn.close()


def subnet() -> str:
    """A loopback /16 of the run's own: labs of concurrent test runs never share an address."""
    return f"127.{random.randint(21, 250)}.0.0/16"


class Replica:
    """One `server.py` process, with the id it registered under."""

    def __init__(self, name: str, process: replicas.ReplicaProcess, replica_id: uuid.UUID) -> None:
        self.name = name
        self.process = process
        self.id = replica_id

    @property
    def url(self) -> str:
        return self.process.url

    @property
    def pid(self) -> int:
        return self.process.proc.pid

    def alive(self) -> bool:
        return self.process.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            text = self.process.log_path.read_text(errors="replace")
        except OSError as exc:
            text = f"<no log: {exc}>"
        return f"--- {self.name} (pid {self.pid}) log tail ---\n{text[-chars:]}"


class Deployment:
    """Replicas (real processes) of one database and one lab. Use with `async with`."""

    def __init__(self, lab: world.Lab, url: str, pool: asyncpg.Pool, directory: Path, **env: str) -> None:
        self.lab = lab
        self.url = url
        self.pool = pool
        self.directory = directory
        self.env = env
        self.replicas: list[Replica] = []
        self._started = 0

    async def start(self) -> Replica:
        """A new replica, once it answers /readyz and has registered in `replicas`."""
        name = f"r{self._started}"
        self._started += 1
        port = replicas.free_port()
        environment = replicas.environment_for(self.lab, self.url, port, **self.env)
        process = replicas.ReplicaProcess(environment, port, self.directory / f"{name}.log")
        try:
            await process.ready(timeout=60)
            replica_id = await self._registered(process)
        except BaseException:
            await process.close()
            raise
        replica = Replica(name, process, replica_id)
        self.replicas.append(replica)
        return replica

    async def _registered(self, process: replicas.ReplicaProcess) -> uuid.UUID:
        deadline = asyncio.get_running_loop().time() + REGISTER_TIMEOUT
        while True:
            found = await self.pool.fetchval(
                "SELECT id FROM replicas WHERE http_port = $1 AND pid = $2", process.port, process.proc.pid
            )
            if isinstance(found, uuid.UUID):
                return found
            if asyncio.get_running_loop().time() > deadline:
                raise RuntimeError(f"replica on port {process.port} never registered")
            await asyncio.sleep(0.05)

    def live(self) -> list[Replica]:
        return [replica for replica in self.replicas if replica.alive()]

    def kill(self, replica: Replica) -> None:
        replica.process.signal(signal.SIGKILL)

    def tails(self) -> str:
        return "\n".join(replica.tail() for replica in self.replicas[-4:])

    async def close(self) -> None:
        await asyncio.gather(*(replica.process.close() for replica in self.replicas), return_exceptions=True)

    async def __aenter__(self) -> Deployment:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
