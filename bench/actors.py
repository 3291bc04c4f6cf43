"""What a resident idle actor costs, against baselines measured in the same run.

The target (issue: actor runtime): with 10,000 resident idle actors, tracemalloc must count at most
10 KiB per actor. An idle actor must not hold a lifecycle chart: the server actor's handler goes
through `statemachines.lifecycle.apply`, a cached pure function, so the handler used here does too.

Memory. An actor is spawned by `tell`, handles its one message, and parks in `Registry._wait` with
an idle timeout long enough that it stays resident. The figure is the tracemalloc snapshot
difference between "keys created, nothing spawned" and "every actor handled its message and is
parked", divided by N. The keys themselves (the caller's server ids) are created before the first
snapshot and are not counted; everything the registry allocates (the task name included) is. The
baselines: N bare asyncio tasks each parked on a future (the least an actor could be), and one
`chart.Lifecycle` restored with `lifecycle.restore("running")` and kept alive (what an actor would
add if it held a chart). RSS growth (from /proc/self/statm) is reported too, measured with
tracemalloc off because tracemalloc's own tables live outside the heap it traces.

Time. Spawning (an `ask` to a new key: spawn, handle, reply) and the round trip of an `ask` to a
resident actor, against a bare `asyncio.Queue` put/get round trip (a consumer task replies on a
future), sampled alternately in the same process so that both see the same noise. Building one
chart is timed against the same baseline.

Each probe runs in a fresh interpreter: in a reused one, RSS would not grow (freed arenas are reused)
and one probe's leftovers would sit in the next one's baseline. Every figure below is the median over
`--repeat` runs.

A whole replica. Then (unless `--servers-in-db 0`) the resident memory of one real `server.py`
process with `--servers-in-db` servers in its database, most of them passivated, against the same
replica over an empty database (`bench.replica_memory` says how; target: under 1 GiB with 100,000).

    .venv/bin/python -m bench.actors [--actors 10000] [--repeat 3] [--servers-in-db 100000] [--wake 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import linecache
import statistics
import subprocess
import sys
import time
import tracemalloc
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from bench import common, replica_memory
from bench.common import machine, p99, rss_bytes
from statemachines import chart, lifecycle
from zlh_actors.runtime import actors

TARGET_BYTES = 10 * 1024
ROOT = Path(__file__).resolve().parent.parent
PROBES = ("actors-tracemalloc", "tasks-tracemalloc", "actors-rss", "tasks-rss", "chart", "timing")
CHART_SAMPLES = 15
CHART_TIMINGS = 200
SETTLE_TIMEOUT = 120.0

Keys = list[uuid.UUID]
Reg = actors.Registry[uuid.UUID, str]


# --- what is measured -------------------------------------------------------------------------


class Handler:
    """The server actor's shape without the database: one cached chart lookup per message."""

    def __init__(self) -> None:
        self.handled = 0

    async def __call__(self, key: uuid.UUID, message: str) -> str:
        self.handled += 1
        return lifecycle.apply("running", message)


def registry(handler: Handler) -> Reg:
    # An hour of idle timeout: nothing passivates while the probe runs.
    policy = actors.Policy(idle_timeout=3600.0)
    return actors.Registry("servers", handler, restart_message=lambda key: "stop", policy=policy)


def parked(reg: Reg, keys: Keys) -> bool:
    """Every key's actor is resident and waiting for mail (its `waiter` exists only then)."""
    for key in keys:
        actor = reg.get(key)
        if actor is None or actor.waiter is None:
            return False
    return True


async def settle(done: Callable[[], bool]) -> None:
    deadline = time.monotonic() + SETTLE_TIMEOUT
    while not done():
        if time.monotonic() > deadline:
            raise RuntimeError(f"not settled within {SETTLE_TIMEOUT:.0f}s")
        await asyncio.sleep(0.01)


async def spawn_actors(n: int, measure: Callable[[], int], top: int) -> dict[str, Any]:
    handler = Handler()
    reg = registry(handler)
    await reg.ask(uuid.uuid4(), "stop")  # warm up: the chart cache, asyncio's lazy state, logging
    keys = [uuid.uuid4() for _ in range(n)]
    gc.collect()
    before = measure()
    snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    for key in keys:
        reg.tell(key, "stop")
    await settle(lambda: handler.handled == n + 1 and parked(reg, keys))
    gc.collect()
    grown = measure() - before
    sites: list[tuple[str, int, int]] = []
    if snapshot is not None:
        stats = tracemalloc.take_snapshot().compare_to(snapshot, "lineno")
        grown = sum(stat.size_diff for stat in stats)
        sites = [
            (stat.traceback[0].filename, stat.traceback[0].lineno, stat.size_diff) for stat in stats[:top]
        ]
    charts = sum(1 for obj in gc.get_objects() if isinstance(obj, chart.Lifecycle))
    await reg.shutdown(timeout=30)
    return {"per_unit": grown / n, "sites": sites, "charts_alive": charts}


