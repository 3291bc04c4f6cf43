"""What the service benchmarks stand on: a scratch database, a lab, and one replica in this process.

    async with rig.in_process() as stand:
        await stand.call("POST", "/v1/servers", json=..., headers={"Idempotency-Key": ...})

The database is one of the benchmark's own (`zlh_actors.lab.scratchdb.scratch`: on `DATABASE_URL`'s
server, else the development server on 127.0.0.1:5432, else `.zlh/pg`), created and migrated at the
start and dropped (WITH FORCE) at the end, so runs of several engineers never see each other's rows.

The lab runs with `time_scale=0` and no game warm-up: fakepve's tasks complete at once and the
stand-in game answers as soon as it has started, so what remains is the control plane's own work, the
database, and the real agent and game processes. It gets a random loopback /16, like the test labs,
so concurrent labs never share an address. `in_process(lab_apart=True)` runs it in a process of its
own (`python -m zlh_actors.lab`), as Proxmox and the agents run apart from a production replica: in
the replica's process, fakepve's thread takes the interpreter's lock from the replica's event loop
whenever the servers it provisions call it, and the agents' processes are forked from it. Latency
benchmarks want that; lifecycle keeps the lab in its process, to count the agents' and games' CPU.

The replica is `zlh_actors.service.running` with the service's default settings (pool size, shards,
heartbeats, timeouts), pointed at the lab with `lab.settings.applied`, and the process's garbage
collector set as `server.py` sets it (`zlh_actors.gcpolicy`): a benchmark measures what production
would run, not the fast timings the tests use.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import logging
import shutil
import signal
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import common
from storage import database
from zlh_actors import config, gcpolicy, service
from zlh_actors.lab import replicas, scratchdb, world
from zlh_actors.lab import settings as lab_settings

ROOT = Path(__file__).resolve().parent.parent
RETRIES = 8
RETRY_PAUSE = 0.25  # seconds, times the attempt number
TENANT = "alpha"  # `replicas.prepare_database` makes a user token for it
VERSIONS = {"minecraft_version": "1.21.1", "fabric": {"loader": "0.16.14", "installer": "1.0.1"}}


class Warnings(logging.Handler):
    """Counts the replica's warnings and errors by logger instead of printing each one.

    Under overload a replica logs one line per actor it stops (a lost lease stops them all), which
    would bury the benchmark's figures; the count, and one example per logger, say the same."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.counts: collections.Counter[str] = collections.Counter()
        self.examples: dict[str, str] = {}

    def emit(self, record: logging.LogRecord) -> None:
        self.counts[record.name] += 1
        self.examples.setdefault(record.name, record.getMessage()[:160])

    def summary(self) -> list[str]:
        return [
            f"{count:,} from {name}, e.g. {self.examples[name]!r}"
            for name, count in self.counts.most_common()
        ]


@contextlib.asynccontextmanager
async def lab() -> AsyncIterator[world.Lab]:
    """A lab with instant Proxmox tasks and no game warm-up, in a temporary directory removed after."""
    path = Path(tempfile.mkdtemp(prefix="zlh-bench-"))
    try:
        async with world.Lab(path / "lab", time_scale=0, warmup=0, subnet=common.lab_subnet()) as running:
            yield running
    finally:
        shutil.rmtree(path, ignore_errors=True)


@dataclasses.dataclass(frozen=True)
class LabProcess:
    """A lab running in a process of its own: where it keeps its files, and its settings (lab.env)."""

    directory: Path
    settings: lab_settings.LabSettings


LAB_READY = "zlh-lab: ready"
LAB_START_TIMEOUT = 60.0
LAB_STOP_TIMEOUT = 20.0


@contextlib.asynccontextmanager
async def lab_process() -> AsyncIterator[LabProcess]:
    """`lab`, in a process of its own (`python -m zlh_actors.lab`), stopped and removed after."""
    path = Path(tempfile.mkdtemp(prefix="zlh-bench-"))
    directory = path / "lab"
    with (path / "lab.log").open("w") as log_file:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "zlh_actors.lab",
            "--dir",
            str(directory),
            "--time-scale",
            "0",
            "--warmup",
            "0",
            "--subnet",
            common.lab_subnet(),
            "--log-level",
            "WARNING",
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=log_file,
        )
        try:
            await asyncio.wait_for(_lab_ready(process, path / "lab.log"), LAB_START_TIMEOUT)
            yield LabProcess(directory, lab_settings.load(directory / lab_settings.ENV_FILE))
        finally:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)  # it stops its agents and games first
                try:
                    await asyncio.wait_for(process.wait(), LAB_STOP_TIMEOUT)
                except TimeoutError:
                    process.kill()
                    await process.wait()
            shutil.rmtree(path, ignore_errors=True)


