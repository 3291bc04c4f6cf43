"""Takeover after kill -9 of a replica that owns shards, under load, against floors measured in the same run.

The target (issue [6/7]): from the kill to every orphaned shard owned again under a higher epoch,
p99 under 2 s; and no command issued during a takeover is lost.

The deployment. A fresh database on a PostgreSQL server of the run's own (`--shared-database`: the
tests' server), a lab (`zlh_actors.lab.world.Lab`) and `--replicas` real `server.py` processes with
the production lease timings unless told otherwise (`--shards 64`, `--heartbeat 0.5`,
`--lease-timeout 3.0`). `--servers` servers are created through the HTTP API and run in the lab (an
agent and a stand-in game each) before the first kill.

The load, for the whole run: a steady trickle of `--rate` commands a second through a random live
replica's HTTP API, each on a server at rest with nothing pending: stop a running server, start a
stopped one (once its old agent is gone: see tests/chaos/test_replicas.py), now and then delete a
stopped one, and create a new one whenever fewer than `--servers` are live. At each kill, in
addition, every resting server on the victim's shards gets a command through a survivor (the
"burst"): those land in the inbox while nobody owns the shard.

One kill. Wait until the shards are balanced over the live replicas; measure the floor (below);
pick the victim (the replica owning the most servers with work in progress, else the one alive the
longest) and note the shards it owns and their epochs; SIGKILL it. Then, concurrently:

- **takeover**: `shard_leases` is polled every 10 ms until every orphaned shard is owned by a
  survivor with a higher epoch; the figure is the latest `acquired_at` among those shards (set by
  `now()` in the lease's UPDATE) minus the wall-clock instant of the kill, so it does not depend on
  the polling period (the polled time is printed as a check);
- **session gone**: `pg_stat_activity` is polled every 2 ms until the victim's lease connection
  (`zlh-lease:<id>`) is gone: when PostgreSQL itself noticed the dead session and dropped its locks.

A replacement replica is then started, so there is always a replica to kill next time. Each kill
also notes how much of the time the survivors' event loops wanted a core they spent waiting for one
(`bench._cpu`): on a shared, loaded machine that, not the code, is often what a takeover waits on.

The floors. (1) Measured, once per kill, under the same load: a bare process (`bench._holder`)
holds an advisory lock; the benchmark blocks in `pg_advisory_lock` on the same key, kills the holder
with SIGKILL and times how long the lock takes to come free: the least any takeover can take on
this machine. (2) By design (docs/ownership.md): survivors look for dead replicas once per tick,
every `heartbeat` plus the tick's own queries, so the worst case after a kill is one heartbeat
interval plus a few queries ("under 1 s"); the expected wait is half an interval. A frozen or
partitioned replica is the slow case (`lease timeout + 2 x heartbeat`), not measured here.

The check. When the load stops, every command must settle (no command left queued or accepted,
every server at rest): every 202 answer (including those answered "still queued" while the shard
had no owner) names a command that ended done or rejected; every applied command is in its
server's journal exactly once and a rejected one never; no server's journal shows two owners
interleaving (lease epochs never go down in seq order).

    .venv/bin/python -m bench.failover [--kills 20] [--replicas 2] [--servers 6] [--rate 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import random
import statistics
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench import _cpu, _deployment, _holder, common
from bench.common import figures, header, machine, ms, p99, ratio
from storage import database
from zlh_actors.lab import replicas as lab_replicas
from zlh_actors.lab import world
from zlh_actors.runtime import ownership
from zlh_actors.servers import actor

TARGET_P99 = 2.0  # seconds from kill -9 to every orphaned shard owned again
VERSIONS = {"minecraft_version": "1.21.1", "fabric": {"loader": "0.16.14", "installer": "1.0.1"}}
USER_COMMANDS = ("create", "start", "stop", "restart", "delete")
LEASE_POLL = 0.01
SESSION_POLL = 0.002
TAKEOVER_DEADLINE = 30.0
BALANCE_DEADLINE = 60.0
QUIET_DEADLINE = 180.0
DELETE_SHARE = 0.1  # of the trickle's actions, when a stopped server is idle


# --- the load ---------------------------------------------------------------------------------


@dataclasses.dataclass
class Sent:
    """One command sent through the HTTP API, and what came back."""

    kind: str
    server_id: str
    via: str  # the replica's name
    during_takeover: bool
    latency: float = 0.0  # seconds to the HTTP answer
    status: int | None = None  # None: no answer (the replica died under the request)
    command_id: str | None = None
    command_status: str | None = None  # as answered: accepted, queued (owner being replaced), ...
    error: str | None = None


class Load:
    """A steady trickle of creates, starts, stops and deletes through the live replicas' HTTP API."""

    def __init__(
        self, deployment: _deployment.Deployment, token: str, servers: int, rate: float, shards: int
    ) -> None:
        self.deployment = deployment
        self.servers = servers
        self.rate = rate
        self.shards = shards
        self.sent: list[Sent] = []
        self.in_takeover = False
        self._headers = {"Authorization": f"Bearer {token}"}
        self._rng = random.Random(20261128)
        self._busy: set[str] = set()  # servers with a command in flight
        self._tasks: set[asyncio.Task[None]] = set()
        self._names = 0
        self._stop = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    @property
    def pool(self) -> asyncpg.Pool:
        return self.deployment.pool

    async def create_initial(self, timeout: float) -> None:
        """`servers` servers created and running before the first kill."""
        await asyncio.gather(*(self._send("create", f"new:{uuid.uuid4()}") for _ in range(self.servers)))
        failed = [sent for sent in self.sent if sent.status != 202]
        if failed:
            raise RuntimeError(f"creates refused: {failed}")

        async def running() -> bool:
            states = await self.pool.fetch("SELECT state FROM servers")
            return len(states) == self.servers and all(row["state"] == "running" for row in states)

        await until(running, timeout, "the first servers never all ran")

    @property
    def issued(self) -> int:
        """Commands sent so far, answered or not."""
        return len(self.sent) + len(self._tasks)

    def start(self) -> None:
        self._ticker = asyncio.create_task(self._tick(), name="failover:load")

    async def stop(self) -> None:
        """Stop the trickle and wait for every command in flight; safe to call twice."""
        self._stop.set()
        if self._ticker is not None:
            await self._ticker
        if self._tasks:
            await asyncio.wait(set(self._tasks))
        if not self._http.closed:
            await self._http.close()

    async def _tick(self) -> None:
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self._stop.is_set():
            await self._act()
            next_at += interval
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(max(0.0, next_at - time.monotonic())):
                    await self._stop.wait()

    async def _idle(self, shards: Sequence[int] | None = None) -> list[asyncpg.Record]:
        """Servers at rest with no command pending or in flight (on `shards`, if given)."""
        rows = await self.pool.fetch(
            "SELECT s.id, s.state, s.vmid, zlh_shard(s.id, $1) AS shard FROM servers s "
            "WHERE s.state IN ('running', 'stopped') AND NOT EXISTS (SELECT 1 FROM commands c "
            "WHERE c.server_id = s.id AND c.status IN ('queued', 'accepted')) ORDER BY s.id",
            self.shards,
        )
        return [
            row
            for row in rows
            if str(row["id"]) not in self._busy and (shards is None or row["shard"] in shards)
        ]

    async def _startable(self, row: asyncpg.Record) -> bool:
        """A stopped server whose old agent is gone (a start earlier would reach the old boot's agent)."""
        supervisor = self.deployment.lab.supervisor
        if row["vmid"] is None or supervisor.has_process(row["vmid"]):
            return False
        return not await asyncio.to_thread(supervisor.processes, row["vmid"])

    async def _act(self) -> None:
        live = await self.pool.fetchval("SELECT count(*) FROM servers WHERE deleted_at IS NULL")
        creating = sum(1 for name in self._busy if name.startswith("new:"))
        if live + creating < self.servers:
            self._launch("create", None)
            return
        idle = await self._idle()
        stopped = [row for row in idle if row["state"] == "stopped" and await self._startable(row)]
        if stopped and self._rng.random() < DELETE_SHARE:
            self._launch("delete", str(self._rng.choice(stopped)["id"]))
            return
        running = [row for row in idle if row["state"] == "running"]
        choices = [("stop", row) for row in running] + [("start", row) for row in stopped]
        if choices:
            kind, row = self._rng.choice(choices)
            self._launch(kind, str(row["id"]))

    async def burst(self, shards: Sequence[int], via: Sequence[_deployment.Replica]) -> int:
        """A command for every resting server on `shards`, through `via`; how many were sent."""
        count = 0
        for row in await self._idle(shards):
            if row["state"] == "running":
                count += self._launch("stop", str(row["id"]), via)
            elif await self._startable(row):
                count += self._launch("start", str(row["id"]), via)
        return count

    def _launch(self, kind: str, server_id: str | None, via: Sequence[_deployment.Replica] = ()) -> bool:
        """Send a command in a task of its own; False if the server already has one on its way.

        The load and a kill's burst choose servers concurrently, and each awaits between its choice
        and this call: without the check both could send a start to one stopped server, and the
        second would be rightly rejected (409) as the server is then starting.
        """
        key = server_id or f"new:{uuid.uuid4()}"
        if key in self._busy:
            return False
        # Marked busy now, not when the task first runs: the next tick must not pick the same server.
        self._busy.add(key)
        task = asyncio.create_task(self._send(kind, key, via), name=f"failover:{kind}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def _send(self, kind: str, key: str, via: Sequence[_deployment.Replica] = ()) -> None:
        """Send one command; `key` is the server id, or the idempotency key of a create."""
        replica = self._rng.choice(list(via) or self.deployment.live())
        server_id = "" if kind == "create" else key
        sent = Sent(kind, server_id, replica.name, self.in_takeover)
        started = time.monotonic()
        try:
            if kind == "create":
                self._names += 1
                method, path = "POST", "/v1/servers"
                body: Any = {"name": f"bench-{self._names}", **VERSIONS}
                headers = {**self._headers, "Idempotency-Key": key}
            else:
                method = "DELETE" if kind == "delete" else "POST"
                path = f"/v1/servers/{server_id}" + ("" if kind == "delete" else f"/{kind}")
                body, headers = None, self._headers
            async with self._http.request(method, replica.url + path, json=body, headers=headers) as response:
                answer = await response.json(content_type=None)
                sent.status = response.status
            command = answer.get("command") if isinstance(answer, dict) else None
            if isinstance(command, dict):
                sent.command_id, sent.command_status = command["id"], command["status"]
            if kind == "create" and isinstance(answer, dict):
                sent.server_id = str(answer.get("id", ""))
        except (aiohttp.ClientError, TimeoutError) as exc:
            sent.error = f"{type(exc).__name__}: {exc}"
        finally:
            sent.latency = time.monotonic() - started
            self.sent.append(sent)
            self._busy.discard(key)


# --- one kill ---------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Kill:
    victim: str
    shards: int
    floor: float  # bare holder: kill -> lock free
    session_gone: float  # victim's lease connection gone from pg_stat_activity
    noticed: float  # kill -> earliest acquired_at of the orphaned shards
    takeover: float  # kill -> latest acquired_at of the orphaned shards
    polled: float  # kill -> the poll that saw them all retaken
    burst: int  # commands sent at the kill for servers on the orphaned shards
    sent_during: int  # every command sent between the kill and the takeover (burst included)
    starved: float  # the survivors' main threads: share of wanting-to-run time spent waiting for a core


async def until(
    check: Callable[[], Awaitable[bool]], timeout: float, what: str, interval: float = 0.05
) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"waited {timeout:g}s: {what}")
        await asyncio.sleep(interval)


