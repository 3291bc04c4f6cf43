"""One chaos run, start to verdict: `await driver.run(Options(seed=...))` -> `summary.Summary`.

The phases, each timed in the summary:

1. **setup**: a fresh database (`zlh_actors.lab.scratchdb`), a lab of its own on a random loopback
   /16, tokens for the plan's tenants and an admin, the replicas as real processes (`fleet`), one
   stream reader per tenant (`streams`);
2. **chaos**: for the plan's minutes, the scenario plays every server's script while the injector
   fires the planned faults;
3. **heal**: the faults end (every replica up, fakepve cleared); no server is created any more, and
   the scripts under way play to their end (bounded by `FINISH_GRACE`);
4. **quiesce**: until every server rests with no command pending and a reconciliation pass on
   every replica finds nothing (`quiesce`), or the deadline;
5. **check**: the streams are compared with the journal, and the invariant checker reads the
   database and fakepve (`invariants.check`) with everything the clients were told.

Replicas run with the test timings of `replicas.environment_for`, plus a reconciliation every few
seconds and an orphan grace of a few seconds, so that a run of minutes can see drift repaired.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import secrets
import shlex
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import asyncpg

from storage import database
from zlh_actors.lab import invariants, replicas, scratchdb, world
from zlh_actors.lab.chaos import client, faults, fleet, plan, quiesce, scenario, streams, summary
from zlh_actors.lab.chaos import tally as tally_module

CHAOS_ENV = {
    "ZLH_RECONCILE_INTERVAL": "5",
    "ZLH_ORPHAN_GRACE": "3",
    "ZLH_CRASH_BACKOFF": "1",
    "ZLH_DB_POOL_SIZE": "8",  # three replicas and a few test runs share one server's 100 connections
}
FINISH_GRACE = 30.0  # seconds the scripts under way get to finish after the chaos (then cancelled)
CATCH_UP = 20.0  # seconds the streams get to deliver the last journal entries
PROGRESS_EVERY = 30.0


@dataclasses.dataclass(frozen=True)
class Options:
    seed: int
    replicas: int = 3
    servers: int = 300
    minutes: float = 15.0
    tenants: int = 3
    directory: Path | None = None  # lab and replica logs; a new temporary directory if None
    database_url: str | None = None  # the PostgreSQL server to create the run's database on
    keep: bool = False  # keep the run's database (it is dropped otherwise)
    settle_timeout: float | None = None  # seconds; default: a quarter of the run, 45 to 300
    time_scale: float = 0.02  # the lab's real seconds per PVE second (a clone takes 30 PVE seconds)
    warmup: float = 0.3  # seconds the stand-in game takes to answer Server List Ping

    def command(self) -> str:
        """The command line that replays this run's plan."""
        words = ["python", "-m", "zlh_actors.lab.chaos", "--seed", str(self.seed)]
        words += ["--replicas", str(self.replicas), "--servers", str(self.servers)]
        words += ["--minutes", f"{self.minutes:g}", "--tenants", str(self.tenants)]
        return shlex.join(words)

    def settling(self) -> float:
        if self.settle_timeout is not None:
            return self.settle_timeout
        return min(300.0, max(45.0, self.minutes * 60 / 4))


def _subnet() -> str:
    """A loopback /16 of the run's own, so concurrent labs never share an address."""
    return f"127.{21 + secrets.randbelow(230)}.0.0/16"


async def run(options: Options, say: Callable[[str], None] = print) -> summary.Summary:
    chosen = plan.make(
        options.seed,
        replicas=options.replicas,
        servers=options.servers,
        minutes=options.minutes,
        tenants=options.tenants,
    )
    directory = options.directory or Path(tempfile.mkdtemp(prefix=f"zlh-chaos-{options.seed}-"))
    say(f"chaos: seed {options.seed}, plan {chosen.digest()}: {len(chosen.scripts)} servers, "
        f"{len(chosen.faults)} faults over {chosen.seconds:g}s; in {directory}")  # fmt: skip
    say(f"chaos: reproduce with: {options.command()}")
    async with (
        scratchdb.scratch(f"zlh_chaos_{options.seed}", options.database_url, keep=options.keep) as url,
        world.Lab(
            directory / "lab", time_scale=options.time_scale, warmup=options.warmup, subnet=_subnet()
        ) as lab,
    ):
        tokens = await replicas.prepare_database(lab, url, tenants=chosen.tenants)
        pool = await database.create_pool(url, max_size=4)
        try:
            return await _run(options, chosen, directory, lab, url, pool, tokens, say)
        finally:
            await pool.close()


