"""One worker process of the peer: a BullMQ `Worker` running `jobs.create` and `jobs.delete`.

    python -m bench.peer.worker --redis URL --prefix P --queue provision --database URL \
        --lab-env LAB/lab.env [--concurrency 4] [--lock-duration 10000] [--stalled-interval 5000]

The benchmark starts two of these and kills one with SIGKILL now and then, as a deployment loses a
worker; SIGTERM closes the worker gracefully (it finishes the jobs it holds). Options are BullMQ's own
(`WorkerOptions`), at the documented defaults except the lock and stall timings, which are scaled down
as ours' lease timings are for the lab (see bench/peer/__init__.py). It prints `READY` once
it takes jobs, then one timestamped line per job step, failure and stall.
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import signal
import sys
from pathlib import Path
from typing import Any

import asyncpg
from bullmq import Worker

from bench.peer import jobs
from zlh_actors.lab import settings as lab_settings
from zlh_actors.proxmox import client as client_module

READY = "READY"


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.peer.worker", description=__doc__)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--queue", required=True)
    parser.add_argument("--database", required=True)
    parser.add_argument("--lab-env", required=True, type=Path)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--lock-duration", type=int, default=10_000, help="ms (BullMQ's default: 30000)")
    parser.add_argument("--stalled-interval", type=int, default=5_000, help="ms (BullMQ's default: 30000)")
    parser.add_argument("--max-stalled-count", type=int, default=1, help="BullMQ's default: 1")
    parser.add_argument("--settle", type=float, default=0.3, help="seconds after the agent answers")
    parser.add_argument("--lock-wait", type=float, default=60.0)
    return parser.parse_args(argv)


log = logging.getLogger("bench.peer.worker")


def say(line: str) -> None:
    log.info("%s", line)


async def _context(args: argparse.Namespace, pool: asyncpg.Pool) -> tuple[jobs.Context, client_module.Client]:
    lab = lab_settings.load(args.lab_env)
    pve = client_module.Client(lab.proxmox(pool_size=args.concurrency + 2))
    guests = await pve.get("cluster/resources", type="vm")
    template_node = next(str(g["node"]) for g in guests if int(g.get("vmid", 0)) == lab.template_vmid)
    nodes = tuple(sorted(str(n["node"]) for n in await pve.get("nodes") if n.get("status") == "online"))
    context = jobs.Context(
        pool=pool,
        pve=pve,
        template_vmid=lab.template_vmid,
        template_node=template_node,
        nodes=nodes,
        subnet=ipaddress.IPv4Network(lab.ip_subnet),
        agent_port=lab.agent_port,
        settle=args.settle,
        lock_wait=args.lock_wait,
    )
    return context, pve


async def run(args: argparse.Namespace) -> None:
    pool = await asyncpg.create_pool(args.database, min_size=1, max_size=args.concurrency + 2)
    context, pve = await _context(args, pool)

    async def process(job: Any, token: str) -> str:
        return await jobs.HANDLERS[job.name](context, job.data)

    worker = Worker(
        args.queue,
        process,
        {
            "connection": args.redis,
            "prefix": args.prefix,
            "concurrency": args.concurrency,
            "lockDuration": args.lock_duration,
            "stalledInterval": args.stalled_interval,
            "maxStalledCount": args.max_stalled_count,
        },
    )
    worker.on("active", lambda job, *_: say(f"run {job.id} for {job.data['server_id']}"))
    worker.on("failed", lambda job, err: say(f"failed {job.id} attempt {job.attemptsMade}: {err!r}"))
    worker.on("stalled", lambda job_id, *_: say(f"stalled {job_id}"))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    say(READY)
    try:
        await stop.wait()
    finally:
        await worker.close()
        await pve.close()
        await pool.close()


def main(argv: list[str] | None = None) -> int:
    # One line per step with a timestamp, so a finding can be traced to the runs that made it.
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(asctime)s %(process)d %(message)s")
    logging.getLogger("zlh_actors").setLevel(logging.WARNING)
    asyncio.run(run(parse(sys.argv[1:] if argv is None else argv)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
