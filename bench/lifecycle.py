"""Whole lifecycles per second: N servers through create -> running -> delete, against the commit rate.

What runs. One replica in this process (`bench.rig.in_process`: the service's default settings, a
scratch database, a lab whose fakepve tasks take no time and whose stand-in game needs no warm-up).
`--concurrency` workers each take the next server: POST /v1/servers, wait until it is `running`,
DELETE it, wait until it is `deleted`. Every running container has a real agent process and a game
process, which is why the concurrency is bounded. A worker learns states from one `GET /v1/stream`
WebSocket (the product's own way to follow servers; the benchmark adds no polling load), and reads
the server over REST only if it has heard nothing for a while.

The figures. Servers per second and transitions per second over the wall time from the first POST to
the last `deleted`; transitions are counted in the journal (one row per durable state change, the
first `request` entry included). Create -> running latency two ways: from the journal (the `at` of
the `running` entry minus that of the first entry; `at` is the writing transaction's start) and as
the client saw it (POST sent -> `running` event received). Where the time goes: the median time
spent in each state, from consecutive journal entries, and CPU use of this process (replica, lab,
client), of its children (agents and games) and of the whole machine. The control plane's own cost
per transition: the database transactions committed in the scratch database (only the replica talks
to it) and the CPU its PostgreSQL backends used (`/proc`, when the server runs on this machine).

The baseline, in the same run, before and after the lifecycles: the PostgreSQL single-row durable
commit rate at the same concurrency, i.e. `--concurrency` connections each committing one-row
INSERTs into a scratch table in a loop for `--baseline-seconds`, `synchronous_commit = on`. One commit
is the physical ceiling for one durable transition. The ratio quoted is transitions/s over the mean
of the two baseline rates; the target is at least 0.5. The exit status is 1 when it is missed or any
server failed to reach `running` or `deleted`.

    .venv/bin/python -m bench.lifecycle [--servers 200] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import itertools
import os
import statistics
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

import aiohttp

from bench import _cpu, common, rig
from bench.common import machine, p99, percentile
from storage import database

TARGET_RATIO = 0.5
WAIT_TIMEOUT = 300.0  # seconds one server may take to reach a state before the run is a failure
# Backends publish their statistics at most once a second while busy.
STATS_FLUSH = 1.5
QUIET = 5.0  # seconds without a stream event for a server before its worker reads it over REST
STREAM_TIMEOUT = aiohttp.ClientWSTimeout(ws_receive=None, ws_close=10.0)
FAILED = frozenset({"failed.provisioning", "failed.starting", "failed.stopping"})


class Watcher:
    """Follows `/v1/stream` and wakes the worker waiting for a server (resuming by cursor if cut)."""

    def __init__(self, stand: rig.Stand) -> None:
        self._stand = stand
        self.state: dict[str, str] = {}
        self.arrived: dict[tuple[str, str], float] = {}
        self._changed: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
        self._cursor: str | None = None
        self.connected = asyncio.Event()
        self.reconnects = 0

    async def run(self) -> None:
        headers = {"Authorization": f"Bearer {self._stand.tokens[rig.TENANT]}"}
        while True:
            query = "" if self._cursor is None else f"?since={self._cursor}"
            try:
                async with self._stand.http.ws_connect(
                    f"{self._stand.base_url}/v1/stream{query}", headers=headers, timeout=STREAM_TIMEOUT
                ) as ws:
                    async for message in ws:
                        if message.type is aiohttp.WSMsgType.TEXT:
                            self._handle(message.json())
            except (aiohttp.ClientError, TimeoutError):
                pass  # resumed below from the last cursor
            self.reconnects += 1
            await asyncio.sleep(0.1)

    def _handle(self, event: dict[str, Any]) -> None:
        self._cursor = event.get("cursor", self._cursor)
        if event["type"] == "hello":
            self.connected.set()
        if event["type"] != "server.state":
            return
        server_id, state = event["server_id"], event["to"]
        self.state[server_id] = state
        self.arrived.setdefault((server_id, state), time.perf_counter())
        self._changed[server_id].set()

    async def wait(self, server_id: str, targets: frozenset[str]) -> str:
        """The first of `targets` the server reaches; RuntimeError after WAIT_TIMEOUT."""
        deadline = time.monotonic() + WAIT_TIMEOUT
        changed = self._changed[server_id]
        while True:
            state = self.state.get(server_id)
            if state in targets:
                return state
            if time.monotonic() > deadline:
                raise RuntimeError(f"server {server_id} did not reach {sorted(targets)}; last seen {state}")
            changed.clear()
            try:
                await asyncio.wait_for(changed.wait(), QUIET)
            except TimeoutError:
                status, answer = await self._stand.call("GET", f"/v1/servers/{server_id}")
                if status == 200 and answer["state"] in targets:
                    self.arrived.setdefault((server_id, answer["state"]), time.perf_counter())
                    return str(answer["state"])


async def lifecycle(stand: rig.Stand, watcher: Watcher, index: int) -> dict[str, Any]:
    """One server from POST to `deleted`; what happened to it, with the client's timings."""
    sent = time.perf_counter()
    status, answer = await stand.call(
        "POST", "/v1/servers", json=rig.body(f"life-{index}"), headers={"Idempotency-Key": str(uuid.uuid4())}
    )
    if status != 202:
        raise RuntimeError(f"create answered {status}: {answer}")
    server_id = answer["id"]
    reached = await watcher.wait(server_id, FAILED | {"running"})
    status, answer = await stand.call("DELETE", f"/v1/servers/{server_id}")
    if status != 202:
        raise RuntimeError(f"delete of {server_id} answered {status}: {answer}")
    await watcher.wait(server_id, frozenset({"deleted"}))
    running = watcher.arrived.get((server_id, "running"))
    return {
        "id": server_id,
        "reached": reached,
        "client_latency": None if running is None else running - sent,
    }


