"""Resident memory of one replica process with many servers in its database, against an empty one.

The question (issue: benchmarks): does a replica's memory stay bounded by the servers it is working
on, not by the servers that exist? Target: under 1 GiB RSS with 100,000 servers in the database,
most of them passivated (no resident actor).

How. For each of two scratch databases, one empty (the baseline) and one holding `servers_in_db`
servers, in the same run and against the same lab:

1. the servers are inserted in bulk, in one transaction of two `INSERT ... SELECT` statements
   (`generate_series`): what `storage.servers.insert` writes for a server created directly in a
   state, i.e. the row and its first journal entry, so the schema's triggers (journal order and
   continuity, state journaled at commit) check every one. They are `stopped` (desired `stopped`)
   with no placement: at rest, so no actor has work, and with no VMID, so the reconciler expects no
   container and sends no drift. The spec is a real create request's;
2. one real `server.py` process starts (`zlh_actors.lab.replicas.ReplicaProcess`) with the
   service's default shards, heartbeat and lease timings; the benchmark waits for /readyz, for every
   shard to be owned, and for two sweeps (each `servers_needing_attention` over all shards), then
   reads RSS ("started"); the query of a sweep is also timed by itself, from the benchmark;
3. one reconciliation pass now (`POST /admin/v1/reconcile`), which reads every live server of its
   shards: RSS again ("reconciled");
4. `--wake` servers get a `stop` command each (32 at a time over HTTP): each wakes its actor,
   which rejects it (409: the server is already stopped; a 202 means the API stopped waiting for the
   answer, which still comes) and stays resident until its idle timeout (30 s: on a slow machine the
   first ones woken may have passivated again by the end); the resident actors are counted
   (`/admin/v1/actors?scope=local`) and RSS is read ("woken").

RSS is `/proc/PID/statm`'s resident pages (`bench.common.rss_bytes`), and the peak is VmHWM from
`/proc/PID/status`. The figure held against the target is the larger of the last RSS and the peak.
"""

from __future__ import annotations

import asyncio
import contextlib
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench import rig
from bench.common import rss_bytes
from storage import database, queries
from zlh_actors import config
from zlh_actors.lab import replicas, scratchdb, world
from zlh_actors.servers import requests

TARGET_BYTES = 1 << 30
SWEEP_WAIT = 11.0  # two sweeps of the replica (`servers.replica.build`'s sweep_interval is 5 s)
WAKE_CONCURRENCY = 32
SWEEP_SAMPLES = 5
PHASES = ("started", "reconciled", "woken")
# The service's own defaults, not the fast timings `replicas.environment_for` sets for tests.
PRODUCTION_TIMINGS = {
    "ZLH_SHARDS": str(config.Settings.shards),
    "ZLH_HEARTBEAT_INTERVAL": str(config.Settings.heartbeat_interval),
    "ZLH_LEASE_TIMEOUT": str(config.Settings.lease_timeout),
    "ZLH_STEP_TIMEOUT": str(config.Settings.step_timeout),
    "ZLH_INSTALL_TIMEOUT": str(config.Settings.install_timeout),
    "ZLH_PVE_LOCK_WAIT": str(config.Settings.pve_lock_wait),
    "ZLH_LOG_LEVEL": "WARNING",
}


def peak_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmHWM for process {pid}")


async def insert_servers(url: str, count: int) -> float:
    """`count` stopped servers with their first journal entries, in one transaction; seconds taken."""
    spec = requests.parse_create(rig.body("bulk"), config.Settings(allow_http_urls=True)).spec()
    start = time.perf_counter()
    conn = await database.connect(url)
    try:
        async with conn.transaction():
            await conn.execute(
                "INSERT INTO servers (id, tenant, name, spec, state, desired_state) "
                "SELECT gen_random_uuid(), $1, 'bulk-' || i, $2::jsonb, 'stopped', 'stopped' "
                "FROM generate_series(1, $3) AS i",
                rig.TENANT,
                spec,
                count,
            )
            await conn.execute(
                "INSERT INTO journal (server_id, seq, from_state, to_state, event, detail) "
                "SELECT id, 1, NULL, 'stopped', 'request', 'bench: inserted in bulk' FROM servers"
            )
        await conn.execute("ANALYZE servers, journal")
    finally:
        await conn.close()
    return time.perf_counter() - start


