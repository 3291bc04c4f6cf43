"""Agent callback -> WebSocket event latency at a steady rate, against baselines measured in the same run.

The target (issue [6/7]): at 500 agent callbacks a second, p99 from a callback being sent to its
event arriving on `GET /v1/stream` under 50 ms.

Which callbacks make events. A report becomes a `report` command for the server's actor
(zlh_actors/api/agent_callbacks.py); the actor turns it into a chart event only when it is news
(`actor.REPORT_EVENTS`): `crashed` in `running` or `starting`, `stopped` in `running`. Every other
report (installing, installed, ready, ...) is read by the step that waits for it and journals
nothing, so it never reaches the stream. The benchmark sends `stopped` to running servers:
`running -stopped-> stopped`, one journal entry, one `server.state` event. (`crashed` would do too,
but a crashed server is not at rest: the sweep would wake thousands of them every 5 s and the crash
policy would restart their games, work that is not the path measured here.) A server leaves
`running` with its first report, so every callback goes to a server of its own.

The deployment. A fresh database on a PostgreSQL server of the run's own (`--shared-database`: the
tests' server, where other people's transactions hold the stream's horizon back; docs/stream.md,
"Limits"); `rate x (seconds + warmup)` servers written with the stores
(`servers.insert` in `running` with an `imported` journal entry, as tests/e2e/test_stream.py seeds
its servers, then `set_placement` and `agents.issue_token` for generation 1, whose secret is the
agent's bearer token); one real `server.py` replica against a lab (for its Proxmox settings; the
servers have no containers, and the reconciler's interval is set past the run so that nothing but
the reports touches them). The callbacks are real HTTP POSTs to `/agent/v1/servers/{id}/status`
with the agent's token, generation 1 and seq 1, exactly as `zlh_actors/agent/reporter.py` sends
them; the path measured is the whole one: the POST's two statements (the token lookup, then the
report and its command written by one statement), the wake-up of the owner's actor (directly, as
the replica that took the callback owns every shard, without a notification), the actor applying
the report and settling it `done` in one fenced transaction, the replica's announcement of the entry
(its own hub woken directly, one coalesced `zlh_journal` NOTIFY for any other replica), the hub reading
the final entries and the WebSocket frame.

The load is open-loop: callback i is due at `start + i / rate`, each in a task of its own, so a slow
answer never delays the next callback. A WebSocket client (tenant token) subscribed to `/v1/stream`
before the first callback matches each `server.state` event to its callback by server id. The
latency is from just before the POST is sent to the event frame being read; the first `--warmup`
seconds are sent at the same rate and left out. The client gives each POST `POST_TIMEOUT` (an agent
gives up after 10 s and retries; a callback given up on would be lost to the measurement). When the
rate cannot be sustained, the rates sent and delivered say so.

The baselines, in the same run and the same client loop: (1) the POST's own answer latency (the
callback's HTTP round trip and its transactions); (2) a bare aiohttp WebSocket echo
(`bench._echo`, a process of its own) pinged `--echo-rate` times a second throughout the measured
seconds: what the client stack and the loaded machine cost with no control plane in the way.

The ceilings, in the same run: the database's (`commit_rates`: PostgreSQL alone, plain commits and
commits that NOTIFY, which it serializes; each callback makes `COMMITS` plain ones, and shares the
replica's announcements, at most one notifying commit in flight at a time) and the
CPU's (`bench._cpu`: CPU time of the replica and of every PostgreSQL backend per delivered callback,
and how much of the time each event loop wanted a core it spent waiting for one).

    .venv/bin/python -m bench.stream [--rate 500] [--seconds 20] [--warmup 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import datetime
import ipaddress
import math
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import orjson

from bench import _cpu, _deployment, common
from bench.common import figures, header, machine, ms, p99, ratio
from storage import agents, database, servers
from zlh_actors import config
from zlh_actors.lab import replicas as lab_replicas
from zlh_actors.lab import world
from zlh_actors.servers import requests

TARGET_P99 = 0.050  # seconds from callback sent to event read
RATE_SHORTFALL = 0.95  # the achieved rate must be at least this share of --rate
TENANT = "alpha"
REPORTED = "stopped"  # running -stopped-> stopped: one journal entry per callback
VERSIONS = {"minecraft_version": "1.21.1", "fabric": {"loader": "0.16.14", "installer": "1.0.1"}}
MANIFEST = "0" * 64
SEED_BATCH = 250  # servers per seeding transaction
SEED_CONNECTIONS = 4
SHARDS = 64  # ZLH_SHARDS, the production default
DRAIN_DEADLINE = 60.0  # seconds after the last callback for every event to arrive
# Longer than an agent's (10 s, then it retries): a callback the client gave up on would be lost to
# the measurement, and the replica drops a request whose body it can no longer read.
POST_TIMEOUT = 60.0
PROBE_SECONDS = 2.0
PROBE_CONNECTIONS = 8
# Commits per callback: the report's insert and the owner's transaction that applies it. Neither
# NOTIFYs: the report lands on its owner, as here, nobody waits for its outcome, and the owner's
# replica announces the journal entry after the commit, coalesced (zlh_actors/runtime/announcer.py).
COMMITS = 2
CLIENT = "this client (and the lab)"


# --- the servers -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Target:
    server_id: str
    token: str


async def seed(pool: asyncpg.Pool, lab: world.Lab, count: int) -> list[Target]:
    """`count` running servers of the tenant, each with a generation-1 agent token."""
    spec = requests.parse_create({"name": "seed", **VERSIONS}, config.Settings()).spec()
    nodes = lab.cluster.nodes
    first_ip = int(lab.settings.ip_subnet.network_address) + 256

    async def batch(start: int) -> list[Target]:
        made = []
        async with database.transaction(pool) as conn:
            for index in range(start, min(start + SEED_BATCH, count)):
                server = await servers.insert(
                    conn, tenant=TENANT, name=f"cb-{index}", spec=spec, state="running", event="imported"
                )
                await servers.set_placement(
                    conn,
                    server,
                    node=nodes[index % len(nodes)],
                    vmid=100_000 + index,
                    ip=str(ipaddress.IPv4Address(first_ip + index)),
                    game_port=25565,
                    generation=1,
                )
                made.append(Target(str(server.id), await agents.issue_token(conn, server.id, 1)))
        return made

    limit = asyncio.Semaphore(SEED_CONNECTIONS)

    async def limited(start: int) -> list[Target]:
        async with limit:
            return await batch(start)

    batches = await asyncio.gather(*(limited(start) for start in range(0, count, SEED_BATCH)))
    return [target for made in batches for target in made]


# --- the database's ceiling ------------------------------------------------------------------


async def commit_until(conn: database.Connection, statement: str, ends: float) -> int:
    done = 0
    while time.monotonic() < ends:
        async with conn.transaction():
            await conn.execute(statement)
        done += 1
    return done


async def commit_rates(url: str) -> tuple[float, float]:
    """Commits a second of a one-row insert from `PROBE_CONNECTIONS` connections: plain, and with a NOTIFY.

    PostgreSQL serializes the commits of transactions that NOTIFY (a cluster-wide lock held until
    the commit's WAL flush is done, so that notifications queue in commit order), while plain
    commits share their flushes (group commit). The plain rate, divided by the commits each callback
    needs, bounds the callbacks a second this database can take, however fast the replica is; the
    notifying rate is what it would be if each callback's transaction NOTIFYed (as before the
    announcer), since those commits cannot share a flush.
    """
    conns = [await database.connect(url) for _ in range(PROBE_CONNECTIONS)]
    try:
        await conns[0].execute("CREATE TABLE bench_commit_probe (n integer)")
        rates = []
        for statement in (
            "INSERT INTO bench_commit_probe VALUES (1)",
            "INSERT INTO bench_commit_probe VALUES (1); SELECT pg_notify('bench_commit_probe', '')",
        ):
            ends = time.monotonic() + PROBE_SECONDS
            done = await asyncio.gather(*(commit_until(conn, statement, ends) for conn in conns))
            rates.append(sum(done) / PROBE_SECONDS)
        await conns[0].execute("DROP TABLE bench_commit_probe")
    finally:
        for conn in conns:
            await conn.close()
    return rates[0], rates[1]


# --- the measurement ---------------------------------------------------------------------------


@dataclasses.dataclass
class Callback:
    target: Target
    due: float  # monotonic
    measured: bool  # False during the warm-up
    sent: float = 0.0  # monotonic, just before the POST
    sent_wall: float = 0.0
    answered: float = 0.0
    status: int | None = None
    error: str | None = None
    event: float | None = None  # monotonic, the event frame read
    journaled_wall: float | None = None  # the event's `at`: its transaction's start


class Stream:
    """A `/v1/stream` subscriber that notes when each server's `stopped` event arrives."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, expected: dict[str, Callback]) -> None:
        self.ws = ws
        self.expected = expected
        self.received = 0
        self.foreign = 0  # events that match no callback
        self.all_in = asyncio.Event()
        self.closed: str | None = None

    async def read(self) -> None:
        async for message in self.ws:
            if message.type != aiohttp.WSMsgType.TEXT:
                continue
            now = time.monotonic()
            data = orjson.loads(message.data)
            if data.get("type") != "server.state":
                continue
            callback = self.expected.get(data["server_id"])
            if callback is None or data.get("event") != REPORTED or callback.event is not None:
                self.foreign += 1
                continue
            callback.event = now
            callback.journaled_wall = datetime.datetime.fromisoformat(data["at"]).timestamp()
            self.received += 1
            if self.received == len(self.expected):
                self.all_in.set()
        self.closed = f"closed: {self.ws.close_code} {self.ws.exception() or ''}"
        self.all_in.set()