async def leases(pool: asyncpg.Pool) -> dict[int, asyncpg.Record]:
    rows = await pool.fetch("SELECT shard, epoch, owner, acquired_at FROM shard_leases ORDER BY shard")
    return {row["shard"]: row for row in rows}


async def balanced(deployment: _deployment.Deployment, shards: int) -> bool:
    """Every shard is owned by a live replica, each holding its fair share or one less."""
    live = deployment.live()
    held = await leases(deployment.pool)
    counts = [sum(row["owner"] == replica.id for row in held.values()) for replica in live]
    fair = -(-shards // len(live))
    return len(held) == shards and sum(counts) == shards and all(fair - 1 <= n <= fair for n in counts)


async def measure_floor(url: str, waiter: database.Connection, look: database.Connection, key: int) -> float:
    """Seconds from SIGKILL of a bare lock holder to the lock being granted to `waiter`."""
    command = [sys.executable, "-m", "bench._holder", url, str(key)]
    # A plain Popen, reaped by its own `wait` below rather than by asyncio's child-watcher thread.
    holder = await asyncio.to_thread(subprocess.Popen, command, cwd=_deployment.ROOT, stdout=subprocess.PIPE)
    try:
        assert holder.stdout is not None
        line = await asyncio.wait_for(asyncio.to_thread(holder.stdout.readline), 30)
        if line.strip() != b"held":
            raise RuntimeError(f"the lock holder said {line!r}")
        granted = asyncio.create_task(
            waiter.execute("SELECT pg_advisory_lock($1::integer, $2::integer)", _holder.NAMESPACE, key)
        )

        async def queued() -> bool:
            return bool(
                await look.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND classid::bigint = $1::bigint AND objid::bigint = $2::bigint "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    _holder.NAMESPACE,
                    key,
                )
            )

        await until(queued, 10, "the waiter never queued on the lock", interval=0.005)
        killed = time.monotonic()
        holder.kill()
        await granted
        took = time.monotonic() - killed
        await waiter.execute("SELECT pg_advisory_unlock($1::integer, $2::integer)", _holder.NAMESPACE, key)
        return took
    finally:
        holder.kill()
        await asyncio.to_thread(holder.wait)
        if holder.stdout is not None:
            holder.stdout.close()