async def owned_shards(url: str) -> int:
    conn = await database.connect(url)
    try:
        count: int = await conn.fetchval("SELECT count(*) FROM shard_leases WHERE owner IS NOT NULL")
        return count
    finally:
        await conn.close()


async def sweep_seconds(url: str) -> float:
    """The median time of the query a replica's sweep runs every 5 s, over every shard (5 runs)."""
    shard_count = config.Settings.shards
    conn = await database.connect(url)
    try:
        times = []
        for _ in range(SWEEP_SAMPLES):
            start = time.perf_counter()
            await queries.fetch(
                conn,
                "servers_needing_attention",
                shard_count,
                list(range(shard_count)),
            )
            times.append(time.perf_counter() - start)
    finally:
        await conn.close()
    return statistics.median(times)


async def bulk_ids(url: str, count: int) -> list[str]:
    conn = await database.connect(url)
    try:
        rows = await conn.fetch("SELECT id FROM servers ORDER BY random() LIMIT $1", count)
    finally:
        await conn.close()
    return [str(row["id"]) for row in rows]


@contextlib.asynccontextmanager
async def replica(lab: world.Lab, url: str, log_path: Path) -> AsyncIterator[replicas.ReplicaProcess]:
    port = replicas.free_port()
    process = replicas.ReplicaProcess(
        replicas.environment_for(lab, url, port, **PRODUCTION_TIMINGS), port, log_path
    )
    try:
        await process.ready(timeout=120)
        yield process
    finally:
        await process.close()


async def wake(http: aiohttp.ClientSession, base: str, token: str, ids: list[str]) -> dict[int, int]:
    """A `stop` for each server, WAKE_CONCURRENCY at a time; how many answers of each status."""
    gate = asyncio.Semaphore(WAKE_CONCURRENCY)
    statuses: dict[int, int] = {}

    async def one(server_id: str) -> None:
        async with (
            gate,
            http.post(
                f"{base}/v1/servers/{server_id}/stop", headers={"Authorization": f"Bearer {token}"}
            ) as response,
        ):
            await response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1

    await asyncio.gather(*(one(server_id) for server_id in ids))
    return statuses


async def measure_one(lab: world.Lab, servers: int, woken: int, directory: Path) -> dict[str, Any]:
    """The phases' RSS of one replica over a database holding `servers` servers."""
    async with scratchdb.scratch("zlh_bench") as url:
        made = await replicas.prepare_database(lab, url)
        inserted = await insert_servers(url, servers) if servers else 0.0
        ids = await bulk_ids(url, woken) if servers else []
        started = time.perf_counter()
        async with (
            replica(lab, url, directory / f"replica-{servers}.log") as process,
            aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=600)) as http,
        ):
            pid = process.proc.pid
            while await owned_shards(url) < config.Settings.shards:
                if time.perf_counter() - started > 120:
                    raise RuntimeError("the replica did not own every shard within 120 s")
                await asyncio.sleep(0.2)
            shards_after = time.perf_counter() - started
            await asyncio.sleep(SWEEP_WAIT)
            rss = {"started": rss_bytes(pid)}
            admin = {"Authorization": f"Bearer {made['admin']}"}
            begun = time.perf_counter()
            async with http.post(f"{process.url}/admin/v1/reconcile", headers=admin) as response:
                answer = await response.json()
                if response.status != 200:
                    raise RuntimeError(f"reconcile answered {response.status}: {answer}")
            reconcile_seconds = time.perf_counter() - begun
            rss["reconciled"] = rss_bytes(pid)
            begun = time.perf_counter()
            statuses = await wake(http, process.url, made[rig.TENANT], ids)
            wake_seconds = time.perf_counter() - begun
            async with http.get(f"{process.url}/admin/v1/actors?scope=local", headers=admin) as response:
                resident = len((await response.json())["actors"])
            rss["woken"] = rss_bytes(pid)
            peak = peak_bytes(pid)
        sweep = await sweep_seconds(url)
    return {
        "servers": servers,
        "insert_seconds": inserted,
        "shards_seconds": shards_after,
        "reconcile_seconds": reconcile_seconds,
        "drifts": sum(len(report.get("drifts", [])) for report in answer.get("reports", [])),
        "wake_seconds": wake_seconds,
        "wake_statuses": statuses,
        "resident": resident,
        "rss": rss,
        "peak": peak,
        "sweep_seconds": sweep,
    }