async def post(http: aiohttp.ClientSession, base: str, callback: Callback) -> None:
    """The agent's report, as `zlh_actors/agent/reporter.py` sends it: its first (seq 1) of generation 1."""
    body = orjson.dumps(
        {
            "generation": 1,
            "seq": 1,
            "state": REPORTED,
            "manifest_sha256": MANIFEST,
            "detail": "stop requested: exited with code 0",
        }
    )
    headers = {"Authorization": f"Bearer {callback.target.token}", "Content-Type": "application/json"}
    url = f"{base}/agent/v1/servers/{callback.target.server_id}/status"
    callback.sent_wall = time.time()
    callback.sent = time.monotonic()
    try:
        async with http.post(url, data=body, headers=headers) as response:
            await response.read()
            callback.status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        callback.error = f"{type(exc).__name__}: {exc}"
    callback.answered = time.monotonic()


async def generate(http: aiohttp.ClientSession, base: str, callbacks: list[Callback]) -> None:
    """Send every callback at its due time (open loop); return once all are answered."""
    tasks: set[asyncio.Task[None]] = set()
    for callback in callbacks:
        delay = callback.due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
        task = asyncio.create_task(post(http, base, callback))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    if tasks:
        await asyncio.wait(set(tasks))


async def echo_pings(
    ws: aiohttp.ClientWebSocketResponse, begin: float, rate: float, until: asyncio.Event
) -> list[float]:
    """Round trips through the bare echo server, one at a time, `rate` a second, from `begin` to `until`."""
    samples: list[float] = []
    number = 0
    next_at = begin
    while True:
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(max(0.0, next_at - time.monotonic())):
                await until.wait()
        if until.is_set():
            return samples
        number += 1
        started = time.monotonic()
        await ws.send_str(str(number))
        reply = await ws.receive()
        samples.append(time.monotonic() - started)
        if reply.type != aiohttp.WSMsgType.TEXT or reply.data != str(number):
            raise RuntimeError(f"the echo server answered {reply!r}")
        next_at += 1 / rate