async def session_gone(conn: database.Connection, replica_id: uuid.UUID, since: float) -> float:
    name = f"{ownership.LEASE_APP}{replica_id}"
    while await conn.fetchval("SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", name):
        if time.monotonic() - since > TAKEOVER_DEADLINE:
            raise RuntimeError(f"the lease session {name} outlived its process by {TAKEOVER_DEADLINE:g}s")
        await asyncio.sleep(SESSION_POLL)
    return time.monotonic() - since


async def retaken(
    conn: database.Connection, orphaned: dict[int, int], survivors: set[uuid.UUID], since: float
) -> tuple[float, list[asyncpg.Record]]:
    """Poll until every orphaned shard has a surviving owner and a higher epoch."""
    while True:
        rows = await conn.fetch(
            "SELECT shard, epoch, owner, acquired_at FROM shard_leases WHERE shard = ANY($1::integer[])",
            list(orphaned),
        )
        if all(row["owner"] in survivors and row["epoch"] > orphaned[row["shard"]] for row in rows):
            return time.monotonic() - since, rows
        if time.monotonic() - since > TAKEOVER_DEADLINE:
            raise RuntimeError(f"orphaned shards not retaken within {TAKEOVER_DEADLINE:g}s: {rows}")
        await asyncio.sleep(LEASE_POLL)


