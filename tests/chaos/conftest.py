"""Fixtures for chaos tests: several real `server.py` replicas on one database and one lab.

`Deployment` starts replicas as processes (each logging to a file under tmp_path), learns their
replica ids from the `replicas` table, reads shard leases, server states and each replica's
`/metrics`. From its first replica on it runs a `LeaseSampler`, a background task that snapshots
`pg_locks` and `shard_leases` every 50 ms, so a test can assert that no shard ever had two lock
holders and no lease ever changed hands without a new epoch, however briefly. The fixture's teardown
ends every process it started (SIGCONT before SIGTERM, SIGKILL as a last resort), whatever state the
test left it in.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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
from zlh_actors.lab import replicas, world
from zlh_actors.runtime import ownership, shards

SHARDS = 8  # what replicas.environment_for configures
SAMPLE_INTERVAL = 0.05
# A lock holder missing from pg_stat_activity: PostgreSQL takes a transaction's activity snapshot once,
# at its first read of it, and pg_locks when it is read, so a session that connected in between holds
# a lock the snapshot does not know.
UNSEEN = "?"
# How long a lease row and the lock may legitimately disagree: between taking a shard's lock and
# recording the new epoch (which waits up to lock_timeout, 1 s, for writes in flight), and between a
# reconnect and re-taking the shards. Longer means the lock no longer guards the lease.
DISAGREEMENT_LIMIT = 2.5

# One snapshot: every shard's lease row, and the sessions holding its advisory lock in this database.
SNAPSHOT = """
WITH held AS (
    SELECT k.objid::integer AS shard, k.pid, coalesce(a.application_name, '?') AS app -- '?': UNSEEN
    FROM pg_locks k LEFT JOIN pg_stat_activity a ON a.pid = k.pid
    WHERE k.locktype = 'advisory' AND k.classid::bigint = $1::bigint AND k.objsubid = 2 AND k.granted
      AND k.database = (SELECT oid FROM pg_database WHERE datname = current_database())
)
SELECT l.shard, l.epoch, l.owner,
       coalesce((SELECT array_agg(h.app ORDER BY h.pid) FROM held h WHERE h.shard = l.shard), '{}')
           AS holders,
       EXISTS (SELECT 1 FROM pg_stat_activity a WHERE a.application_name = $2 || l.owner::text) AS owner_live
FROM shard_leases l ORDER BY l.shard
"""


@dataclasses.dataclass(frozen=True)
class Lease:
    epoch: int
    owner: uuid.UUID | None


@dataclasses.dataclass(frozen=True)
class Change:
    """A lease row as the sampler first saw it."""

    at: float  # time.monotonic()
    shard: int
    epoch: int
    owner: uuid.UUID | None


class LeaseSampler:
    """Snapshots lock holders and lease rows every `SAMPLE_INTERVAL` and records every violation.

    Violations: a shard whose advisory lock is granted to more than one session; a shard lock held
    by a session that is not a lease connection (a pooled one would drop it on release); a shard's
    epoch going down; a shard passing from one owner to another without a new epoch; a lease row
    and the lock disagreeing (the lock held by another replica than the recorded owner, or a live
    owner not holding it) for longer than `DISAGREEMENT_LIMIT`.
    """

    def __init__(self, url: str) -> None:
        self._url = url
        self.samples = 0
        self.violations: list[str] = []
        self.changes: list[Change] = []
        self._last: dict[int, Lease] = {}
        self._last_owned: dict[int, Lease] = {}
        self._disagreeing: dict[int, float] = {}  # shard -> since when (monotonic)
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
        rows = await conn.fetch(SNAPSHOT, shards.LOCK_NAMESPACE, ownership.LEASE_APP)
        now = time.monotonic()
        self.samples += 1
        for row in rows:
            shard, holders = row["shard"], list(row["holders"])
            lease = Lease(row["epoch"], row["owner"])
            if len(holders) > 1:
                self.violations.append(f"shard {shard} locked by {len(holders)} sessions at once: {holders}")
            # UNSEEN: a session that took the lock after this transaction's activity snapshot (a
            # lease connection that just connected); it is named in the next sample.
            self.violations.extend(
                f"shard {shard} locked by a session that is not a lease connection: {app}"
                for app in holders
                if app != UNSEEN and not app.startswith(ownership.LEASE_APP)
            )
            before = self._last.get(shard)
            if before is not None and lease.epoch < before.epoch:
                self.violations.append(f"shard {shard}: epoch went down, {before.epoch} -> {lease.epoch}")
            # Compared with the last owner seen, not the last row: a release leaves the owner empty
            # and the epoch as it was, and the next owner must still bump it.
            previous = self._last_owned.get(shard)
            if (
                lease.owner is not None
                and previous is not None
                and lease.owner != previous.owner
                and lease.epoch <= previous.epoch
            ):
                self.violations.append(
                    f"shard {shard} passed from {previous.owner} to {lease.owner} under epoch {lease.epoch}"
                )
            if before != lease:
                self.changes.append(Change(now, shard, lease.epoch, lease.owner))
            self._last[shard] = lease
            if lease.owner is not None:
                self._last_owned[shard] = lease
            self._agreement(now, shard, lease, holders, row["owner_live"])

    def _agreement(self, now: float, shard: int, lease: Lease, holders: list[str], owner_live: bool) -> None:
        expected = [f"{ownership.LEASE_APP}{lease.owner}"] if lease.owner is not None and owner_live else []
        if holders == expected:
            self._disagreeing.pop(shard, None)
            return
        since = self._disagreeing.setdefault(shard, now)
        if since <= now - DISAGREEMENT_LIMIT:
            self.violations.append(
                f"shard {shard}: lease {lease} (owner live: {owner_live}) but lock held by {holders} "
                f"for {now - since:.1f}s"
            )
            self._disagreeing[shard] = now  # one report per DISAGREEMENT_LIMIT

    def owners_seen(self) -> set[uuid.UUID]:
        return {change.owner for change in self.changes if change.owner is not None}

    async def stop(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def assert_clean(self, *, min_samples: int) -> None:
        assert self._task is not None, "the lease sampler never started"
        if self._task.done():
            raise AssertionError(f"the lease sampler died: {self._task.exception()!r}")
        assert self.samples >= min_samples, f"only {self.samples} lock snapshots were taken"
        assert self.violations == [], "\n".join(self.violations[:20])


class Replica(replicas.Replica):
    """One `server.py` process of the deployment, with its id once registered and its metrics."""

    def __init__(self, name: str, process: replicas.ReplicaProcess) -> None:
        super().__init__(name, process)
        self.id: uuid.UUID | None = None
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5))

    def stopped_by_signal(self) -> bool:
        """The process is in state T (stopped), as after SIGSTOP."""
        with contextlib.suppress(OSError):
            stat = Path(f"/proc/{self.pid}/stat").read_text()
            return stat.rpartition(")")[2].split()[0] == "T"
        return False

    async def metrics(self) -> dict[str, float]:
        """The replica's unlabelled samples, by name."""
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
        await self.process.close()  # SIGCONT, SIGTERM, and SIGKILL if it does not exit in 30 s