@contextlib.asynccontextmanager
async def echo_server() -> Any:
    """The bare echo process; yields its WebSocket URL."""
    port = lab_replicas.free_port()
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench._echo", str(port), cwd=_deployment.ROOT, stdout=asyncio.subprocess.PIPE
    )
    try:
        assert process.stdout is not None
        line = await asyncio.wait_for(process.stdout.readline(), 30)
        if line.strip() != b"listening":
            raise RuntimeError(f"the echo server said {line!r}")
        yield f"http://127.0.0.1:{port}/echo"
    finally:
        process.kill()
        await process.wait()


@dataclasses.dataclass(frozen=True)
class Run:
    callbacks: list[Callback]
    echo: list[float]
    seeded: float  # seconds to seed the servers
    stream: Stream
    cpu: dict[str, Usage]  # while the callbacks flowed, by process
    commits: tuple[float, float] = (0.0, 0.0)  # plain and notifying commits a second (`commit_rates`)


@dataclasses.dataclass(frozen=True)
class Usage:
    """What one process used while the callbacks flowed."""

    seconds: float  # CPU seconds
    cores: float  # CPU seconds per wall second
    starved: float | None  # share of its main thread's wanting-to-run time spent waiting for a core


class Meter:
    """CPU of the replica, this client and the private PostgreSQL (every backend), over a window."""

    def __init__(self, replica: _deployment.Replica, directory: Path) -> None:
        self._pids: dict[str, tuple[int | str, bool]] = {
            "replica (server.py)": (replica.pid, False),
            CLIENT: ("self", False),
        }
        with contextlib.suppress(OSError, ValueError, IndexError):
            postmaster = int((directory / "pg" / "postmaster.pid").read_text().split()[0])
            self._pids["PostgreSQL (every backend)"] = (postmaster, True)
        self._began = time.monotonic()
        self._cpu = {name: _cpu.cpu_seconds(pid, children=tree) for name, (pid, tree) in self._pids.items()}
        self._sched = {name: _cpu.Sched.read(pid) for name, (pid, tree) in self._pids.items() if not tree}

    def read(self) -> dict[str, Usage]:
        wall = time.monotonic() - self._began
        usage = {}
        for name, (pid, tree) in self._pids.items():
            used = _cpu.cpu_seconds(pid, children=tree) - self._cpu[name]
            before = self._sched.get(name)
            starved = None if before is None else _cpu.Sched.read(pid).since(before)
            usage[name] = Usage(used, used / wall, starved)
        return usage


