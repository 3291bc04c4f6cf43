"""The scenario both systems run: the same clients, the same faults, drawn from one seed.

`servers` clients, at most `in_flight` at once, each carry one server through create -> running ->
delete -> deleted, as a user of either system would:

- a create is sent with the client's idempotency key (ours: the `Idempotency-Key` header; the peer:
  the same key in its row and as the BullMQ `jobId`); a request that fails (a replica killed under
  it) is sent again, with the same key, after `RESEND` seconds;
- a seeded share (`lost_answers`) of clients lose the answer to their first create and send it again
  after a seeded delay, as a browser retries a request that timed out;
- a create not `running` within `retry_after` is sent again (same key), and so is a delete not done;
- a client that has waited `give_up` seconds for running deletes the server anyway, as a user
  abandons a stuck request; one that waited as long for the delete stops waiting.

Faults: `kills` times a process (a worker of the peer, a replica of ours; which one is seeded) gets
SIGKILL while jobs are in flight, and is restarted after a seeded pause; `freezes` times one gets
SIGSTOP for `freeze_secs`, then SIGCONT (a VM paused, a long GC, a swap storm: the textbook case of a
job lock or lease running out under a process that is still alive). Each fault fires when a seeded
number of clients have started, plus a seeded delay, so it lands at the same point of the work in
both systems however fast each one is.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
import uuid
from collections.abc import Sequence
from typing import Protocol

RESEND = 0.5
POLL = 0.2


@dataclasses.dataclass(frozen=True)
class Scenario:
    servers: int = 60
    in_flight: int = 12
    processes: int = 2
    seed: int = 7
    kills: int = 3
    freezes: int = 1
    freeze_secs: float = 15.0
    lost_answers: float = 0.25
    retry_after: float = 20.0
    give_up: float = 180.0


@dataclasses.dataclass(frozen=True)
class Fault:
    kind: str  # "kill" | "freeze"
    after_started: int
    delay: float
    target: int
    pause: float  # kill: seconds before the restart; freeze: seconds frozen


def plan(scenario: Scenario) -> list[Fault]:
    """The seeded fault schedule: the same for both systems."""
    rng = random.Random(f"faults-{scenario.seed}")
    kinds = ["kill"] * scenario.kills + ["freeze"] * scenario.freezes
    rng.shuffle(kinds)
    faults = []
    for index, kind in enumerate(kinds):
        # Spread over the middle of the run, where every process has work in flight.
        share = 0.1 + 0.7 * (index + 1) / (len(kinds) + 1)
        faults.append(
            Fault(
                kind=kind,
                after_started=max(1, round(scenario.servers * share)),
                delay=rng.uniform(0.5, 3.0),
                target=rng.randrange(scenario.processes),
                pause=rng.uniform(1.0, 3.0) if kind == "kill" else scenario.freeze_secs,
            )
        )
    return faults


class System(Protocol):
    """What the scenario needs from a system under test."""

    async def create(self, index: int, key: str, name: str) -> str | None:
        """Send one create; the server id, or None if no answer came."""

    async def state(self, server_id: str) -> str | None:
        """The server's state as the system reports it (None: no answer)."""

    async def delete(self, server_id: str) -> bool:
        """Send one delete; whether it was accepted."""

    async def kill(self, target: int) -> None: ...

    async def restart(self, target: int) -> None: ...

    def freeze(self, target: int) -> None: ...

    def thaw(self, target: int) -> None: ...


@dataclasses.dataclass
class Flow:
    """One client's server, and what happened to it (times are `time.monotonic()`)."""

    index: int
    key: str
    name: str
    server_id: str | None = None
    started: float = 0.0
    running_at: float | None = None
    deleted_at: float | None = None
    finished: float = 0.0
    creates_sent: int = 0
    deletes_sent: int = 0

    @property
    def complete(self) -> bool:
        return self.running_at is not None and self.deleted_at is not None

    @property
    def create_latency(self) -> float | None:
        return None if self.running_at is None else self.running_at - self.started


@dataclasses.dataclass(frozen=True)
class FaultEvent:
    at: float
    kind: str
    target: int


