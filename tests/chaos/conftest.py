"""Fixtures for chaos tests: several real `server.py` replicas on one database and one lab.

`Deployment` starts replicas as processes (each logging to a file under tmp_path), learns their
replica ids from the `replicas` table, reads the shard leases and each replica's `/metrics`, and
runs a `LeaseSampler` from the first replica on: a background task that snapshots `pg_locks` and
`shard_leases` every 50 ms, so a test can assert that no shard ever had two holders, however briefly.
The fixture's teardown ends every process it started (SIGCONT before SIGTERM, SIGKILL as a last
resort), whatever state the test left it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import signal
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncpg
import pytest

from storage import database
from tests import helpers
from tests.e2e import harness
from zlh_actors.lab import world
from zlh_actors.runtime import ownership, shards

SHARDS = 8  # what harness.environment_for configures
LEASE_TIMEOUT = 1.5
SAMPLE_INTERVAL = 0.05

# One snapshot: every shard's lease row, and the sessions holding its advisory lock in this database.
SNAPSHOT = """
WITH held AS (
    SELECT k.objid::integer AS shard, k.pid, coalesce(a.application_name, '?') AS app
    FROM pg_locks k LEFT JOIN pg_stat_activity a ON a.pid = k.pid
    WHERE k.locktype = 'advisory' AND k.classid::bigint = $1::bigint AND k.objsubid = 2 AND k.granted
      AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT l.shard, l.epoch, l.owner,
       coalesce((SELECT array_agg(h.app ORDER BY h.pid) FROM held h WHERE h.shard = l.shard), '{}') AS holders
FROM shard_leases l ORDER BY l.shard
"""


@dataclasses.dataclass(frozen=True)
class Lease:
    epoch: int
    owner: uuid.UUID | None


class LeaseSampler:
    """Snapshots lock holders and lease rows every `SAMPLE_INTERVAL` and records every violation.

    Violations: a shard whose advisory lock is granted to more than one session; a lock held by a
    session that is not a lease connection (a pooled connection would drop it on release); a
    shard's epoch going down; a shard passing from one owner to another without a new epoch.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self.samples = 0
        self.violations: list[str] = []
        self.changes: list[tuple[float, int, int, uuid.UUID | None]] = []  # (time, shard, epoch, owner)
        self._last: dict[int, Lease] = {}
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        conn = await database.connect(self._url)
        self._task = asyncio.create_task(self._run(conn), name="chaos:lease-sampler")

    async def _run(self, conn: database.Connection) -> None:
        try:
            while True:
                await self._sample(conn)
                await asyncio.sleep(SAMPLE_INTERVAL)
        finally:
            await conn.close()

    async def _sample(self, conn: database.Connection) -> None:
        rows = await conn.fetch(SNAPSHOT, shards.LOCK_NAMESPACE)
        now = time.monotonic()
        self.samples += 1
        for row in rows:
            shard, holders = row["shard"], list(row["holders"])
            lease = Lease(row["epoch"], row["owner"])
            if len(holders) > 1:
                self.violations.append(f"shard {shard} locked by {len(holders)} sessions at once: {holders}")
            for app in holders:
                if not app.startswith(ownership.LEASE_APP):
                    self.violations.append(f"shard {shard} locked by a session that is not a lease connection: {app}")
            before = self._last.get(shard)
            if before is not None:
                if lease.epoch < before.epoch:
                    self.violations.append(f"shard {shard} epoch went down: {before.epoch} -> {lease.epoch}")
                if (
                    before.owner is not None
                    and lease.owner is not None
                    and lease.owner != before.owner
                    and lease.epoch <= before.epoch
                ):
                    self.violations.append(
                        f"shard {shard} passed from {before.owner} to {lease.owner} under epoch {lease.epoch}"
                    )
            if before != lease:
                self.changes.append((now, shard, lease.epoch, lease.owner))
            self._last[shard] = lease

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def assert_clean(self, *, min_samples: int) -> None:
        assert self._task is None or not self._task.done() or self._task.cancelled(), "sampler died"
        if self._task is not None and self._task.done() and not self._task.cancelled():
            raise AssertionError(f"the lease sampler failed: {self._task.exception()!r}")
        assert self.samples >= min_samples, f"only {self.samples} lock snapshots were taken"
        assert self.violations == [], "\n".join(self.violations[:20])


class Replica:
    """One `server.py` process of the deployment."""

    def __init__(self, name: str, process: harness.ReplicaProcess) -> None:
        self.name = name
        self.process = process
        self.id: uuid.UUID | None = None
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

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

    def tail(self, chars: int = 4000) -> str:
        try:
            text = self.process.log_path.read_text(errors="replace")
        except OSError as exc:
            return f"<no log: {exc}>"
        return f"--- {self.name} (pid {self.pid}, port {self.process.port}) log tail ---\n{text[-chars:]}"

    def log(self) -> str:
        return self.process.log_path.read_text(errors="replace")

    async def metrics(self) -> dict[str, float]:
        """The replica's gauges and counters without labels, by name."""
        async with self._http.get(f"{self.url}/metrics") as response:
            assert response.status == 200, f"{self.name} /metrics: {response.status}"
            text = await response.text()
        found: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, _, value = line.partition(" ")
                found[name] = float(value)
        return found

    async def metric(self, name: str) -> float:
        return (await self.metrics())[name]

    async def close(self) -> None:
        await self._http.close()
        await self.process.close()


class Deployment:
    """Replicas (real processes) sharing one database and one lab."""

    def __init__(self, lab: world.Lab, url: str, pool: asyncpg.Pool, logs: Path, tokens: dict[str, str]) -> None:
        self.lab = lab
        self.url = url
        self.pool = pool
        self.logs = logs
        self.tokens = tokens
        self.replicas: list[Replica] = []
        self.sampler = LeaseSampler(url)
        self._controls: list[harness.Control] = []

    async def start(self, count: int) -> list[Replica]:
        """Start `count` replicas at once; return them once each serves HTTP and is registered."""
        if not self.replicas:
            await self.sampler.start()
        started = []
        for _ in range(count):
            name = f"r{len(self.replicas)}"
            port = harness.free_port()
            env = harness.environment_for(self.lab, self.url, port)
            replica = Replica(name, harness.ReplicaProcess(env, port, self.logs / f"{name}.log"))
            self.replicas.append(replica)
            started.append(replica)
        for replica in started:
            await replica.process.ready(timeout=60)
        for replica in started:
            replica.id = await self._registered(replica)
        return started

    async def _registered(self, replica: Replica) -> uuid.UUID:
        found: list[uuid.UUID] = []

        async def registered() -> bool:
            row = await self.pool.fetchval(
                "SELECT id FROM replicas WHERE http_port = $1 AND pid = $2", replica.process.port, replica.pid
            )
            if row is not None:
                found.append(row)
            return bool(found)

        await helpers.assert_eventually(registered, timeout=30, message=f"{replica.name} never registered")
        return found[0]

    def control(self, *via: Replica) -> harness.Control:
        """An HTTP client that talks to the given replicas (round robin by the `replica` argument)."""
        client = harness.Control([replica.url for replica in via], self.tokens, self.lab, self.pool)
        self._controls.append(client)
        return client

    def by_id(self, replica_id: uuid.UUID | None) -> Replica | None:
        return next((replica for replica in self.replicas if replica.id == replica_id), None)

    async def leases(self) -> dict[int, Lease]:
        rows = await self.pool.fetch("SELECT shard, epoch, owner FROM shard_leases ORDER BY shard")
        return {row["shard"]: Lease(row["epoch"], row["owner"]) for row in rows}

    async def owned_by(self, replica: Replica) -> dict[int, int]:
        """shard -> epoch of the leases recorded for `replica`."""
        return {shard: lease.epoch for shard, lease in (await self.leases()).items() if lease.owner == replica.id}

    async def states(self) -> dict[uuid.UUID, tuple[str, int]]:
        """server id -> (state, shard) for every server."""
        rows = await self.pool.fetch("SELECT id, state, zlh_shard(id, $1) AS shard FROM servers", SHARDS)
        return {row["id"]: (row["state"], row["shard"]) for row in rows}

    async def journal_epochs(self) -> dict[uuid.UUID, list[tuple[int, int, str, str]]]:
        """server id -> [(seq, epoch, event, to_state)] in seq order (entries written by actors)."""
        rows = await self.pool.fetch(
            "SELECT server_id, seq, epoch, event, to_state FROM journal ORDER BY server_id, seq"
        )
        found: dict[uuid.UUID, list[tuple[int, int, str, str]]] = {}
        for row in rows:
            found.setdefault(row["server_id"], []).append(
                (row["seq"], row["epoch"], row["event"], row["to_state"])
            )
        return found

    def tails(self, chars: int = 2500) -> str:
        return "\n".join(replica.tail(chars) for replica in self.replicas)

    async def close(self) -> None:
        await self.sampler.stop()
        for client in self._controls:
            await client.close()
        # Frozen replicas first get SIGCONT (ReplicaProcess.close), then SIGTERM; all at once.
        await asyncio.gather(*(replica.close() for replica in self.replicas), return_exceptions=True)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[world.Lab]:
    async with world.Lab(tmp_path / "lab", time_scale=0.02, warmup=0.3) as running:
        yield running


@pytest.fixture
async def deployment(
    lab: world.Lab, db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[Deployment]:
    made = await harness.prepare_database(lab, db_url)
    logs = tmp_path / "replicas"
    logs.mkdir()
    running = Deployment(lab, db_url, pool, logs, made)
    try:
        yield running
    finally:
        await running.close()