async def measure(args: argparse.Namespace, directory: Path) -> Run:
    count = math.ceil(args.rate * (args.seconds + args.warmup))
    env = {
        "ZLH_RECONCILE_INTERVAL": "86400",
        "ZLH_SHARDS": str(SHARDS),
        "ZLH_HEARTBEAT_INTERVAL": "0.5",
        "ZLH_LEASE_TIMEOUT": "3.0",
        "ZLH_LOG_LEVEL": args.log_level,
    }
    async with (
        _deployment.fresh_database(args, directory) as url,
        world.Lab(directory / "lab", subnet=common.lab_subnet()) as lab,
    ):
        tokens = await lab_replicas.prepare_database(lab, url)
        pool = await database.create_pool(url, max_size=SEED_CONNECTIONS)
        try:
            started = time.monotonic()
            targets = await seed(pool, lab, count)
            seeded = time.monotonic() - started
            print(f"  {count:,} running servers seeded in {seeded:.1f} s", flush=True)
            ceiling = await commit_rates(url)
            async with _deployment.Deployment(lab, url, pool, directory, **env) as deployment:
                replica = await deployment.start()
                await owns_everything(pool, replica)
                run = await drive(args, replica, tokens[TENANT], targets, seeded, directory)
                return dataclasses.replace(run, commits=ceiling)
        finally:
            await pool.close()


async def owns_everything(pool: asyncpg.Pool, replica: _deployment.Replica) -> None:
    """Wait until the replica holds every shard: before that, a report waits for an owner."""
    deadline = time.monotonic() + 60
    while await pool.fetchval("SELECT count(*) FROM shard_leases WHERE owner = $1", replica.id) != SHARDS:
        if time.monotonic() > deadline:
            raise RuntimeError(f"the replica never owned the {SHARDS} shards\n{replica.tail()}")
        await asyncio.sleep(0.05)


