"""The reconciliation pass: observe the shards this replica owns, diff, hand each drift to its owner.

A pass (periodic every `ZLH_RECONCILE_INTERVAL`, or `run_now()` on demand; one at a time) covers
the shards the replica owns when it starts, and reads in this order:

1. the database: the live servers of those shards, and every live VMID allocation of the range;
2. Proxmox: every guest of the cluster (`list_guests`, one request), kept if it is ours to judge:
   a guest tagged with a server id by that server's shard, any other guest by `vmid % shards`, so
   exactly one replica judges each guest;
3. the agents: `GET /v1/status` at the IP of every server that runs in both the database and
   Proxmox (a few at a time, each bounded by the agent client's timeout).

`drift.diff` names the disagreements. The pass then acts, and writes no server state:

- missing, power, agent: a `drift` command in the server's inbox (unless one is already queued).
  The commit wakes the owning actor, which repairs through the chart (`repairs`) and journals it.
- orphan: once the same orphan has been seen for `ZLH_ORPHAN_GRACE`, and a fresh read of its server
  still does not account for it, `destroy` with the marks its tags claim (the driver re-reads the
  description and refuses a guest whose marks differ). Grace times live in memory: a new owner of
  the shard starts the wait again, which only delays.
- foreign: its VMID is marked foreign in `vmid_allocations` (allocation data, not server state; no
  actor owns a VMID nobody holds), so it is never allocated. The unique index on live VMIDs refuses
  the mark if somebody allocated the VMID meanwhile.

Every pass stores a report (`reports`). A pass that cannot observe (Proxmox or the database
unreachable) stores its error and acts on nothing; the next pass tries again. After it, the replica
forgets old settled commands and expired idempotency keys (`retention`).
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any, Protocol

import asyncpg

from storage import allocations, commands, database, queries
from zlh_actors import errors
from zlh_actors.proxmox import errors as pve_errors
from zlh_actors.proxmox import protocol
from zlh_actors.reconciler import drift, repairs, reports, retention
from zlh_actors.runtime import fencing, ownership, shards
from zlh_actors.servers import agent_client

log = logging.getLogger(__name__)

AGENT_POLLS = 16  # agents polled at once


class Owner(Protocol):
    """What the pass needs from its replica: who it is and which shards it owns right now."""

    id: uuid.UUID
    leases: dict[int, fencing.Lease]
    settings: ownership.LeaseSettings


@dataclasses.dataclass(frozen=True)
class Settings:
    interval: float
    orphan_grace: float
    vmid_range: tuple[int, int]
    command_retention: datetime.timedelta


@dataclasses.dataclass(frozen=True)
class _World:
    servers: list[drift.ServerRecord]
    others: list[drift.ServerRecord]
    guests: list[drift.Guest]
    agents: dict[uuid.UUID, drift.AgentView | None]
    allocated: list[int]


def _record(row: asyncpg.Record) -> drift.ServerRecord:
    return drift.ServerRecord(
        id=row["id"],
        state=row["state"],
        desired_state=row["desired_state"],
        node=row["node"],
        vmid=row["vmid"],
        ip=row["ip"],
        generation=row["generation"],
        version=row["version"],
    )


def _guest(found: protocol.GuestSummary) -> drift.Guest:
    return drift.Guest(
        vmid=int(found.vmid),
        node=found.node,
        power=found.status.value,
        kind=found.kind,
        template=found.template,
        tagged=found.tagged,
        server_id=found.server_id,
        generation=found.generation,
    )


def _agent(status: dict[str, Any] | None) -> drift.AgentView | None:
    if status is None:
        return None
    game = status.get("game")
    generation = status.get("generation")
    return drift.AgentView(
        generation=generation if isinstance(generation, int) else None,
        state=str(status.get("state")),
        game_running=bool(game.get("running")) if isinstance(game, dict) else False,
    )


class Reconciler:
    """Runs passes over the owner's shards: `start()` the periodic loop, `run_now()` one pass now."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        driver: protocol.ProxmoxDriver,
        agent: agent_client.AgentClient,
        owner: Owner,
        settings: Settings,
    ) -> None:
        self._pool = pool
        self._driver = driver
        self._agent = agent
        self._owner = owner
        self._settings = settings
        self._lock = asyncio.Lock()
        self._pruning = False
        self._orphans_seen: dict[tuple[int | None, uuid.UUID | None, int | None], float] = {}
        self._latest: reports.Report | None = None
        self._task: asyncio.Task[None] | None = None

    # --- running ------------------------------------------------------------------------------

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._periodic(), name="reconciler")
            self._task.add_done_callback(_finished)

    async def stop(self) -> None:
        """Stop the periodic loop (a pass in progress is cancelled); safe to call twice."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.wait([task])

    async def _periodic(self) -> None:
        while True:
            await asyncio.sleep(self._settings.interval)
            try:
                await self._pass("periodic")
            except Exception:  # the next pass looks again; a bug must not end the loop
                log.exception("reconciliation pass failed")

    def latest(self) -> reports.Report | None:
        """This replica's newest report (`reports.latest(pool)` has every replica's)."""
        return self._latest

    async def run_now(self) -> reports.Report:
        """One pass over the shards this replica owns, now (after any pass in progress)."""
        return await self._pass("on_demand")

    # --- one pass -----------------------------------------------------------------------------

    async def _pass(self, trigger: str) -> reports.Report:
        """One pass, then the retention prune, outside the pass's lock: the next pass (an operator's
        `run_now`) does not wait for this one's prune. A prune already running here is not doubled."""
        async with self._lock:
            report = await self._reconcile(trigger)
        await self._prune()
        return report

    async def _reconcile(self, trigger: str) -> reports.Report:
        started = datetime.datetime.now(datetime.UTC)
        owned = sorted(self._owner.leases)
        entries: list[reports.Entry] = []
        error = None
        try:
            if owned:
                world = await self._observe(owned)
                found = drift.diff(
                    world.servers,
                    world.guests,
                    world.agents,
                    vmid_range=self._settings.vmid_range,
                    allocated_vmids=world.allocated,
                    others=world.others,
                )
                entries = [await self._act(item) for item in found]
                self._forget_orphans_not_in(found)
        except errors.ZlhError as exc:
            error = f"{type(exc).__name__}: {exc}"
            log.warning("reconciliation of shards %s could not look at the world: %s", owned, exc)
        report = reports.Report(
            replica_id=self._owner.id,
            trigger=trigger,
            shards=tuple(owned),
            started_at=started,
            finished_at=max(started, datetime.datetime.now(datetime.UTC)),
            drifts=tuple(entries),
            error=error,
        )
        try:
            async with database.transaction(self._pool) as conn:
                report = await reports.store(conn, report)
        except errors.ZlhError as exc:
            log.warning("could not store the reconciliation report: %s", exc)
        if entries:
            log.info("reconciliation found %s", report.by_kind())
        self._latest = report
        return report

    async def _prune(self) -> None:
        if self._pruning:
            return  # the previous pass's prune is still running here
        self._pruning = True
        try:
            pruned = await retention.prune(self._pool, keep_settled=self._settings.command_retention)
        except errors.ZlhError as exc:
            log.warning("could not forget old commands and expired idempotency keys: %s", exc)
            return
        finally:
            self._pruning = False
        if pruned.commands or pruned.idempotency_keys:
            log.info(
                "forgot %d settled commands and %d expired idempotency keys",
                pruned.commands,
                pruned.idempotency_keys,
            )

    async def _observe(self, owned: list[int]) -> _World:
        count = self._owner.settings.shard_count
        low, high = self._settings.vmid_range
        async with database.transaction(self._pool) as conn:
            servers = [_record(row) for row in await queries.fetch(conn, "reconcile_servers", count, owned)]
            live = await queries.fetch(conn, "live_vmids", low, high)
        allocated = [row["vmid"] for row in live]
        ours = {row["vmid"] for row in live if row["status"] != "foreign"}
        mine = set(owned)

        def judged_here(guest: protocol.GuestSummary) -> bool:
            if guest.tagged and guest.server_id is not None:
                return shards.shard_of(guest.server_id, count) in mine
            return guest.vmid % count in mine

        listed = [guest for guest in await self._driver.list_guests() if judged_here(guest)]
        guests = [_guest(await self._with_marks(guest, ours)) for guest in listed]
        running = {
            (guest.server_id, guest.generation, guest.vmid)
            for guest in guests
            if guest.tagged and guest.power == drift.RUNNING
        }
        polled = [
            server
            for server in servers
            if server.state == drift.RUNNING
            and server.ip is not None
            and (server.id, server.generation, server.vmid) in running
        ]
        agents = dict(zip([server.id for server in polled], await self._poll(polled), strict=True))
        checked = {server.id for server in servers}
        unknown = sorted(
            {guest.server_id for guest in guests if guest.server_id is not None} - checked, key=str
        )
        others: list[drift.ServerRecord] = []
        if unknown:
            async with database.transaction(self._pool) as conn:
                rows = await queries.fetch(conn, "reconcile_servers_by_id", unknown)
            others = [_record(row) for row in rows]
        return _World(servers, others, guests, agents, allocated)

    async def _with_marks(self, guest: protocol.GuestSummary, ours: set[int]) -> protocol.GuestSummary:
        """The guest, judged by the marks in its description when it carries no tags but could be ours.

        Tags are set after the clone, by the step that asked for it (PVE's clone takes a description
        but no tags). A clone whose request outlived its replica (killed, or frozen, with the request
        sent or about to be retried) can land after its server was deleted and its VMID released:
        untagged, it would be judged a stranger and its VMID marked foreign, the container kept for
        ever. Its description says whose it is, so such a guest is judged as tagged with those marks
        (an orphan, destroyed after the grace, or accounted for by its server). That holds at a VMID
        already marked foreign too: the next server given the VMID finds the clone there, takes it
        for a stranger's and marks the VMID foreign. One config read per untagged container in the
        range that none of our servers holds (strangers, read at every pass).
        """
        low, high = self._settings.vmid_range
        if guest.tagged or guest.kind != "lxc" or guest.template or guest.vmid in ours:
            return guest
        if not low <= guest.vmid <= high:
            return guest
        owner = await self._driver.marks_of(guest.vmid, guest.node)
        if owner is None:
            return guest
        server_id, generation = owner
        return dataclasses.replace(guest, tagged=True, server_id=server_id, generation=generation)

    async def _poll(self, servers: Sequence[drift.ServerRecord]) -> list[drift.AgentView | None]:
        gate = asyncio.Semaphore(AGENT_POLLS)

        async def one(ip: str) -> drift.AgentView | None:
            async with gate:
                return _agent(await self._agent.status(ip))

        return list(await asyncio.gather(*(one(str(server.ip)) for server in servers)))

    # --- acting -------------------------------------------------------------------------------

    def _shard(self, found: drift.Drift) -> int:
        count = self._owner.settings.shard_count
        if found.server_id is not None:
            return shards.shard_of(found.server_id, count)
        assert found.vmid is not None
        return found.vmid % count

    async def _act(self, found: drift.Drift) -> reports.Entry:
        if self._shard(found) not in self._owner.leases:
            return reports.entry(found, "skipped: the shard was handed over during the pass")
        try:
            if found.kind in repairs.SERVER_KINDS:
                return await self._send(found)
            if found.kind == "orphan":
                return await self._orphan(found)
            return await self._foreign(found)
        except errors.ZlhError as exc:
            log.warning("reconciler: could not act on %s: %s", found.reason, exc)
            return reports.entry(found, f"failed: {exc}")

    async def _send(self, found: drift.Drift) -> reports.Entry:
        assert found.server_id is not None
        async with database.transaction(self._pool) as conn:
            if await queries.fetchval(conn, "has_queued_command", found.server_id, repairs.COMMAND_KIND):
                return reports.entry(found, "already sent: a drift command is queued for the server")
            command = await commands.enqueue(
                conn, found.server_id, repairs.COMMAND_KIND, repairs.payload(found)
            )
        log.info("reconciler: %s drift of server %s sent to its actor", found.kind, found.server_id)
        return reports.entry(found, "sent to the owning actor", command.id)

    async def _orphan(self, found: drift.Drift) -> reports.Entry:
        if found.server_id is None or found.generation is None or found.vmid is None or found.node is None:
            return reports.entry(found, "left alone: without readable marks it cannot be destroyed safely")
        key = (found.vmid, found.server_id, found.generation)
        now = time.monotonic()
        waited = now - self._orphans_seen.setdefault(key, now)
        grace = self._settings.orphan_grace
        if waited < grace:
            return reports.entry(
                found, f"waiting: destroyed once seen for {grace:g}s ({grace - waited:.1f}s left)"
            )
        async with database.transaction(self._pool) as conn:
            rows = await queries.fetch(conn, "reconcile_servers_by_id", [found.server_id])
        if rows:
            server = _record(rows[0])
            if server.state != "deleted" and (server.generation, server.vmid) == (
                found.generation,
                found.vmid,
            ):
                self._orphans_seen.pop(key, None)
                return reports.entry(found, "left alone: its server accounts for it now")
        ref = protocol.ContainerRef(found.server_id, found.generation, found.node, protocol.Vmid(found.vmid))
        try:
            outcome = await self._driver.destroy(ref)
        except pve_errors.NotOwned:
            return reports.entry(found, "left alone: its description does not carry the marks its tags claim")
        self._orphans_seen.pop(key, None)
        async with database.transaction(self._pool) as conn:
            # Marked foreign by a step that took the orphan for a stranger's: the VMID is free again.
            forgotten = await queries.fetchval(conn, "forget_foreign_vmid", found.vmid)
        log.warning("reconciler: destroyed orphan container %s (%s)", found.vmid, found.reason)
        if forgotten is not None:
            return reports.entry(found, f"destroyed ({outcome.value}); its VMID is no longer marked foreign")
        return reports.entry(found, f"destroyed ({outcome.value})")

    def _forget_orphans_not_in(self, found: list[drift.Drift]) -> None:
        current = {(item.vmid, item.server_id, item.generation) for item in found if item.kind == "orphan"}
        for key in list(self._orphans_seen):
            if key not in current:
                del self._orphans_seen[key]

    async def _foreign(self, found: drift.Drift) -> reports.Entry:
        assert found.vmid is not None
        try:
            async with database.transaction(self._pool) as conn:
                await allocations.mark_vmid_foreign(conn, found.vmid)
        except errors.VmidAllocated:
            return reports.entry(found, "left alone: the VMID was allocated meanwhile")
        log.warning("reconciler: VMID %s marked foreign (%s)", found.vmid, found.reason)
        return reports.entry(found, "marked foreign: never allocated, never touched")


def _finished(task: asyncio.Task[None]) -> None:
    if task.cancelled():
        log.debug("reconciler stopped")
    elif task.exception() is not None:
        log.error("reconciler finished unexpectedly", exc_info=task.exception())
