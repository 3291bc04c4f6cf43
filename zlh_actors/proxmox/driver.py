"""The Proxmox driver: the operations of `protocol.ProxmoxDriver` on top of proxmoxer.

Every operation is one level-based step repeated until it holds: read what Proxmox has now (the
guest at the VMID, its owner marks, its lock, its power state), do the one thing that is missing,
and on a transient failure read again before doing anything else. Nothing is remembered between
attempts except what this call did, so a lost response, a crash of the caller, or two callers at
once all end in the same state: one container, or none.

Where a guest is: `guests` looks at the allocated node first, then anywhere in the cluster (a clone
in progress sits on the template's node until its task moves it).

Whose a guest is: the owner line of its description (see `marks`). A guest without our exact
(server id, generation) is never changed: `ensure_container` raises `VmidTaken`, the others
`NotOwned`. The marks are re-read before every destructive step, because PVE reuses a VMID as soon
as it is free and a stale database row must not delete a stranger's container.

Locks, and how long they are waited out (one budget per operation, shared by all its requests):
- `create` and `destroyed` are held by our own lifecycle tasks (a clone, a destroy); they last as
  long as the task, so they are waited out for up to `task_timeout`.
- any other lock (backup, migrate, snapshot, disk...) and "can't lock file ... got timeout" are
  retried with backoff for up to `lock_wait`. After that `Locked` goes to the caller: a lock that
  outlives its task is stale, and only an operator can clear it (`pct unlock <vmid>`).
Transient failures that are not locks (connection errors, 5xx, offline node) are retried up to
`operation_attempts` times.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import math
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from zlh_actors.proxmox import client as client_module
from zlh_actors.proxmox import errors, guestconfig, guests, marks, protocol, tasks
from zlh_actors.proxmox import settings as settings_module

log = logging.getLogger(__name__)

T = TypeVar("T")
Vmid = protocol.Vmid
PowerState = protocol.PowerState

# Locks held by our own clone and destroy tasks: waited out like a task, not like a foreign lock.
_OWN_TASK_LOCKS = frozenset({"create", "destroyed"})
# Extra seconds, beyond the shutdown timeout PVE is given, before the driver stops waiting for it.
_SHUTDOWN_MARGIN = 15.0


@dataclasses.dataclass(frozen=True)
class _Deadlines:
    """`time.monotonic()` limits of one operation."""

    lock: float
    task: float


class ProxmoxerDriver:
    """`protocol.ProxmoxDriver` over proxmoxer; see the module docstring for the policy."""

    def __init__(self, settings: settings_module.ProxmoxSettings) -> None:
        self._settings = settings
        self._client = client_module.Client(settings)

    async def close(self) -> None:
        await self._client.close()

    # --- the operations -------------------------------------------------------------------------

    async def ensure_container(self, spec: protocol.ContainerSpec) -> protocol.EnsureOutcome:
        created = False

        async def once(deadlines: _Deadlines) -> None:
            nonlocal created
            guest = await guests.inspect(self._client, spec.vmid, spec.node)
            if guest is None:
                try:
                    upid = await self._clone(spec, deadlines)
                except errors.AlreadyExists:
                    # Our own earlier attempt (its answer lost) or a stranger got there first.
                    pass
                else:
                    created = True
                    await self.wait_task(upid, deadlines.task)
                guest = await guests.inspect(self._client, spec.vmid, spec.node)
                if guest is None:
                    raise errors.ProxmoxUnavailable(
                        "container vanished right after its clone", cause="vanished", vmid=spec.vmid
                    )
            if not guest.owned_by(spec.ref):
                raise errors.VmidTaken(f"VMID {spec.vmid} holds a guest that is not ours", **guest.describe())
            guests.raise_if_locked(guest)
            if guest.node != spec.node:
                raise errors.Misplaced(
                    f"container {spec.vmid} is on {guest.node}, not {spec.node}",
                    vmid=spec.vmid,
                    expected_node=spec.node,
                    node=guest.node,
                )
            wanted = guestconfig.changes(spec, guest.config)
            if wanted:
                path = f"nodes/{guest.node}/lxc/{spec.vmid}/config"
                await self._client.put(path, lock_deadline=deadlines.lock, **wanted)

        await self._operation(f"ensure {spec.vmid}", once)
        outcome = protocol.EnsureOutcome.CREATED if created else protocol.EnsureOutcome.ADOPTED
        log.info("container %s on %s for server %s: %s", spec.vmid, spec.node, spec.server_id, outcome)
        return outcome

    async def start(self, ref: protocol.ContainerRef) -> None:
        async def once(deadlines: _Deadlines) -> None:
            guest = await self._owned(ref)
            guests.raise_if_locked(guest)
            if await guests.power_of(self._client, guest) is PowerState.RUNNING:
                return
            try:
                upid = await self._client.post(guest.path("status/start"), lock_deadline=deadlines.lock)
                await self.wait_task(upid, deadlines.task)
            except errors.AlreadyRunning:
                pass

        await self._operation(f"start {ref.vmid}", once)

    async def stop(self, ref: protocol.ContainerRef) -> None:
        async def once(deadlines: _Deadlines) -> None:
            guest = await self._owned(ref)
            guests.raise_if_locked(guest)
            if await guests.power_of(self._client, guest) is not PowerState.STOPPED:
                await self._stop(guest, deadlines)

        await self._operation(f"stop {ref.vmid}", once)

    async def shutdown(self, ref: protocol.ContainerRef, timeout: float) -> protocol.ShutdownOutcome:
        asked = False

        async def once(deadlines: _Deadlines) -> protocol.ShutdownOutcome:
            nonlocal asked
            guest = await self._owned(ref)
            guests.raise_if_locked(guest)
            if await guests.power_of(self._client, guest) is PowerState.STOPPED:
                return protocol.ShutdownOutcome.CLEAN if asked else protocol.ShutdownOutcome.ALREADY_STOPPED
            try:
                # forceStop=0: PVE must not kill it on its own; the decision to stop is ours.
                upid = await self._client.post(
                    guest.path("status/shutdown"),
                    lock_deadline=deadlines.lock,
                    timeout=max(1, math.ceil(timeout)),
                    forceStop=False,
                )
            except errors.NotRunning:
                return protocol.ShutdownOutcome.CLEAN if asked else protocol.ShutdownOutcome.ALREADY_STOPPED
            asked = True
            try:
                await self.wait_task(upid, time.monotonic() + timeout + _SHUTDOWN_MARGIN)
            except (errors.TaskFailed, errors.TaskWaitTimeout) as exc:
                # Did not stop in time, or we could not tell: look, then stop it if needed.
                log.info("shutdown of %s did not end cleanly: %s", ref.vmid, exc)
            if await guests.power_of(self._client, guest) is PowerState.STOPPED:
                return protocol.ShutdownOutcome.CLEAN
            await self._stop(guest, deadlines)
            return protocol.ShutdownOutcome.FORCED

        return await self._operation(f"shutdown {ref.vmid}", once)

    async def status(self, ref: protocol.ContainerRef) -> protocol.ContainerStatus:
        async def once(deadlines: _Deadlines) -> protocol.ContainerStatus:
            guest = await guests.inspect(self._client, ref.vmid, ref.node)
            if guest is None:
                return protocol.ContainerStatus(ref.vmid, None, PowerState.ABSENT, None)
            guests.require_owned(guest, ref)
            try:
                power = await guests.power_of(self._client, guest)
            except errors.DoesNotExist:
                return protocol.ContainerStatus(ref.vmid, None, PowerState.ABSENT, None)
            return protocol.ContainerStatus(ref.vmid, guest.node, power, guest.lock)

        return await self._operation(f"status {ref.vmid}", once)

    async def destroy(self, ref: protocol.ContainerRef) -> protocol.DestroyOutcome:
        deleted = False

        async def once(deadlines: _Deadlines) -> None:
            nonlocal deleted
            guest = await guests.inspect(self._client, ref.vmid, ref.node)
            if guest is None:
                return
            # Re-read on every attempt: the VMID may have been freed and reused since the last one.
            guests.require_owned(guest, ref)
            guests.raise_if_locked(guest)
            if await guests.power_of(self._client, guest) is not PowerState.STOPPED:
                await self._stop(guest, deadlines)
            try:
                upid = await self._client.delete(
                    guest.path(),
                    lock_deadline=deadlines.lock,
                    purge=True,
                    **{"destroy-unreferenced-disks": True},
                )
                deleted = True
                await self.wait_task(upid, deadlines.task)
            except errors.DoesNotExist:
                pass

        await self._operation(f"destroy {ref.vmid}", once)
        outcome = protocol.DestroyOutcome.DESTROYED if deleted else protocol.DestroyOutcome.ALREADY_ABSENT
        log.info("container %s of server %s: %s", ref.vmid, ref.server_id, outcome)
        return outcome

    async def nodes(self) -> list[protocol.NodeInfo]:
        answer = await self._client.get("cluster/resources", type="node")
        if not isinstance(answer, list):
            raise errors.ProxmoxUnavailable("cluster resources is not a list", cause="unexpected-response")
        out = []
        for entry in answer:
            if not isinstance(entry, dict) or entry.get("type") != "node":
                continue
            online = entry.get("status") == "online"
            free = int(entry.get("maxmem") or 0) - int(entry.get("mem") or 0)
            out.append(
                protocol.NodeInfo(
                    name=str(entry.get("node")),
                    online=online,
                    free_memory_mb=max(free, 0) // 2**20 if online else 0,
                )
            )
        return sorted(out, key=lambda node: node.name)

    async def list_owned(self) -> list[protocol.OwnedContainer]:
        out = []
        for entry in await guests.resources(self._client):
            if (
                entry.get("type") != "lxc"
                or guests.flag(entry.get("template"))
                or not marks.carries_tag(entry.get("tags"))
            ):
                continue
            owner = marks.from_tags(entry.get("tags"))
            out.append(
                protocol.OwnedContainer(
                    node=str(entry.get("node")),
                    vmid=Vmid(int(entry["vmid"])),
                    status=guests.power(entry.get("status")),
                    server_id=owner.server_id if owner else None,
                    generation=owner.generation if owner else None,
                    lock=entry.get("lock") or None,
                )
            )
        return sorted(out, key=lambda owned: owned.vmid)

    async def list_guests(self) -> list[protocol.GuestSummary]:
        out = []
        for entry in await guests.resources(self._client):
            if entry.get("type") not in ("lxc", "qemu"):
                continue
            owner = marks.from_tags(entry.get("tags"))
            out.append(
                protocol.GuestSummary(
                    node=str(entry.get("node")),
                    vmid=Vmid(int(entry["vmid"])),
                    kind=str(entry["type"]),
                    status=guests.power(entry.get("status")),
                    template=guests.flag(entry.get("template")),
                    tagged=marks.carries_tag(entry.get("tags")),
                    server_id=owner.server_id if owner else None,
                    generation=owner.generation if owner else None,
                )
            )
        return sorted(out, key=lambda guest: guest.vmid)

    async def marks_of(self, vmid: Vmid, node: str) -> tuple[uuid.UUID, int] | None:
        guest = await guests.inspect(self._client, vmid, node)
        if guest is None or guest.owner is None:
            return None
        return guest.owner.server_id, guest.owner.generation

    async def wait_task(self, upid: str, deadline: float) -> protocol.TaskResult:
        return await tasks.wait(self._client, upid, deadline)

    # --- steps ----------------------------------------------------------------------------------

    async def _operation(self, what: str, once: Callable[[_Deadlines], Awaitable[T]]) -> T:
        """Run `once` until it succeeds, within the operation's budgets (module docstring)."""
        started = time.monotonic()
        deadlines = _Deadlines(started + self._settings.lock_wait, started + self._settings.task_timeout)
        backoff = self._client.backoff()
        failures = 0
        while True:
            try:
                return await once(deadlines)
            except (errors.Locked, errors.LockTimeout) as exc:
                limit = deadlines.task if exc.details.get("lock") in _OWN_TASK_LOCKS else deadlines.lock
                remaining = limit - time.monotonic()
                if remaining <= 0:
                    exc.details.setdefault("waited", round(time.monotonic() - started, 3))
                    raise
                # The last wait is cut short to end at the limit: one more try there, then give up.
                # (Giving up as soon as the next wait would pass the limit ended the wait early by up
                # to a whole back-off step, at random.)
                delay = min(backoff.next_delay(), remaining)
                log.info("%s: %s; trying again in %.2fs", what, exc, delay)
            except errors.ProxmoxUnavailable as exc:
                failures += 1
                delay = backoff.next_delay()
                if failures >= self._settings.operation_attempts:
                    exc.details.setdefault("attempts", failures)
                    raise
                log.info("%s: %s; re-reading the state in %.2fs", what, exc, delay)
            await asyncio.sleep(delay)

    async def _clone(self, spec: protocol.ContainerSpec, deadlines: _Deadlines) -> str:
        template = await guests.locate(self._client, spec.template_vmid)
        if template is None or template.kind != "lxc" or not template.template:
            raise errors.TemplateMissing(
                f"no LXC template with VMID {spec.template_vmid}", template_vmid=spec.template_vmid
            )
        owner = marks.Marks(spec.server_id, spec.generation)
        # Never /cluster/nextid: it reserves nothing, so two callers would get the same id.
        upid = await self._client.post(
            f"nodes/{template.node}/lxc/{spec.template_vmid}/clone",
            lock_deadline=deadlines.lock,
            newid=spec.vmid,
            hostname=spec.name,
            # The owner marks travel with the clone request, so the container is never unmarked.
            description=marks.description(owner, spec.name),
            full=True,
            target=spec.node if spec.node != template.node else None,
            storage=self._settings.clone_storage,
        )
        log.info("cloning template %s to %s on %s: %s", spec.template_vmid, spec.vmid, spec.node, upid)
        return str(upid)

    async def _stop(self, guest: guests.Guest, deadlines: _Deadlines) -> None:
        try:
            # overrule-shutdown: abort a shutdown task still running, instead of queueing behind it.
            upid = await self._client.post(
                guest.path("status/stop"), lock_deadline=deadlines.lock, **{"overrule-shutdown": True}
            )
            await self.wait_task(upid, deadlines.task)
        except errors.NotRunning:
            pass

    async def _owned(self, ref: protocol.ContainerRef) -> guests.Guest:
        guest = await guests.inspect(self._client, ref.vmid, ref.node)
        if guest is None:
            raise errors.DoesNotExist(f"container {ref.vmid} does not exist", vmid=ref.vmid, node=ref.node)
        guests.require_owned(guest, ref)
        return guest