async def choose_victim(deployment: _deployment.Deployment, shards: int) -> _deployment.Replica:
    """The live replica owning the most servers with work in progress; else the longest alive."""
    busy = await deployment.pool.fetch(
        "SELECT l.owner, count(*) AS n FROM servers s JOIN shard_leases l ON l.shard = zlh_shard(s.id, $1) "
        "WHERE s.state <> ALL ($2::text[]) GROUP BY l.owner",
        shards,
        sorted(actor.REST_STATES),
    )
    work = {row["owner"]: row["n"] for row in busy}
    live = deployment.live()
    return max(live, key=lambda replica: (work.get(replica.id, 0), -live.index(replica)))


async def one_kill(
    deployment: _deployment.Deployment,
    load: Load,
    watch: database.Connection,
    floor_conn: database.Connection,
    shards: int,
    number: int,
) -> Kill:
    await until(lambda: balanced(deployment, shards), BALANCE_DEADLINE, "shards never balanced")
    floor = await measure_floor(deployment.url, floor_conn, watch, number)
    victim = await choose_victim(deployment, shards)
    held = await leases(deployment.pool)
    orphaned = {shard: row["epoch"] for shard, row in held.items() if row["owner"] == victim.id}
    survivors = [replica for replica in deployment.live() if replica is not victim]
    sent_before = load.issued
    load.in_takeover = True
    sched = {replica.pid: _cpu.Sched.read(replica.pid) for replica in survivors}
    killed_wall = time.time()
    killed = time.monotonic()
    deployment.kill(victim)
    gone = asyncio.create_task(session_gone(floor_conn, victim.id, killed))
    burst = await load.burst(list(orphaned), survivors)
    polled, rows = await retaken(watch, orphaned, {replica.id for replica in survivors}, killed)
    load.in_takeover = False
    starved = max(_cpu.Sched.read(pid).since(before) for pid, before in sched.items())
    sent_during = load.issued - sent_before
    acquired: list[datetime.datetime] = [row["acquired_at"] for row in rows]
    noticed, takeover = (min(acquired).timestamp() - killed_wall, max(acquired).timestamp() - killed_wall)
    lease_gone = await gone
    await victim.process.wait_exit(10)
    return Kill(
        victim.name, len(orphaned), floor, lease_gone, noticed, takeover, polled, burst, sent_during, starved
    )