async def measure(servers: int, woken: int) -> tuple[dict[str, Any], dict[str, Any]]:
    """(empty database, `servers` in the database): one lab, two replicas one after the other."""
    async with rig.lab() as lab:
        directory = lab.directory.parent
        empty = await measure_one(lab, 0, 0, directory)
        full = await measure_one(lab, servers, woken, directory)
    return empty, full


def mib(value: float) -> str:
    return f"{value / 2**20:8.1f} MiB"


def report(empty: dict[str, Any], full: dict[str, Any], woken: int) -> bool:
    n = full["servers"]
    print(f"\nreplica process RSS (one server.py process), empty database vs {n:,} servers")
    print(f"  {'phase':40}{'empty':>13}{f'{n:,} servers':>16}{'ratio':>9}")
    rows = [
        ("started (ready, all shards, two sweeps)", empty["rss"]["started"], full["rss"]["started"]),
        ("after one reconciliation pass", empty["rss"]["reconciled"], full["rss"]["reconciled"]),
        (f"after waking {woken:,} actors", empty["rss"]["woken"], full["rss"]["woken"]),
        ("peak (VmHWM)", empty["peak"], full["peak"]),
    ]
    for label, a, b in rows:
        print(f"  {label:40}{mib(a):>13}{mib(b):>16}{b / a:8.2f}x")
    grown = full["rss"]["woken"] - empty["rss"]["woken"]
    print(f"  growth over the empty database: {mib(grown).strip()}, {grown / n:.0f} B per server in it")
    print(
        f"  inserting {n:,} servers: {full['insert_seconds']:.1f} s; every shard owned "
        f"{full['shards_seconds']:.1f} s after start (empty: {empty['shards_seconds']:.1f} s)"
    )
    print(
        f"  one reconciliation pass: {full['reconcile_seconds']:.2f} s "
        f"(empty: {empty['reconcile_seconds']:.2f} s), {full['drifts']} drifts"
    )
    print(
        f"  a sweep's query (servers_needing_attention, every shard): {full['sweep_seconds'] * 1000:.1f} "
        f"ms (empty: {empty['sweep_seconds'] * 1000:.1f} ms), median of {SWEEP_SAMPLES}"
    )
    print(
        f"  waking: {full['wake_seconds']:.1f} s, answers {full['wake_statuses']}, "
        f"{full['resident']:,} actors resident afterwards"
    )
    worst = max(full["rss"]["woken"], full["peak"])
    # 409: the actor rejected the stop; 202: it had not answered within the API's wait (it will).
    answered = set(full["wake_statuses"]) <= {409, 202} and sum(full["wake_statuses"].values()) == woken
    passed = bool(worst < TARGET_BYTES and answered)
    verdict = "PASS" if passed else "FAIL"
    print(
        f"\ntarget: replica RSS < {TARGET_BYTES // 2**20} MiB with {n:,} servers in the database: {verdict} "
        f"({mib(worst).strip()}, the larger of the last RSS and the peak)"
    )
    return passed


async def run(servers: int, woken: int) -> bool:
    empty, full = await measure(servers, woken)
    return report(empty, full, woken)