async def spawn_tasks(n: int, measure: Callable[[], int]) -> dict[str, Any]:
    loop = asyncio.get_running_loop()

    async def park() -> None:
        await loop.create_future()

    gc.collect()
    before = measure()
    snapshot = tracemalloc.take_snapshot() if tracemalloc.is_tracing() else None
    tasks = [asyncio.create_task(park()) for _ in range(n)]
    await asyncio.sleep(0)  # one loop turn: every task has started and is parked on its future
    gc.collect()
    grown = measure() - before
    if snapshot is not None:
        grown = sum(stat.size_diff for stat in tracemalloc.take_snapshot().compare_to(snapshot, "lineno"))
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return {"per_unit": grown / n}


def traced() -> int:
    return tracemalloc.get_traced_memory()[0]


def chart_memory() -> dict[str, Any]:
    lifecycle.restore("running")  # warm up: class-level caches the first instance fills
    kept: list[chart.Lifecycle] = []
    sizes: list[int] = []
    tracemalloc.start()
    for _ in range(CHART_SAMPLES):
        gc.collect()
        before = traced()
        kept.append(lifecycle.restore("running"))
        gc.collect()
        sizes.append(traced() - before)
    tracemalloc.stop()
    return {"per_unit": statistics.median(sizes)}


async def timing(n: int) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[tuple[str, asyncio.Future[str]]] = asyncio.Queue()

    async def consume() -> None:
        while True:
            message, reply = await queue.get()
            reply.set_result(message)

    async def queue_round_trip() -> int:
        start = time.perf_counter_ns()
        reply: asyncio.Future[str] = loop.create_future()
        queue.put_nowait(("stop", reply))
        await reply
        return time.perf_counter_ns() - start

    async def ask(key: uuid.UUID) -> int:
        start = time.perf_counter_ns()
        await reg.ask(key, "stop")
        return time.perf_counter_ns() - start

    consumer = asyncio.create_task(consume())
    reg = registry(Handler())
    await reg.ask(uuid.uuid4(), "stop")
    keys = [uuid.uuid4() for _ in range(n)]
    baseline: list[int] = []
    spawn: list[int] = []
    round_trip: list[int] = []
    for key in keys:
        baseline.append(await queue_round_trip())
        spawn.append(await ask(key))
    for key in keys:
        baseline.append(await queue_round_trip())
        round_trip.append(await ask(key))
    build: list[int] = []
    for _ in range(CHART_TIMINGS):
        baseline.append(await queue_round_trip())
        start = time.perf_counter_ns()
        lifecycle.restore("running")
        build.append(time.perf_counter_ns() - start)
    consumer.cancel()
    await reg.shutdown(timeout=30)
    return {
        name: {"median": statistics.median(samples), "p99": p99(samples)}
        for name, samples in (("queue", baseline), ("spawn", spawn), ("ask", round_trip), ("chart", build))
    }


def probe(name: str, n: int, top: int) -> dict[str, Any]:
    if name == "chart":
        return chart_memory()
    if name == "timing":
        return asyncio.run(timing(n))
    kind, method = name.split("-")
    measure: Callable[[], int] = rss_bytes
    if method == "tracemalloc":
        tracemalloc.start()
        measure = traced
    if kind == "actors":
        return asyncio.run(spawn_actors(n, measure, top))
    return asyncio.run(spawn_tasks(n, measure))


# --- the driver -------------------------------------------------------------------------------


def run_probe(name: str, n: int, top: int) -> dict[str, Any]:
    command = [sys.executable, "-m", "bench.actors", "--probe", name, "--actors", str(n), "--top", str(top)]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"probe {name} failed ({done.returncode}):\n{done.stderr}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def kib(value: float) -> str:
    return f"{value / 1024:8.2f} KiB"


def usec(value: float) -> str:
    return f"{value / 1000:9.1f} us"


def spread(values: Sequence[float], show: Callable[[float], str]) -> str:
    low, high = show(min(values)).strip(), show(max(values)).strip()
    return f"{show(statistics.median(values))}   (min {low}, max {high})"


def shorten(filename: str) -> str:
    path = Path(filename)
    if path.is_relative_to(ROOT):
        return str(path.relative_to(ROOT))
    return f"{path.parent.name}/{path.name}"