async def _run(
    options: Options,
    chosen: plan.Plan,
    directory: Path,
    lab: world.Lab,
    url: str,
    pool: asyncpg.Pool,
    tokens: dict[str, str],
    say: Callable[[str], None],
) -> summary.Summary:
    seconds: dict[str, float] = {}
    mark = time.monotonic()
    logs = directory / "replicas"
    logs.mkdir(parents=True, exist_ok=True)
    deployment = fleet.Fleet(lab, url, pool, logs, CHAOS_ENV)
    log = invariants.ClientLog()
    counts = tally_module.Tally()
    tracker = streams.Tracker()
    api = client.Api(deployment, tokens, log, counts)
    http = aiohttp.ClientSession()
    readers = [
        streams.TenantStream(tenant, tokens[tenant], deployment, tracker, log, route)
        for route, tenant in enumerate(chosen.tenants)
    ]
    tasks: list[asyncio.Task[None]] = []
    injector = faults.Injector(lab, deployment, pool, counts)
    try:
        await deployment.start(options.replicas)
        for reader in readers:
            reader.start(http)
        seconds["setup"] = time.monotonic() - mark
        epochs_before = await _epochs(pool)
        say(f"chaos: replicas ready on {', '.join(deployment.urls)}; chaos for {chosen.seconds:g}s")

        mark = time.monotonic()
        counts.started = mark  # fault times in faults.log count from here
        stop = asyncio.Event()
        play = asyncio.create_task(scenario.Scenario(api, tracker, chosen, stop).run(), name="chaos:scenario")
        firing = asyncio.create_task(injector.run(chosen.faults, stop), name="chaos:faults")
        ticker = asyncio.create_task(_progress(counts, say), name="chaos:progress")
        tasks += [play, firing, ticker]
        await asyncio.sleep(chosen.seconds)
        stop.set()
        ticker.cancel()
        await firing
        seconds["chaos"] = time.monotonic() - mark
        (directory / "faults.log").write_text("".join(f"{line}\n" for line in counts.events))

        mark = time.monotonic()
        say("chaos: time is up; healing every fault and letting the scripts under way finish")
        await injector.heal()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(play, FINISH_GRACE)
        seconds["heal"] = time.monotonic() - mark

        mark = time.monotonic()
        say(f"chaos: waiting for quiescence (at most {options.settling():g}s)")
        settlement = await quiesce.settle(api, pool, options.settling())
        seconds["quiesce"] = time.monotonic() - mark

        mark = time.monotonic()
        say("chaos: checking the streams and the invariants")
        findings = await streams.catch_up(readers, pool, CATCH_UP)
        report = await invariants.check(pool, lab.cluster, log)
        seconds["check"] = time.monotonic() - mark
        return summary.Summary(
            command=options.command(),
            chosen=chosen,
            counts=counts,
            settlement=settlement,
            report=report,
            stream_findings=findings,
            streams=[(reader.tenant, reader.events, reader.connections) for reader in readers],
            final_states=await _final_states(pool),
            deletes=await _deletes(pool),
            drift=await _drift(pool),
            epochs=(epochs_before, await _epochs(pool)),
            crashed=list(deployment.crashes),
            log_errors=_log_errors(deployment),
            seconds=seconds,
            directory=directory,
        )
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await injector.cancel()
        for reader in readers:
            await reader.stop()
        await http.close()
        await api.close()
        await deployment.close()


async def _progress(counts: tally_module.Tally, say: Callable[[str], None]) -> None:
    while True:
        await asyncio.sleep(PROGRESS_EVERY)
        requests = sum(counts.operations.values())
        injected = sum(n for (_, result), n in counts.faults.items() if result == tally_module.INJECTED)
        say(f"chaos: {requests} requests sent, {injected} faults injected so far")


async def _final_states(pool: asyncpg.Pool) -> dict[str, int]:
    rows = await pool.fetch("SELECT state, count(*) AS n FROM servers GROUP BY state")
    return {row["state"]: row["n"] for row in rows}


async def _deletes(pool: asyncpg.Pool) -> dict[str, int]:
    """The state every accepted delete found its server in (where the deletes actually landed)."""
    rows = await pool.fetch(
        "SELECT from_state, count(*) AS n FROM journal WHERE event = 'delete' GROUP BY from_state"
    )
    return {row["from_state"]: row["n"] for row in rows}


async def _epochs(pool: asyncpg.Pool) -> dict[int, int]:
    """Each shard's lease epoch: it goes up by one each time the shard changes hands."""
    rows = await pool.fetch("SELECT shard, epoch FROM shard_leases ORDER BY shard")
    return {row["shard"]: row["epoch"] for row in rows}


async def _drift(pool: asyncpg.Pool) -> dict[str, int]:
    """Drift the reconciler reported over the whole run, by kind (a drift seen in two passes counts twice)."""
    rows = await pool.fetch(
        "SELECT d->>'kind' AS kind, count(*) AS n FROM reconcile_reports r, jsonb_array_elements(r.drifts) d "
        "GROUP BY 1"
    )
    return {row["kind"]: row["n"] for row in rows}


def _log_errors(deployment: fleet.Fleet) -> dict[str, int]:
    found: collections.Counter[str] = collections.Counter()
    for path in deployment.log_files():
        text = path.read_text(errors="replace")
        found[path.stem] = sum(1 for line in text.splitlines() if " ERROR " in line or '"ERROR"' in line)
    return dict(found)