@dataclasses.dataclass
class Run:
    flows: list[Flow]
    faults: list[FaultEvent]
    started: float
    ended: float

    @property
    def elapsed(self) -> float:
        """From the first create to the last client done (a stuck client waits `give_up` first)."""
        return self.ended - self.started

    def deleted(self) -> list[uuid.UUID]:
        """The servers whose clients saw them deleted."""
        return [uuid.UUID(flow.server_id) for flow in self.flows if flow.deleted_at and flow.server_id]

    @property
    def throughput(self) -> float:
        """Complete flows per second, until the last complete flow ended (stuck clients not waited for).

        This one flatters a system that leaves a client stuck: its wait is not counted. `wall_throughput`
        counts it, and is the one to compare; both are printed."""
        done = [flow.finished for flow in self.flows if flow.complete]
        return len(done) / (max(done) - self.started) if done else 0.0

    @property
    def wall_throughput(self) -> float:
        """Complete flows per second of wall time: until every client was done or had given up."""
        done = sum(flow.complete for flow in self.flows)
        return done / self.elapsed if self.elapsed > 0 else 0.0


class _Progress:
    """How many clients have started, and a way to wait for a count."""

    def __init__(self) -> None:
        self.started = 0
        self._changed = asyncio.Condition()

    async def start_one(self) -> None:
        async with self._changed:
            self.started += 1
            self._changed.notify_all()

    async def reached(self, count: int) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.started >= count)


async def _create(system: System, flow: Flow) -> str:
    while True:
        flow.creates_sent += 1
        server_id = await system.create(flow.index, flow.key, flow.name)
        if server_id is not None:
            return server_id
        await asyncio.sleep(RESEND)


async def _delete(system: System, flow: Flow, server_id: str) -> None:
    while True:
        flow.deletes_sent += 1
        if await system.delete(server_id):
            return
        await asyncio.sleep(RESEND)


async def _until(
    system: System, flow: Flow, server_id: str, wanted: str, deadline: float, again: float
) -> bool:
    """Poll until the server is in `wanted`, re-sending the request every `again` seconds."""
    resend_at = time.monotonic() + again
    while time.monotonic() < deadline:
        if await system.state(server_id) == wanted:
            return True
        if time.monotonic() >= resend_at:
            if wanted == "running":
                await _create(system, flow)
            else:
                await _delete(system, flow, server_id)
            resend_at = time.monotonic() + again
        await asyncio.sleep(POLL)
    return False


async def _client(system: System, scenario: Scenario, flow: Flow, rng: random.Random) -> None:
    flow.started = time.monotonic()
    lost_answer = rng.random() < scenario.lost_answers
    lost_delay = rng.uniform(0.2, 2.0)
    server_id = await _create(system, flow)
    if lost_answer:
        await asyncio.sleep(lost_delay)
        server_id = await _create(system, flow)
    flow.server_id = server_id
    deadline = flow.started + scenario.give_up
    if await _until(system, flow, server_id, "running", deadline, scenario.retry_after):
        flow.running_at = time.monotonic()
    await _delete(system, flow, server_id)
    deadline = time.monotonic() + scenario.give_up
    if await _until(system, flow, server_id, "deleted", deadline, scenario.retry_after):
        flow.deleted_at = time.monotonic()
    flow.finished = time.monotonic()


async def _inject(
    system: System, faults: Sequence[Fault], progress: _Progress, events: list[FaultEvent]
) -> None:
    for fault in faults:
        await progress.reached(fault.after_started)
        await asyncio.sleep(fault.delay)
        events.append(FaultEvent(time.monotonic(), fault.kind, fault.target))
        if fault.kind == "kill":
            await system.kill(fault.target)
            await asyncio.sleep(fault.pause)
            await system.restart(fault.target)
        else:
            system.freeze(fault.target)
            await asyncio.sleep(fault.pause)
            system.thaw(fault.target)


async def run(system: System, scenario: Scenario, label: str) -> Run:
    """Every client's flow, with the fault schedule injected along; returns when all are done."""
    rng = random.Random(f"clients-{scenario.seed}")
    flows = [
        Flow(index, f"{label}-{scenario.seed}-{index}", f"b{index}") for index in range(scenario.servers)
    ]
    choices = [random.Random(rng.random()) for _ in flows]
    progress = _Progress()
    events: list[FaultEvent] = []
    slots = asyncio.Semaphore(scenario.in_flight)

    async def one(flow: Flow, choice: random.Random) -> None:
        async with slots:
            await progress.start_one()
            await _client(system, scenario, flow, choice)

    started = time.monotonic()
    injector = asyncio.create_task(
        _inject(system, plan(scenario), progress, events), name="peer-bench:faults"
    )
    try:
        await asyncio.gather(*(one(flow, choice) for flow, choice in zip(flows, choices, strict=True)))
        await injector
    finally:
        injector.cancel()
    return Run(flows, events, started, max(flow.finished for flow in flows))