def report(n: int, runs: list[dict[str, dict[str, Any]]], top: int) -> bool:
    def per_unit(name: str) -> list[float]:
        return [float(run[name]["per_unit"]) for run in runs]

    actor, task = per_unit("actors-tracemalloc"), per_unit("tasks-tracemalloc")
    actor_rss, task_rss, one_chart = per_unit("actors-rss"), per_unit("tasks-rss"), per_unit("chart")
    ratio = [a / t for a, t in zip(actor, task, strict=True)]
    ratio_rss = [a / t for a, t in zip(actor_rss, task_rss, strict=True)]
    ratio_chart = [a / c for a, c in zip(actor, one_chart, strict=True)]
    print(f"\nmemory per resident idle actor, N = {n:,} (median of {len(runs)} runs)")
    print(f"  idle actor, tracemalloc             {spread(actor, kib)}")
    print(f"  bare parked task, tracemalloc       {spread(task, kib)}")
    print(f"  ratio actor / bare task             {statistics.median(ratio):8.2f}x")
    print(f"  idle actor, RSS growth              {spread(actor_rss, kib)}")
    print(f"  bare parked task, RSS growth        {spread(task_rss, kib)}")
    print(f"  ratio actor / bare task (RSS)       {statistics.median(ratio_rss):8.2f}x")
    print(f"  one Lifecycle chart, tracemalloc    {spread(one_chart, kib)}")
    print(f"  ratio actor / chart                 {statistics.median(ratio_chart):8.2f}x")
    charts = max(int(run["actors-tracemalloc"]["charts_alive"]) for run in runs)
    print(f"  Lifecycle instances alive with N idle actors: {charts}")

    print(f"\nlatency (median over runs of each run's median and p99; {n:,} samples each)")
    print(f"  {'':34}{'median':>12}{'p99':>13}{'ratio median':>15}{'ratio p99':>11}")
    labels = (
        ("queue", "asyncio.Queue round trip (base)"),
        ("spawn", "spawn: ask to a new key"),
        ("ask", "ask to a resident actor"),
        ("chart", "build one chart (restore)"),
    )
    for name, label in labels:
        median = [float(run["timing"][name]["median"]) for run in runs]
        tail = [float(run["timing"][name]["p99"]) for run in runs]
        r_median = [
            float(run["timing"][name]["median"]) / float(run["timing"]["queue"]["median"]) for run in runs
        ]
        r_tail = [float(run["timing"][name]["p99"]) / float(run["timing"]["queue"]["p99"]) for run in runs]
        print(
            f"  {label:34}{usec(statistics.median(median))}{usec(statistics.median(tail))}"
            f"{statistics.median(r_median):14.2f}x{statistics.median(r_tail):10.2f}x"
        )

    sites = runs[0]["actors-tracemalloc"]["sites"]
    print(f"\nwhere an idle actor's memory goes (run 1, top {top} sites, bytes per actor)")
    for filename, lineno, size in sites:
        where = f"{shorten(filename)}:{lineno}"
        print(f"  {size / n:6.0f} B  {where:32} {linecache.getline(filename, lineno).strip()}")

    passed = statistics.median(actor) <= TARGET_BYTES and charts == 0
    verdict = "PASS" if passed else "FAIL"
    print(
        f"\ntarget: <= {TARGET_BYTES // 1024} KiB per idle actor (tracemalloc), no chart held: {verdict} "
        f"({statistics.median(actor) / 1024:.2f} KiB, {charts} charts alive)"
    )
    return passed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0] if __doc__ else None)
    parser.add_argument("--actors", type=int, default=10_000, help="resident idle actors (default 10000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs of every probe (default 3)")
    parser.add_argument("--top", type=int, default=8, help="allocation sites to list (default 8)")
    parser.add_argument(
        "--servers-in-db",
        type=int,
        default=100_000,
        help="servers in the database for the replica RSS measurement; 0 skips it (default 100000)",
    )
    parser.add_argument("--wake", type=int, default=1000, help="actors the replica wakes (default 1000)")
    parser.add_argument("--probe", choices=PROBES, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.probe is not None:
        print(json.dumps(probe(args.probe, args.actors, args.top)))
        return 0
    print(f"machine: {machine()}")
    print(f"run: {args.actors:,} actors, --repeat {args.repeat}; each probe in a fresh interpreter")
    runs: list[dict[str, dict[str, Any]]] = []
    for number in range(1, args.repeat + 1):
        print(f"  run {number}/{args.repeat} ...", flush=True)
        runs.append({name: run_probe(name, args.actors, args.top) for name in PROBES})
    passed = report(args.actors, runs, args.top)
    if args.servers_in_db > 0:
        print(
            f"\nreplica: {args.servers_in_db:,} servers in the database, {args.wake:,} woken; "
            f"machine now: {machine()}",
            flush=True,
        )
        passed = asyncio.run(replica_memory.run(args.servers_in_db, args.wake)) and passed
    return 0 if passed else 1


if __name__ == "__main__":
    sys.exit(common.entry("bench.actors", main))