class Deployment:
    """Replicas (real processes) sharing one database and one lab."""

    def __init__(
        self, lab: world.Lab, url: str, pool: asyncpg.Pool, logs: Path, tokens: dict[str, str]
    ) -> None:
        self.lab = lab
        self.url = url
        self.pool = pool
        self.logs = logs
        self.tokens = tokens
        self.replicas: list[Replica] = []
        self.sampler = LeaseSampler(url)
        self._controls: list[harness.Control] = []

    async def start(self, count: int, **env: str) -> list[Replica]:
        """Start `count` replicas at once (with `env` on top of the harness's environment); return
        them once each serves HTTP and is registered."""
        if not self.replicas:
            await self.sampler.start()
        started = []
        for _ in range(count):
            name = f"r{len(self.replicas)}"
            port = replicas.free_port()
            environment = replicas.environment_for(self.lab, self.url, port, **env)
            replica = Replica(name, replicas.ReplicaProcess(environment, port, self.logs / f"{name}.log"))
            self.replicas.append(replica)
            started.append(replica)
        for replica in started:
            await replica.process.ready(timeout=60)
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
        """An HTTP client of the given replicas (closed by the fixture)."""
        client = harness.Control([replica.url for replica in via], self.tokens, self.lab, self.pool)
        self._controls.append(client)
        return client

    def by_id(self, replica_id: uuid.UUID | None) -> Replica:
        found = [replica for replica in self.replicas if replica.id == replica_id]
        assert found, f"no replica of this deployment has id {replica_id}"
        return found[0]

    async def leases(self) -> dict[int, Lease]:
        rows = await self.pool.fetch("SELECT shard, epoch, owner FROM shard_leases ORDER BY shard")
        return {row["shard"]: Lease(row["epoch"], row["owner"]) for row in rows}

    async def owned_by(self, replica: Replica) -> dict[int, int]:
        """shard -> epoch of the leases recorded for `replica`."""
        return {
            shard: lease.epoch for shard, lease in (await self.leases()).items() if lease.owner == replica.id
        }

    async def states(self) -> dict[uuid.UUID, tuple[str, int]]:
        """server id -> (state, shard) for every server."""
        rows = await self.pool.fetch("SELECT id, state, zlh_shard(id, $1) AS shard FROM servers", SHARDS)
        return {row["id"]: (row["state"], row["shard"]) for row in rows}

    def tails(self, chars: int = 2500) -> str:
        return "\n".join(replica.tail(chars) for replica in self.replicas)

    async def close(self) -> None:
        await self.sampler.stop()
        for client in self._controls:
            await client.close()
        await asyncio.gather(*(replica.close() for replica in self.replicas), return_exceptions=True)


@pytest.fixture
async def lab(tmp_path: Path) -> AsyncIterator[world.Lab]:
    async with world.Lab(tmp_path / "lab", time_scale=0.02, warmup=0.3, subnet=harness.subnet()) as running:
        yield running


@pytest.fixture
async def deployment(
    lab: world.Lab, db_url: str, pool: asyncpg.Pool, tmp_path: Path
) -> AsyncIterator[Deployment]:
    made = await replicas.prepare_database(lab, db_url)
    logs = tmp_path / "replicas"
    logs.mkdir()
    running = Deployment(lab, db_url, pool, logs, made)
    try:
        yield running
    finally:
        await running.close()
