"""What the benchmark counts for each system, the same way for both.

During the run a `Sampler` reads the system's records and Proxmox's containers (fakepve's model,
ground truth) every `interval` and remembers:

- duplicates: a server that had two or more containers marked with its id at the same moment;
- VMIDs handed out twice: a VMID held by two live records at the same moment (the system's own
  bookkeeping: ours' allocation rows, the peer's rows);
- lost containers: a server recorded `running` whose container (at the record's VMID, marked with
  its id) was missing in two consecutive samples: destroyed, or another server's, under it.

These catch what the end state no longer shows: a duplicate whose recorded twin was later destroyed
by the flow's delete leaves one container, indistinguishable from a plain leak; a container destroyed
under a running server leaves nothing at all once that server is deleted too.

After the run, once quiescent, `final` counts leaks (containers claiming one of our ids that no live
record accounts for at that VMID) and records without a container (live records whose state says one
must exist). The invariant checker (`zlh_actors.lab.invariants`) runs besides; these counts say the
same things in the words of the issue.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable

from zlh_actors.lab import cluster as lab_cluster
from zlh_actors.lab import invariants


@dataclasses.dataclass(frozen=True)
class Holding:
    """A record as sampled: its state, the VMID it names, whether it holds it, whether it runs."""

    server_id: uuid.UUID
    state: str
    vmid: int | None
    holds_vmid: bool
    running: bool


ReadRecords = Callable[[], Awaitable[list[Holding]]]


@dataclasses.dataclass
class Anomalies:
    """What the sampler saw, by server id or VMID, with when it was first seen (monotonic)."""

    duplicates: dict[uuid.UUID, float] = dataclasses.field(default_factory=dict)
    shared_vmids: dict[int, float] = dataclasses.field(default_factory=dict)
    lost: dict[uuid.UUID, float] = dataclasses.field(default_factory=dict)
    samples: int = 0


class Sampler:
    """Samples records and containers every `interval` seconds in a task of its own."""

    def __init__(
        self, read_records: ReadRecords, cluster: lab_cluster.Cluster, interval: float = 0.25
    ) -> None:
        self._read_records = read_records
        self._cluster = cluster
        self._interval = interval
        self.seen = Anomalies()
        self._suspect: set[uuid.UUID] = set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="peer-bench:sampler")

    async def stop(self) -> Anomalies:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        return self.seen

    async def _run(self) -> None:
        while True:
            # Records first: a record that names a container was written after the clone began, so
            # the container read afterwards exists unless something destroyed it.
            held = await self._read_records()
            guests = await invariants.read_containers(self._cluster)
            self.sample(held, guests, time.monotonic())
            await asyncio.sleep(self._interval)

    def sample(self, held: list[Holding], guests: list[invariants.Container], now: float) -> None:
        self.seen.samples += 1
        owners: dict[uuid.UUID, list[int]] = collections.defaultdict(list)
        at: dict[int, uuid.UUID | None] = {}
        for guest in guests:
            owner = None if guest.marks is None else guest.marks.server_id
            at[guest.vmid] = owner
            if owner is not None:
                owners[owner].append(guest.vmid)
        for owner, vmids in owners.items():
            if len(vmids) > 1:
                self.seen.duplicates.setdefault(owner, now)
        holders: dict[int, set[uuid.UUID]] = collections.defaultdict(set)
        for record in held:
            if record.holds_vmid and record.vmid is not None:
                holders[record.vmid].add(record.server_id)
        for vmid, servers in holders.items():
            if len(servers) > 1:
                self.seen.shared_vmids.setdefault(vmid, now)
        suspect = {
            record.server_id
            for record in held
            if record.running and (record.vmid is None or at.get(record.vmid) != record.server_id)
        }
        for server_id in suspect & self._suspect:
            self.seen.lost.setdefault(server_id, now)
        self._suspect = suspect


async def steady(read_records: ReadRecords, quiet: float, timeout: float) -> bool:
    """Wait until the records stay the same for `quiet` seconds; False if `timeout` passes first.

    A queue that reports nothing active is not enough: a worker that lost its job's lock (frozen,
    then resumed) goes on running it while BullMQ counts it as done, and writes afterwards.
    """
    deadline = time.monotonic() + timeout
    last = sorted(await read_records(), key=str)
    since = time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.25)
        now = sorted(await read_records(), key=str)
        if now != last:
            last, since = now, time.monotonic()
    return True


@dataclasses.dataclass(frozen=True)
class Final:
    """The end state, once quiescent."""

    leaked: list[str]
    without_container: list[str]
    live_records: int
    resurrected: list[str]  # servers their client saw deleted, live again


def final(
    records: Iterable[invariants.Record], guests: Iterable[invariants.Container], deleted: Iterable[uuid.UUID]
) -> Final:
    by_id = {record.server_id: record for record in records}
    leaked = []
    for guest in guests:
        if guest.marks is None:
            if guest.tagged:
                leaked.append(f"container {guest.vmid}: tagged zlh, no owner line")
            continue
        record = by_id.get(guest.marks.server_id)
        if record is None or not record.live or (record.vmid is not None and record.vmid != guest.vmid):
            state = "unknown" if record is None else ("deleted" if not record.live else f"at {record.vmid}")
            leaked.append(
                f"container {guest.vmid} ({guest.status}) of server {guest.marks.server_id} ({state})"
            )
    placed = {(guest.marks.server_id, guest.vmid) for guest in guests if guest.marks is not None}
    missing = [
        f"server {record.server_id} (VMID {record.vmid})"
        for record in by_id.values()
        if record.live
        and record.needs_container
        and not any(server == record.server_id and record.vmid in (None, vmid) for server, vmid in placed)
    ]
    live = sum(1 for record in by_id.values() if record.live)
    back = [f"server {server_id}" for server_id in deleted if by_id[server_id].live]
    return Final(sorted(leaked), sorted(missing), live, sorted(back))
