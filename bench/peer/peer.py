"""The job-queue peer as the scenario drives it: a BullMQ queue, worker processes, its own table.

The "API" of the peer runs in the benchmark's process, as two calls a web handler would make: insert
the row for the idempotency key (`records.submit`, which returns the existing row on a repeat), then
`Queue.add("create", ..., {"jobId": "create-<key>"})`, BullMQ's documented deduplication (a job whose
id exists is not added again). A delete is `Queue.add("delete", ..., {"jobId": "delete-<id>"})`. The
state a client polls is the row's.

Job options are the documented ones for retrying work: `attempts` 5 with exponential backoff from
1 s, and finished jobs kept for a day (`removeOnComplete`/`removeOnFail` by age, as the production
guide advises, rather than forever), so a repeated add within a day is deduplicated.

Worker processes (`bench.peer.worker`) are started, killed with SIGKILL, frozen and restarted here.
"""

from __future__ import annotations

import asyncio
import dataclasses
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
from bullmq import Queue

from bench.peer import infra, jobs, observe, records, worker
from zlh_actors.lab import invariants, replicas, world

QUEUE = "provision"
KEEP_FINISHED = {"age": 24 * 3600}
JOB_OPTIONS = {
    "attempts": 5,
    "backoff": {"type": "exponential", "delay": 1000},
    "removeOnComplete": KEEP_FINISHED,
    "removeOnFail": KEEP_FINISHED,
}
READY_TIMEOUT = 60.0
UNFINISHED = ("active", "waiting", "delayed", "prioritized", "waiting-children")


@dataclasses.dataclass(frozen=True)
class WorkerOptions:
    concurrency: int = 4
    lock_duration: int = 10_000
    stalled_interval: int = 5_000
    max_stalled_count: int = 1
    settle: float = 0.3


@dataclasses.dataclass(frozen=True)
class JobStats:
    """What BullMQ's own bookkeeping says about the run's jobs."""

    jobs: int
    runs: int  # times a processor was started, over all jobs
    rerun_jobs: int  # jobs started more than once
    stalled: int  # stalls recovered (the jobs' stalled counters)
    failed: int  # jobs that ended failed (attempts or stalls exhausted)
    unfinished: int


