"""What the failover and stream benchmarks share: a fresh database, a lab, and `server.py` replicas.

A benchmark must not touch anyone's data and must leave nothing behind, so `fresh_database` creates
a database of its own, migrates it, and drops it at the end (`zlh_actors.lab.scratchdb`): on a
PostgreSQL server of the run's own, in the run's directory and stopped at the end, or with
`--shared-database` on the one the tests use (`DATABASE_URL`, else the development server on
127.0.0.1:5432, else `.zlh/pg`). A server of its own is the default of the benchmarks: on a shared
server, other people's transactions hold back the journal's horizon (docs/stream.md, "Limits") and
take connections and locks. `add_options` and `in_directory` are the command line and the run's
directory both benchmarks take.

`Deployment` runs the replicas as real processes (`zlh_actors.lab.replicas`) against a lab
(`zlh_actors.lab.world.Lab`, on a loopback /16 of its own), each logging to a file in the run's
directory, so a benchmark can kill one with SIGKILL exactly as production loses one.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import signal
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import asyncpg

from zlh_actors.lab import replicas, scratchdb, world

ROOT = Path(__file__).resolve().parent.parent
REGISTER_TIMEOUT = 30.0


def add_options(parser: argparse.ArgumentParser, kept: str) -> None:
    """`--shared-database` and `--keep` (`kept`: what the run's directory holds besides the lab)."""
    parser.add_argument(
        "--shared-database",
        action="store_true",
        help="use the tests' PostgreSQL, not a server of the run's own",
    )
    parser.add_argument("--keep", action="store_true", help=f"keep {kept} and the lab directory")


def fresh_database(args: argparse.Namespace, directory: Path) -> contextlib.AbstractAsyncContextManager[str]:
    """The run's database: on a server of its own under `directory` unless `--shared-database`."""
    private = None if args.shared_database else directory / "pg"
    return scratchdb.scratch("zlh_bench", private=private)


def in_directory(kind: str, keep: bool, run: Callable[[Path], bool]) -> bool:
    """`run` in a new directory `zlh-bench-<kind>-*`, removed afterwards unless kept or the run failed."""
    directory = Path(tempfile.mkdtemp(prefix=f"zlh-bench-{kind}-"))
    passed = False
    try:
        passed = run(directory)
    finally:
        if keep or not passed:
            print(f"logs: {directory}")
        else:
            shutil.rmtree(directory, ignore_errors=True)
    return passed


class Replica(replicas.Replica):
    """One `server.py` process, with the id it registered under."""

    def __init__(self, name: str, process: replicas.ReplicaProcess, replica_id: uuid.UUID) -> None:
        super().__init__(name, process)
        self.id = replica_id


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