async def _lab_ready(process: asyncio.subprocess.Process, log_path: Path) -> None:
    assert process.stdout is not None
    while True:
        line = (await process.stdout.readline()).decode()
        if not line:
            log = await asyncio.to_thread(log_path.read_text)
            raise RuntimeError(f"the lab exited before it was ready:\n{log[-2000:]}")
        if line.startswith(LAB_READY):
            return


def add_pool_size(parser: argparse.ArgumentParser) -> None:
    """`--pool-size`: the in-process replica's database pool, by default the service's own."""
    parser.add_argument(
        "--pool-size",
        type=int,
        default=config.Settings.db_pool_size,
        help=f"the replica's database pool (default {config.Settings.db_pool_size}, the service's)",
    )


def body(name: str) -> dict[str, Any]:
    """A create request's body for a server of this name (the lab pins these versions)."""
    return {"name": name, **VERSIONS}


@dataclasses.dataclass
class Stand:
    """One replica in this process, its lab and its database, and an HTTP client of it.

    Attributes:
        base_url: the replica's HTTP address.
        tokens: bearer tokens by name ("alpha", "beta": users; "admin").
        settings: the replica's settings.
        url: the scratch database's URL.
        pool: a small pool on it for the benchmark's own reads (journal, counts).
        lab: the lab (in this process, or in one of its own).
        http: a client session (no connection limit).
        warnings: the replica's (and the lab's) warnings so far.
        unavailable: 503 answers `call` retried.
    """

    base_url: str
    tokens: dict[str, str]
    settings: config.Settings
    url: str
    pool: asyncpg.Pool
    lab: world.Lab | LabProcess
    http: aiohttp.ClientSession
    warnings: Warnings
    unavailable: int = 0

    async def lease_takeovers(self) -> int:
        """Shard leases taken more than once: each is a lease this replica lost and took again."""
        async with self.pool.acquire() as conn:
            taken: int = await conn.fetchval(
                "SELECT coalesce(sum(greatest(epoch - 1, 0)), 0) FROM shard_leases"
            )
            return taken

    async def print_health(self) -> None:
        """What went wrong in the replica while it was measured: leases lost, warnings logged."""
        print(f"  shard leases lost and taken again: {await self.lease_takeovers():,}")
        print(f"  503 answers (retried by the benchmark's client): {self.unavailable:,}")
        for line in self.warnings.summary() or ["none"]:
            print(f"  replica warnings: {line}")

    async def call(
        self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        """One request as a well-behaved client makes it: a 503 ("try again") is retried a few times
        with a growing pause, and counted in `unavailable`."""
        sent = {"Authorization": f"Bearer {self.tokens[TENANT]}", **(headers or {})}
        attempt = 1
        while True:
            async with self.http.request(method, self.base_url + path, json=json, headers=sent) as response:
                answer = await response.json(content_type=None)
                if response.status != 503 or attempt == RETRIES:
                    return response.status, answer
            self.unavailable += 1
            await asyncio.sleep(RETRY_PAUSE * attempt)
            attempt += 1


@contextlib.asynccontextmanager
async def in_process(*, lab_apart: bool = False, **overrides: Any) -> AsyncIterator[Stand]:
    """A scratch database, a lab and one replica in this process (`overrides`: settings fields).

    The lab runs in this process too, unless `lab_apart`: then in a process of its own, which keeps
    fakepve off the replica's interpreter lock (for latency), but puts the agents and games out of
    this process's reach for CPU accounting (they are its grandchildren)."""
    warnings = Warnings()
    logging.getLogger().addHandler(warnings)  # also keeps logging's last-resort printer quiet
    running: world.Lab | LabProcess
    try:
        async with contextlib.AsyncExitStack() as stack:
            url = await stack.enter_async_context(scratchdb.scratch("zlh_bench"))
            running = await stack.enter_async_context(lab_process() if lab_apart else lab())
            made = await replicas.prepare_database(running, url)
            values: dict[str, Any] = {"database_url": url, "port": replicas.free_port(), **overrides}
            settings = lab_settings.applied(running.settings, config.Settings(), **values)
            gcpolicy.configure()  # as server.py runs a replica
            async with service.running(settings, url):
                gcpolicy.freeze_startup()
                pool = await database.create_pool(url, max_size=4)
                connector = aiohttp.TCPConnector(limit=0)
                http = aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120))
                try:
                    yield Stand(
                        base_url=f"http://127.0.0.1:{settings.port}",
                        tokens=made,
                        settings=settings,
                        url=url,
                        pool=pool,
                        lab=running,
                        http=http,
                        warnings=warnings,
                    )
                finally:
                    await http.close()
                    await pool.close()
    finally:
        logging.getLogger().removeHandler(warnings)