class Peer:
    """The scenario's `System` for the BullMQ peer (see the module docstring)."""

    def __init__(
        self,
        lab: world.Lab,
        url: str,
        pool: asyncpg.Pool,
        redis_url: str,
        logs: Path,
        count: int,
        options: WorkerOptions,
    ) -> None:
        self.lab = lab
        self.url = url
        self.pool = pool
        self.redis_url = redis_url
        self.prefix = f"zlhpeer{uuid.uuid4().hex[:10]}"
        self.logs = logs
        self.count = count
        self.options = options
        self.queue: Any = None
        self.workers: list[subprocess.Popen[bytes]] = []
        self._starts = [0] * count
        self._files: list[Any] = []

    async def start(self) -> None:
        await records.create_schema(self.pool)
        self.queue = Queue(
            QUEUE, {"connection": self.redis_url, "prefix": self.prefix, "defaultJobOptions": JOB_OPTIONS}
        )
        self.workers = [self._spawn(target) for target in range(self.count)]
        await asyncio.gather(*(self._ready(target) for target in range(self.count)))

    def _log_path(self, target: int) -> Path:
        return self.logs / f"worker{target}.{self._starts[target]}.log"

    def _spawn(self, target: int) -> subprocess.Popen[bytes]:
        self._starts[target] += 1
        out = self._log_path(target).open("wb")
        self._files.append(out)
        o = self.options
        args = [
            "--redis", self.redis_url, "--prefix", self.prefix, "--queue", QUEUE, "--database", self.url,
            "--lab-env", str(self.lab.env_file), "--concurrency", str(o.concurrency),
            "--lock-duration", str(o.lock_duration), "--stalled-interval", str(o.stalled_interval),
            "--max-stalled-count", str(o.max_stalled_count), "--settle", str(o.settle),
        ]  # fmt: skip
        return subprocess.Popen(
            [sys.executable, "-m", "bench.peer.worker", *args],
            cwd=replicas.ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    async def _ready(self, target: int) -> None:
        deadline = time.monotonic() + READY_TIMEOUT
        path = self._log_path(target)
        while worker.READY not in path.read_text(errors="replace"):
            if self.workers[target].poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"peer worker {target} did not start: {path.read_text()[-2000:]}")
            await asyncio.sleep(0.05)

    async def close(self) -> None:
        """Stop the workers and the queue; the run's Redis keys are deleted whatever fails on the way."""
        try:
            for process in self.workers:
                if process.poll() is None:
                    process.send_signal(signal.SIGCONT)
                    process.terminate()
            for process in self.workers:
                try:
                    await asyncio.to_thread(process.wait, 30)
                except subprocess.TimeoutExpired:
                    process.kill()
                    await asyncio.to_thread(process.wait)
            for out in self._files:
                out.close()
            if self.queue is not None:
                await self.queue.close()
        finally:
            await infra.delete_prefix(self.redis_url, self.prefix)

    # --- the clients' side --------------------------------------------------------------------------

    async def create(self, index: int, key: str, name: str) -> str | None:
        server_id = await records.submit(self.pool, key, name)
        await self.queue.add("create", {"server_id": str(server_id)}, {"jobId": f"create-{key}"})
        return str(server_id)

    async def state(self, server_id: str) -> str | None:
        return await records.state(self.pool, uuid.UUID(server_id))

    async def delete(self, server_id: str) -> bool:
        await self.queue.add("delete", {"server_id": server_id}, {"jobId": f"delete-{server_id}"})
        return True

    # --- faults -------------------------------------------------------------------------------------

    async def kill(self, target: int) -> None:
        self.workers[target].kill()
        await asyncio.to_thread(self.workers[target].wait)

    async def restart(self, target: int) -> None:
        self.workers[target] = self._spawn(target)
        await self._ready(target)

    def freeze(self, target: int) -> None:
        self.workers[target].send_signal(signal.SIGSTOP)

    def thaw(self, target: int) -> None:
        self.workers[target].send_signal(signal.SIGCONT)

    # --- looking ------------------------------------------------------------------------------------

    async def holdings(self) -> list[observe.Holding]:
        return [
            observe.Holding(
                server_id=row.id,
                state=row.state,
                vmid=row.vmid,
                holds_vmid=row.holds_vmid,
                running=row.state == records.RUNNING,
            )
            for row in await records.every(self.pool)
        ]

    async def quiesce(self, timeout: float) -> bool:
        """Wait until no job is waiting, delayed or active; False if time ran out."""
        deadline = time.monotonic() + timeout
        while True:
            counts = await self.queue.getJobCounts(*UNFINISHED)
            if not any(counts.values()):
                return True
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)

    async def records(self) -> list[invariants.Record]:
        return [
            invariants.Record(
                server_id=row.id,
                generation=jobs.GENERATION,
                live=row.live,
                needs_container=row.state == records.RUNNING,
                vmid=row.vmid,
            )
            for row in await records.every(self.pool)
        ]

    async def check(self) -> invariants.Report:
        """Invariants 2 and 3, the ones that need only records and containers (the rest are ours')."""
        rows = await self.records()
        guests = await invariants.read_containers(self.lab.cluster)
        found = invariants.check_containers(rows, guests)
        mine = sum(1 for guest in guests if guest.ours)
        return invariants.Report(found, {2: len(guests), 3: len(rows) + mine})

    async def job_stats(self) -> JobStats:
        every = await self.queue.getJobs(["completed", "failed", *UNFINISHED])
        runs = [max(job.attemptsStarted, job.attemptsMade) for job in every]
        counts = await self.queue.getJobCounts("failed", *UNFINISHED)
        return JobStats(
            jobs=len(every),
            runs=sum(runs),
            rerun_jobs=sum(1 for count in runs if count > 1),
            stalled=sum(job.stalledCounter for job in every),
            failed=counts.get("failed", 0),
            unfinished=sum(counts.get(kind, 0) for kind in UNFINISHED),
        )