async def drive(
    args: argparse.Namespace,
    replica: _deployment.Replica,
    token: str,
    targets: list[Target],
    seeded: float,
    directory: Path,
) -> Run:
    connector = aiohttp.TCPConnector(limit=args.connections)
    timeout = aiohttp.ClientTimeout(total=POST_TIMEOUT)
    async with (
        echo_server() as echo_url,
        aiohttp.ClientSession(connector=connector, timeout=timeout) as http,
        http.ws_connect(echo_url) as echo_ws,
        http.ws_connect(f"{replica.url}/v1/stream", headers={"Authorization": f"Bearer {token}"}) as ws,
    ):
        hello = await ws.receive_json(timeout=10)
        if hello.get("type") != "hello":
            raise RuntimeError(f"the stream said {hello!r}")
        # Everything is connected: only now are the callbacks given their due times.
        start = time.monotonic() + 0.1
        warmup = math.ceil(args.rate * args.warmup)
        callbacks = [
            Callback(target, start + index / args.rate, index >= warmup)
            for index, target in enumerate(targets)
        ]
        stream = Stream(ws, {callback.target.server_id: callback for callback in callbacks})
        reader = asyncio.create_task(stream.read(), name="stream:reader")
        measured = asyncio.Event()
        pings = asyncio.create_task(echo_pings(echo_ws, start + args.warmup, args.echo_rate, measured))
        meter = Meter(replica, directory)
        await generate(http, replica.url, callbacks)
        measured.set()
        echo = await pings
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_DEADLINE):
                await stream.all_in.wait()
        cpu = meter.read()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
    return Run(callbacks, echo, seeded, stream, cpu)


# --- the report -------------------------------------------------------------------------------


def with_undelivered(latency: Sequence[float], expected: int) -> list[float]:
    """The latencies of every callback: one that never made an event counts as infinitely slow, so a
    percentile falling among those reads "not delivered" instead of one of the survivors' figures."""
    return [*latency, *[math.inf] * (expected - len(latency))]


def per_second(count: int, first: float, last: float) -> float:
    return (count - 1) / (last - first) if count > 1 and last > first else 0.0