async def drive(stand: rig.Stand, n: int, concurrency: int) -> tuple[list[dict[str, Any]], float]:
    watcher = Watcher(stand)
    follower = asyncio.create_task(watcher.run(), name="bench:stream")
    await asyncio.wait_for(watcher.connected.wait(), 30)
    gate = asyncio.Semaphore(concurrency)
    done: list[dict[str, Any]] = []

    async def bounded(index: int) -> None:
        async with gate:
            done.append(await lifecycle(stand, watcher, index))
            if len(done) % max(1, n // 10) == 0:
                print(f"    {len(done):,}/{n:,} deleted ({time.perf_counter() - start:.1f} s)", flush=True)

    start = time.perf_counter()
    try:
        await asyncio.gather(*(bounded(index) for index in range(n)))
    finally:
        follower.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await follower
    return done, time.perf_counter() - start


# --- the baseline -------------------------------------------------------------------------------


async def commit_rate(url: str, concurrency: int, seconds: float) -> float:
    """Durable single-row commits per second over `concurrency` connections (each INSERT commits)."""
    setup = await database.connect(url)
    try:
        await setup.execute(
            "CREATE TABLE IF NOT EXISTS bench_commits (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, "
            "writer integer NOT NULL, at timestamptz NOT NULL DEFAULT now())"
        )
    finally:
        await setup.close()
    conns = [
        await database.connect(url, server_settings={"synchronous_commit": "on"}) for _ in range(concurrency)
    ]
    counts = [0] * concurrency
    try:
        for conn in conns:  # prepare the statement outside the measured window
            await conn.execute("INSERT INTO bench_commits (writer) VALUES ($1)", -1)
        deadline = time.perf_counter() + seconds

        async def writer(number: int) -> None:
            while time.perf_counter() < deadline:
                await conns[number].execute("INSERT INTO bench_commits (writer) VALUES ($1)", number)
                counts[number] += 1

        start = time.perf_counter()
        await asyncio.gather(*(writer(number) for number in range(concurrency)))
        elapsed = time.perf_counter() - start
    finally:
        for conn in conns:
            await conn.close()
    return sum(counts) / elapsed


# --- what the journal says ----------------------------------------------------------------------


async def database_commits(stand: rig.Stand) -> int:
    """Transactions committed in the scratch database so far (PostgreSQL's cumulative statistics)."""
    async with stand.pool.acquire() as conn:
        count: int = await conn.fetchval(
            "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
        )
        return count


async def journal_figures(stand: rig.Stand) -> dict[str, Any]:
    async with stand.pool.acquire() as conn:
        rows = await conn.fetch("SELECT server_id, seq, to_state, at FROM journal ORDER BY server_id, seq")
    by_server: dict[Any, list[Any]] = collections.defaultdict(list)
    for row in rows:
        by_server[row["server_id"]].append(row)
    in_state: dict[str, list[float]] = collections.defaultdict(list)
    to_running: list[float] = []
    for entries in by_server.values():
        for entry, following in itertools.pairwise(entries):
            in_state[entry["to_state"]].append((following["at"] - entry["at"]).total_seconds())
        running = [entry for entry in entries if entry["to_state"] == "running"]
        if running:
            to_running.append((running[0]["at"] - entries[0]["at"]).total_seconds())
    return {
        "transitions": len(rows),
        "servers": len(by_server),
        "in_state": in_state,
        "to_running": to_running,
    }


async def backend_cpu(stand: rig.Stand) -> dict[int, float] | None:
    """CPU seconds so far of each PostgreSQL backend connected to the scratch database: the control
    plane's own database work (the client and the lab use none). None when the server's processes
    are not visible here (another machine, another PID namespace)."""
    async with stand.pool.acquire() as conn:
        pids = await conn.fetch("SELECT pid FROM pg_stat_activity WHERE datname = current_database()")
    used: dict[int, float] = {}
    for row in pids:
        try:
            used[row["pid"]] = _cpu.cpu_seconds(row["pid"])
        except OSError:
            return None
    return used


def busy_jiffies() -> tuple[int, int]:
    """(busy, total) CPU time of the whole machine so far, from /proc/stat."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


# --- the report ---------------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{seconds * 1000:9.0f} ms"


def report(
    n: int,
    done: list[dict[str, Any]],
    wall: float,
    journal: dict[str, Any],
    rates: Sequence[float],
    cpu: dict[str, float],
    commits_made: int,
) -> bool:
    failed = [item for item in done if item["reached"] != "running"]
    servers_per_s = len(done) / wall
    transitions_per_s = journal["transitions"] / wall
    commits = statistics.mean(rates)
    ratio = transitions_per_s / commits
    client = [item["client_latency"] for item in done if item["client_latency"] is not None]
    print(f"\nresults ({len(done):,} of {n:,} servers deleted, {len(failed)} never running)")
    print(f"  wall time                          {wall:9.1f} s")
    print(f"  servers per second                 {servers_per_s:9.2f}")
    transitions = journal["transitions"]
    print(f"  transitions in the journal         {transitions:9,}  ({transitions / n:.1f} per server)")
    print(f"  transitions per second             {transitions_per_s:9.1f}")
    print(
        f"  durable commits per second (base)  {commits:9.1f}  (before {rates[0]:.1f}, after {rates[1]:.1f})"
    )
    print(f"  ratio transitions/s / commits/s    {ratio:9.4f}")
    print(
        f"  database transactions in the run   {commits_made:9,}  ({commits_made / transitions:.1f} per "
        "transition; pg_stat_database.xact_commit, read-only ones included)"
    )
    database_cpu = cpu.get("database")
    print(
        f"  the control plane per transition   {commits_made / transitions:9.1f} transactions, "
        + (
            "PostgreSQL CPU not visible from here"
            if database_cpu is None
            else f"{database_cpu / transitions * 1000:.2f} ms of PostgreSQL CPU (its backends: "
            f"{database_cpu:.1f} CPU-s)"
        )
    )
    print("\ncreate -> running latency       p50          p99          max")
    for label, samples in (
        ("journal (request -> running)", journal["to_running"]),
        ("client (POST -> event)", client),
    ):
        if samples:
            print(f"  {label:28}{ms(percentile(samples, 0.5))}{ms(p99(samples))}{ms(max(samples))}")
    print(
        "\nwhere the time goes: time in each state (journal; share of all servers' request -> deleted time)"
    )
    lifetime = sum(sum(samples) for samples in journal["in_state"].values())
    print(f"  {'state':30}{'median':>12}{'p99':>14}{'share':>9}")
    for state, samples in sorted(journal["in_state"].items(), key=lambda item: -sum(item[1])):
        share = sum(samples) / lifetime
        print(f"  {state:30}{ms(statistics.median(samples))}  {ms(p99(samples))}{share:9.1%}")
    cores = os.cpu_count() or 1
    per_server = cpu["children"] / max(len(done), 1)
    print(
        f"\nCPU over the run: the whole machine {cpu['machine']:.0%} busy of {cores} cores "
        f"({cpu['machine_seconds']:.0f} CPU-s in {wall:.0f} s, other users included)"
    )
    print(
        f"  this process (replica, lab's fakepve and file server, client): {cpu['self']:.1f} CPU-s, "
        f"{cpu['self'] / transitions * 1000:.1f} ms per transition"
    )
    print(
        f"  its children (the lab's agents and games): {cpu['children']:.1f} CPU-s, {per_server:.2f} per "
        f"server; alone they would cap {cores} cores at {cores / max(per_server, 1e-9):.1f} servers/s"
    )
    passed = ratio >= TARGET_RATIO and not failed and len(done) == n
    verdict = "PASS" if passed else "FAIL"
    print(f"\ntarget: transitions/s >= {TARGET_RATIO} x durable commits/s: {verdict} ({ratio:.4f})")
    return passed


async def run(args: argparse.Namespace) -> bool:
    print(f"machine: {machine()}")
    async with rig.in_process(db_pool_size=args.pool_size) as stand:
        async with stand.pool.acquire() as conn:
            pg = {
                name: await conn.fetchval(f"SHOW {name}")
                for name in ("server_version", "synchronous_commit", "fsync", "wal_sync_method")
            }
        print(
            f"run: {args.servers:,} servers, concurrency {args.concurrency}; one in-process replica "
            f"(pool {stand.settings.db_pool_size}, {stand.settings.shards} shards); lab time_scale 0, "
            f"warmup 0; baseline {args.baseline_seconds:.0f} s x 2"
        )
        print("postgres: " + ", ".join(f"{name} {value}" for name, value in pg.items()))
        rates = [await commit_rate(stand.url, args.concurrency, args.baseline_seconds)]
        print(f"  baseline before: {rates[0]:.1f} durable commits/s", flush=True)
        commits_before = await database_commits(stand)
        backends_before = await backend_cpu(stand)
        times, jiffies = os.times(), busy_jiffies()
        done, wall = await drive(stand, args.servers, args.concurrency)
        after_times, after_jiffies = os.times(), busy_jiffies()
        backends_after = await backend_cpu(stand)
        await asyncio.sleep(STATS_FLUSH)
        commits = await database_commits(stand) - commits_before
        rates.append(await commit_rate(stand.url, args.concurrency, args.baseline_seconds))
        print(f"  baseline after: {rates[1]:.1f} durable commits/s", flush=True)
        async with stand.pool.acquire() as conn:
            await conn.execute("DROP TABLE bench_commits")
        journal = await journal_figures(stand)
        await stand.print_health()
    ticks = os.sysconf("SC_CLK_TCK")
    busy, total = after_jiffies[0] - jiffies[0], after_jiffies[1] - jiffies[1]
    cpu: dict[str, float] = {
        "self": after_times.user + after_times.system - times.user - times.system,
        "children": after_times.children_user
        + after_times.children_system
        - times.children_user
        - times.children_system,
        "machine": busy / total if total else 0.0,
        "machine_seconds": busy / ticks,
    }
    if backends_before is not None and backends_after is not None:
        # A backend that ended during the run is missed; the replica's pool keeps its connections.
        cpu["database"] = sum(used - backends_before.get(pid, 0.0) for pid, used in backends_after.items())
    return report(args.servers, done, wall, journal, rates, cpu, commits)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument(
        "--servers", type=int, default=200, help="servers taken through a lifecycle (default 200)"
    )
    parser.add_argument("--concurrency", type=int, default=32, help="lifecycles at once (default 32)")
    parser.add_argument(
        "--baseline-seconds", type=float, default=5.0, help="length of each commit-rate baseline (default 5)"
    )
    rig.add_pool_size(parser)
    args = parser.parse_args(argv)
    return 0 if asyncio.run(run(args)) else 1


if __name__ == "__main__":
    sys.exit(common.entry("bench.lifecycle", main))