# --- the check ----------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Check:
    commands: int  # every command in the database, agent reports and drift repairs included
    unsettled: list[str]
    lost: list[str]  # answered 202 but not settled
    journal_mismatch: list[str]  # applied not exactly once, or rejected yet journaled
    interleaved: list[str]
    failed_servers: list[str]


async def check(pool: asyncpg.Pool, load: Load) -> Check:
    rest = sorted(actor.REST_STATES)

    async def quiet() -> bool:
        pending = await pool.fetchval("SELECT count(*) FROM commands WHERE status IN ('queued', 'accepted')")
        busy = await pool.fetchval("SELECT count(*) FROM servers WHERE state <> ALL ($1::text[])", rest)
        return bool(pending == 0 and busy == 0)

    with contextlib.suppress(RuntimeError):
        await until(quiet, QUIET_DEADLINE, "commands still pending", interval=0.2)
    rows = await pool.fetch(
        "SELECT c.id, c.kind, c.status, "
        "(SELECT count(*) FROM journal j WHERE j.command_id = c.id) AS entries "
        "FROM commands c ORDER BY c.position"
    )
    status = {str(row["id"]): row["status"] for row in rows}
    unsettled = [
        f"{row['kind']} {row['id']} {row['status']}"
        for row in rows
        if row["status"] not in ("done", "rejected")
    ]
    lost = [
        f"{sent.kind} {sent.command_id} ({sent.command_status} when answered): "
        f"{status.get(sent.command_id or '', 'missing')}"
        for sent in load.sent
        if sent.status == 202 and sent.command_id and status.get(sent.command_id) not in ("done", "rejected")
    ]
    mismatch = [
        f"{row['kind']} {row['id']} {row['status']}: {row['entries']} journal entries"
        for row in rows
        if row["kind"] in USER_COMMANDS and row["entries"] != (0 if row["status"] == "rejected" else 1)
    ]
    interleaved = []
    journals: dict[uuid.UUID, list[int]] = {}
    for row in await pool.fetch(
        "SELECT server_id, epoch FROM journal WHERE epoch IS NOT NULL ORDER BY server_id, seq"
    ):
        journals.setdefault(row["server_id"], []).append(row["epoch"])
    interleaved = [f"{server}: {epochs}" for server, epochs in journals.items() if epochs != sorted(epochs)]
    failed = [
        f"{row['id']} {row['state']}: {row['last_error']}"
        for row in await pool.fetch("SELECT id, state, last_error FROM servers WHERE state LIKE 'failed.%'")
    ]
    return Check(len(rows), unsettled, lost, mismatch, interleaved, failed)


# --- the report -------------------------------------------------------------------------------