def report(args: argparse.Namespace, run: Run) -> bool:
    measured = [callback for callback in run.callbacks if callback.measured]
    answered = [callback for callback in measured if callback.status == 202]
    arrived = [callback for callback in measured if callback.event is not None]
    sent_rate = per_second(len(measured), measured[0].sent, measured[-1].sent)
    events = sorted(callback.event for callback in arrived if callback.event is not None)
    event_rate = per_second(len(events), events[0], events[-1]) if events else 0.0
    latency = [callback.event - callback.sent for callback in arrived if callback.event is not None]
    to_journal = [
        callback.journaled_wall - callback.sent_wall
        for callback in arrived
        if callback.journaled_wall is not None
    ]
    from_journal = [total - part for total, part in zip(latency, to_journal, strict=True)]
    every = with_undelivered(latency, len(measured))
    answer = [callback.answered - callback.sent for callback in answered]
    lag = [callback.sent - callback.due for callback in measured]
    statuses: dict[str, int] = {}
    for callback in measured:
        label = str(callback.status) if callback.status is not None else f"error ({callback.error})"
        statuses[label] = statuses.get(label, 0) + 1

    print(
        f"\nrate: asked {args.rate:g}/s; callbacks sent {sent_rate:.1f}/s, events received {event_rate:.1f}/s"
    )
    print(
        f"  measured callbacks: {len(measured):,} over {args.seconds:g} s "
        f"(after {args.warmup:g} s of warm-up)"
    )
    print(f"  answers: {', '.join(f'{label}: {n:,}' for label, n in sorted(statuses.items()))}")
    print(f"  events received: {len(arrived):,} of {len(measured):,}; unmatched events: {run.stream.foreign}")
    if run.stream.closed:
        print(f"  the stream {run.stream.closed}")
    print(
        f"\n  delivered: {len(arrived):,} of {len(measured):,} callbacks made an event "
        f"({len(arrived) / max(len(measured), 1):.1%}); the sent -> event row counts the rest as"
        "\n  not delivered; the two rows under it are over the delivered events only"
    )
    print(header("latency"))
    print(figures("echo round trip (baseline)", run.echo))
    print(figures("callback POST answered (baseline)", answer))
    print(figures("callback sent -> event read", every))
    print(figures("  sent -> journal entry written (its `at`)", to_journal))
    print(figures("  journal entry -> event read", from_journal))
    print(figures("generator lag (sent - due)", lag))
    print(ratio("ratio event / echo", every, run.echo))
    print(ratio("ratio event / POST answer", every, answer))
    print(f"  echo samples: {len(run.echo):,}; servers seeded in {run.seeded:.1f} s")
    plain, notifying = run.commits
    print(
        f"  PostgreSQL alone, {PROBE_CONNECTIONS} connections: {plain:.0f} plain commits/s, {notifying:.0f} "
        f"commits/s with a NOTIFY;\n  at {COMMITS} plain commits per callback (none notifying), at most "
        f"{plain / COMMITS:.0f} callbacks/s on this database"
    )
    delivered = max(run.stream.received, 1)
    print(
        "  CPU while the callbacks flowed (cores used; CPU per delivered callback, warm-up included;\n"
        "  share of the time its event loop wanted a core spent waiting for one):"
    )
    for name, usage in run.cpu.items():
        starved = "" if usage.starved is None else f"; waited {usage.starved:.0%}"
        per = usage.seconds / delivered * 1000
        print(f"    {name:32}{usage.cores:5.2f} cores, {per:6.2f} ms/callback{starved}")
    server = sum(usage.seconds for name, usage in run.cpu.items() if name != CLIENT) / delivered
    cores = len(os.sched_getaffinity(0))
    print(
        f"  the control plane's side (replica and PostgreSQL): {server * 1000:.2f} ms of CPU per callback,\n"
        f"  so at most {cores / server:.0f} callbacks/s on this machine's {cores} cores if nothing else ran"
    )

    complete = len(arrived) == len(measured) == len(answered)
    fast_enough = sent_rate >= RATE_SHORTFALL * args.rate
    passed = bool(every) and p99(every) < TARGET_P99 and complete and fast_enough
    print(
        f"\ntarget: p99 callback -> event < {TARGET_P99 * 1000:g} ms at {args.rate:g} callbacks/s: "
        f"{'PASS' if passed else 'FAIL'} (p99 {ms(p99(every)).strip() if every else 'none'}, "
        f"median {ms(statistics.median(every)).strip() if every else 'none'}; "
        f"delivered {len(arrived):,} of {len(measured):,}; "
        f"sent {sent_rate:.0f}/s{'' if fast_enough else ' (short of the rate)'}; "
        f"{'every callback answered 202 and seen as an event' if complete else 'callbacks/events MISSING'})"
    )
    return passed


# --- the driver -------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--rate", type=float, default=500.0, help="callbacks a second (default 500)")
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds (default 20)")
    parser.add_argument(
        "--warmup", type=float, default=2.0, help="seconds sent first, not counted (default 2)"
    )
    parser.add_argument("--echo-rate", type=float, default=50.0, help="echo pings a second (default 50)")
    parser.add_argument("--connections", type=int, default=100, help="HTTP connections at most (default 100)")
    parser.add_argument(
        "--log-level", default="WARNING", help="the replica's ZLH_LOG_LEVEL (default WARNING)"
    )
    _deployment.add_options(parser, kept="the replica's log")
    args = parser.parse_args(argv)
    print(f"machine: {machine()}")
    print(
        f"run: {args.rate:g} callbacks/s for {args.seconds:g} s (+{args.warmup:g} s warm-up), "
        f"echo {args.echo_rate:g}/s, one replica, {args.connections} client connections at most",
        flush=True,
    )
    passed = _deployment.in_directory(
        "stream", args.keep, lambda directory: report(args, asyncio.run(measure(args, directory)))
    )
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(common.entry("bench.stream", main))
