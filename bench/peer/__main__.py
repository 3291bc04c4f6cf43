"""Run the scenario against zlh-actors and against the BullMQ peer, and print them side by side.

    .venv/bin/python -m bench.peer [--servers 60] [--in-flight 12] [--seed 7] [--kills 3] [--freezes 1]
        [--only ours|peer] [--keep]

Each system gets a fresh lab with the same settings, a fresh database and the same seeded scenario.
The exit status is 0 when ours ran clean (no invariant violation, no anomaly, every flow complete);
what the peer shows is the finding, not a failure. See bench/peer/__init__.py for the design.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Protocol

from bench import common
from bench.common import machine
from bench.peer import infra, observe, ours, peer, report, scenario
from storage import database
from zlh_actors.lab import invariants, scratchdb, world

QUIESCE_TIMEOUT = 90.0
# Seconds the records must stay unchanged before the end state is read: longer than a frozen worker's
# stale run takes to finish once it is thawed (see observe.steady).
STEADY = 10.0


def parse(argv: list[str]) -> argparse.Namespace:
    defaults = scenario.Scenario()
    parser = argparse.ArgumentParser(prog="python -m bench.peer", description=__doc__.split("\n\n")[0])
    parser.add_argument("--servers", type=int, default=defaults.servers)
    parser.add_argument("--in-flight", type=int, default=defaults.in_flight)
    parser.add_argument("--processes", type=int, default=defaults.processes, help="replicas / workers")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--kills", type=int, default=defaults.kills)
    parser.add_argument("--freezes", type=int, default=defaults.freezes)
    parser.add_argument("--freeze-secs", type=float, default=defaults.freeze_secs)
    parser.add_argument("--lost-answers", type=float, default=defaults.lost_answers)
    parser.add_argument("--retry-after", type=float, default=defaults.retry_after)
    parser.add_argument("--give-up", type=float, default=defaults.give_up)
    parser.add_argument("--time-scale", type=float, default=0.02, help="the lab's PVE seconds, in seconds")
    parser.add_argument("--warmup", type=float, default=0.3, help="the stand-in game's boot, in seconds")
    parser.add_argument("--worker-concurrency", type=int, default=peer.WorkerOptions.concurrency)
    parser.add_argument("--lock-duration", type=int, default=peer.WorkerOptions.lock_duration, help="ms")
    parser.add_argument(
        "--stalled-interval", type=int, default=peer.WorkerOptions.stalled_interval, help="ms"
    )
    parser.add_argument("--only", choices=("ours", "peer"))
    parser.add_argument("--keep", action="store_true", help="keep the labs and logs (printed path)")
    return parser.parse_args(argv)


def _scenario(args: argparse.Namespace) -> scenario.Scenario:
    return scenario.Scenario(
        servers=args.servers,
        in_flight=args.in_flight,
        processes=args.processes,
        seed=args.seed,
        kills=args.kills,
        freezes=args.freezes,
        freeze_secs=args.freeze_secs,
        lost_answers=args.lost_answers,
        retry_after=args.retry_after,
        give_up=args.give_up,
    )


def _lab(directory: Path, args: argparse.Namespace) -> world.Lab:
    return world.Lab(directory, time_scale=args.time_scale, warmup=args.warmup, subnet=common.lab_subnet())


class Measured(scenario.System, Protocol):
    """A system the benchmark can run the scenario against and then inspect."""

    async def holdings(self) -> list[observe.Holding]: ...

    async def quiesce(self, timeout: float) -> bool: ...

    async def records(self) -> list[invariants.Record]: ...

    async def check(self) -> invariants.Report: ...


async def _measure(
    system: Measured, lab: world.Lab, args: argparse.Namespace, key: str, label: str
) -> report.Result:
    """Run the scenario with the sampler on, wait until the system is quiescent, read the end state."""
    sampler = observe.Sampler(system.holdings, lab.cluster)
    sampler.start()
    try:
        run = await scenario.run(system, _scenario(args), key)
        settled = await system.quiesce(QUIESCE_TIMEOUT)
        settled = settled and await observe.steady(system.holdings, STEADY, QUIESCE_TIMEOUT)
    finally:
        seen = await sampler.stop()
    checked = await system.check()
    guests = await invariants.read_containers(lab.cluster)
    end = observe.final(await system.records(), guests, run.deleted())
    return report.Result(label, run, settled, seen, end, checked)


async def run_ours(args: argparse.Namespace, admin: str, work: Path) -> report.Result:
    logs = work / "ours-logs"
    logs.mkdir()
    async with (
        _lab(work / "ours-lab", args) as lab,
        scratchdb.database_on(admin, "zlh_bench_ours") as url,
    ):
        pool = await database.create_pool(url, max_size=4)
        system = ours.Ours(lab, url, pool, logs, args.processes)
        try:
            await system.start()
            return await _measure(system, lab, args, "ours", report.OURS)
        finally:
            await system.close()
            await pool.close()


async def run_peer(args: argparse.Namespace, admin: str, redis_url: str, work: Path) -> report.Result:
    logs = work / "peer-logs"
    logs.mkdir()
    options = peer.WorkerOptions(
        concurrency=args.worker_concurrency,
        lock_duration=args.lock_duration,
        stalled_interval=args.stalled_interval,
        settle=args.warmup,
    )
    async with (
        _lab(work / "peer-lab", args) as lab,
        scratchdb.database_on(admin, "zlh_bench_peer", migrated=False) as url,
    ):
        pool = await database.create_pool(url, max_size=4)
        system = peer.Peer(lab, url, pool, redis_url, logs, args.processes, options)
        try:
            await system.start()
            result = await _measure(system, lab, args, "peer", report.PEER)
            stats = await system.job_stats()
        finally:
            await system.close()
            await pool.close()
    notes = (
        f"BullMQ: {stats.jobs} jobs, {stats.runs} processor runs, {stats.rerun_jobs} jobs run more than once",
        f"BullMQ: {stats.stalled} stalls recovered, {stats.failed} jobs failed for good, "
        f"{stats.unfinished} unfinished",
    )
    return dataclasses.replace(result, notes=notes)


def _plan_lines(args: argparse.Namespace) -> list[str]:
    lines = []
    for fault in scenario.plan(_scenario(args)):
        what = "kill -9" if fault.kind == "kill" else "SIGSTOP"
        lines.append(
            f"  {what} process #{fault.target} once {fault.after_started} clients started, "
            f"+{fault.delay:.1f}s; "
            f"{'restart' if fault.kind == 'kill' else 'SIGCONT'} after {fault.pause:.1f}s"
        )
    return lines


async def main(args: argparse.Namespace) -> int:
    print(f"machine: {machine()}")
    print(
        f"scenario: {args.servers} servers, {args.in_flight} in flight, {args.processes} processes, "
        f"seed {args.seed}, lab time scale {args.time_scale}, warm-up {args.warmup}s"
    )
    print("faults (the same for both):", *_plan_lines(args), sep="\n")
    work = Path(tempfile.mkdtemp(prefix="zlh-bench-peer-"))
    results: list[report.Result] = []
    try:
        async with scratchdb.server() as admin:
            if args.only in (None, "ours"):
                results.append(await run_ours(args, admin, work))
            if args.only in (None, "peer"):
                async with infra.redis_server() as redis_url:
                    results.append(await run_peer(args, admin, redis_url, work))
    finally:
        if args.keep:
            print(f"labs and logs kept in {work}")
        else:
            with contextlib.suppress(OSError):
                shutil.rmtree(work)
    print()
    print(report.render(report.rows(results)))
    print()
    for result in results:
        print("\n".join(report.details(result)))
        print(result.report.table())
        print()
    mine = [result for result in results if result.label == report.OURS]
    if mine and not mine[0].clean:
        print("zlh-actors did not run clean: see above")
        return 1
    return 0


if __name__ == "__main__":
    arguments = parse(sys.argv[1:])
    sys.exit(common.entry("bench.peer", lambda: asyncio.run(main(arguments))))