def report_takeover(args: argparse.Namespace, kills: list[Kill]) -> list[float]:
    floor = [kill.floor for kill in kills]
    takeover = [kill.takeover for kill in kills]
    bound = [args.heartbeat + kill.floor for kill in kills]
    print(f"\ntakeover after kill -9, {len(kills)} kills ({args.replicas} replicas, {args.shards} shards)")
    print(header())
    print(figures("floor: bare lock holder killed -> lock free", floor))
    print(figures("victim's lease session gone (pg_stat_activity)", [kill.session_gone for kill in kills]))
    print(figures("kill -> first orphaned shard owned", [kill.noticed for kill in kills]))
    print(figures("takeover: kill -> every orphan owned, new epoch", takeover))
    print(figures("  (the same, as first seen by a 10 ms poll)", [kill.polled for kill in kills]))
    print(figures("design bound: heartbeat + floor", bound))
    print(ratio("ratio takeover / floor", takeover, floor))
    print(ratio("ratio takeover / (heartbeat + floor)", takeover, bound))
    print(f"  orphaned shards per kill: median {statistics.median([kill.shards for kill in kills]):g}")
    starved = [kill.starved for kill in kills]
    print(
        f"  during a takeover the survivors' event loops waited for a core {statistics.median(starved):.0%} "
        f"of the time\n  they wanted one (median; max {max(starved):.0%}; about 0% on an idle machine)"
    )
    print(
        f"  docs/ownership.md: after kill -9 the survivors take the shards on their next tick, one\n"
        f'  heartbeat ({args.heartbeat:g} s) plus a few queries at worst ("under 1 s"); a frozen or cut-off\n'
        f"  replica waits out the lease, {args.lease_timeout:g} + 2 x {args.heartbeat:g} = "
        f"{args.lease_timeout + 2 * args.heartbeat:g} s (not measured here)"
    )
    return takeover


def report_commands(kills: list[Kill], load: Load, result: Check) -> bool:
    kinds: dict[str, int] = {}
    answers: dict[str, int] = {}
    for sent in load.sent:
        kinds[sent.kind] = kinds.get(sent.kind, 0) + 1
        label = f"{sent.status} {sent.command_status or ''}".strip() if sent.status else "no answer"
        answers[label] = answers.get(label, 0) + 1
    mix = ", ".join(f"{kind} {n}" for kind, n in sorted(kinds.items()))
    print(f"\ncommands through the HTTP API: {len(load.sent)} ({mix})")
    print(f"  answers: {', '.join(f'{label}: {n}' for label, n in sorted(answers.items()))}")
    killed = {kill.victim for kill in kills}
    unanswered = [sent for sent in load.sent if sent.status is None]
    to_killed = sum(sent.via in killed for sent in unanswered)
    print(
        f"  no answer: {len(unanswered)}, of which {to_killed} were sent to a replica killed during the run "
        f"(their commands, if any, are checked in the database)"
    )
    during = [sent for sent in load.sent if sent.during_takeover]
    print(f"  sent between a kill and its takeover: {len(during)} (at the kills, for the orphans' servers: "
          f"{sum(kill.burst for kill in kills)})")  # fmt: skip
    late = [sent.latency for sent in during if sent.status is not None]
    steady = [sent.latency for sent in load.sent if sent.status is not None and not sent.during_takeover]
    if late and steady:
        print(header("HTTP answer latency"))
        print(figures("  commands sent during a takeover", late))
        print(figures("  the others", steady))
    print(f"  commands in the database (agent reports included): {result.commands}")
    print(f"  unsettled: {len(result.unsettled)}; answered 202 but never settled: {len(result.lost)}")
    print(
        f"  applied not exactly once in the journal: {len(result.journal_mismatch)}; "
        f"owners interleaved: {len(result.interleaved)}; servers failed: {len(result.failed_servers)}"
    )
    for problem in [*result.unsettled, *result.lost, *result.journal_mismatch, *result.interleaved][:10]:
        print(f"    {problem}")
    for problem in result.failed_servers[:5]:
        print(f"    failed: {problem}")
    return not (result.unsettled or result.lost or result.journal_mismatch or result.interleaved)


def report(args: argparse.Namespace, kills: list[Kill], load: Load, result: Check) -> bool:
    takeover = report_takeover(args, kills)
    settled = report_commands(kills, load, result)
    passed = p99(takeover) < TARGET_P99 and settled and len(kills) == args.kills
    verdict = "PASS" if passed else "FAIL"
    print(
        f"\ntarget: takeover p99 < {TARGET_P99:g} s, every command settled: {verdict} "
        f"(p99 {p99(takeover):.3f} s, median {statistics.median(takeover):.3f} s; "
        f"commands {'all settled' if settled else 'NOT all settled'})"
    )
    return passed


# --- the driver -------------------------------------------------------------------------------


async def run(args: argparse.Namespace, directory: Path) -> bool:
    env = {
        "ZLH_SHARDS": str(args.shards),
        "ZLH_HEARTBEAT_INTERVAL": str(args.heartbeat),
        "ZLH_LEASE_TIMEOUT": str(args.lease_timeout),
        "ZLH_DB_POOL_SIZE": "6",
    }
    async with (
        _deployment.fresh_database(args, directory) as url,
        world.Lab(directory / "lab", time_scale=0.02, warmup=0.3, subnet=common.lab_subnet()) as lab,
    ):
        tokens = await lab_replicas.prepare_database(lab, url)
        pool = await database.create_pool(url, max_size=4)
        watch = await database.connect(url)
        floor_conn = await database.connect(url)
        deployment = _deployment.Deployment(lab, url, pool, directory, **env)
        load = Load(deployment, tokens["alpha"], args.servers, args.rate, args.shards)
        kills: list[Kill] = []
        try:
            for _ in range(args.replicas):
                await deployment.start()
            print(f"  {args.replicas} replicas up; creating {args.servers} servers ...", flush=True)
            await load.create_initial(timeout=180)
            load.start()
            for number in range(1, args.kills + 1):
                kill = await one_kill(deployment, load, watch, floor_conn, args.shards, number)
                kills.append(kill)
                print(
                    f"  kill {number:2}/{args.kills}: {kill.victim} ({kill.shards} shards)"
                    f"  floor {ms(kill.floor).strip()}  session gone {ms(kill.session_gone).strip()}"
                    f"  first shard {ms(kill.noticed).strip()}  takeover {ms(kill.takeover).strip()}"
                    f" (polled {ms(kill.polled).strip()})  commands during {kill.sent_during}"
                    f"  survivors waited for a core {kill.starved:.0%}",
                    flush=True,
                )
                await deployment.start()
            await load.stop()
            print("  load stopped; waiting for every command to settle ...", flush=True)
            result = await check(pool, load)
        except BaseException:
            print(deployment.tails(), file=sys.stderr)
            raise
        finally:
            await load.stop()
            await deployment.close()
            await watch.close()
            await floor_conn.close()
            await pool.close()
    return report(args, kills, load, result)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--kills", type=int, default=20, help="replicas killed with SIGKILL (default 20)")
    parser.add_argument("--replicas", type=int, default=2, choices=(2, 3), help="live replicas (default 2)")
    parser.add_argument("--servers", type=int, default=6, help="servers kept alive in the lab (default 6)")
    parser.add_argument(
        "--rate", type=float, default=2.0, help="commands a second in the trickle (default 2)"
    )
    parser.add_argument("--shards", type=int, default=64, help="ZLH_SHARDS (default 64)")
    parser.add_argument("--heartbeat", type=float, default=0.5, help="ZLH_HEARTBEAT_INTERVAL (default 0.5)")
    parser.add_argument("--lease-timeout", type=float, default=3.0, help="ZLH_LEASE_TIMEOUT (default 3.0)")
    _deployment.add_options(parser, kept="the replicas' logs")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print(
        f"run: {args.kills} kills, {args.replicas} replicas, {args.shards} shards, "
        f"heartbeat {args.heartbeat:g} s, lease timeout {args.lease_timeout:g} s; "
        f"load: {args.servers} servers, {args.rate:g} commands/s",
        flush=True,
    )
    passed = _deployment.in_directory(
        "failover", args.keep, lambda directory: asyncio.run(run(args, directory))
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(common.entry("bench.failover", main))
