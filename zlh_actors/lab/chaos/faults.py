"""The faults of a chaos run: injected at their planned times, each undone after its duration.

- `replica.kill`: SIGKILL of a replica; restarted on its port after `duration`.
- `replica.freeze`: SIGSTOP of a replica past its lease timeout (it is evicted); SIGCONT after
  `duration`.
- `db.lease`: `pg_terminate_backend` of a replica's lease connection (`zlh-lease:<id>`);
  `db.listener`: the same for the inbox's (`zlh-listen:`) or the stream hub's (`zlh-stream:`)
  LISTEN connection. The replica reconnects by itself.
- `pve.task_error`: fakepve fails the next 1-3 matching requests with one of PVE's own errors;
  counted as injected once the first has been failed (the rule's budget went down), as skipped if
  no matching request came before the heal.
- `pve.lock`: a config lock held on the template (every clone waits) or on a running container,
  released after `duration`.
- `pve.flaky`: fakepve drops (connection reset) or hangs a share of its requests for `duration`.
- `pve.node_offline`: a node answers 595 for `duration` (a partition: its containers keep running).
- `agent.kill`: SIGKILL of a container's agent (its game dies with it); the lab restarts it.
- `container.destroy`, `container.stop`: `pct destroy --force --purge` of a running container, or
  `pct stop` of the container of a server at rest in `running`, behind the control plane's back;
  the reconciler is to notice and repair.

Replica faults wait (a few seconds at most) for every replica to be up before they strike, so
the deployment always keeps one replica serving: the run tests failover, not a total outage.
fakepve's model lives on its own loop and is touched only through `lab.cluster.call`/`run`.

`heal` ends everything at once: pending undos run, every replica is up, every fakepve fault is
cleared. A fault whose target did not exist (no running container yet) is counted as skipped; one
the lab refused (a lock already held, a destroy that met an injected error) as failed, with why.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import aiohttp
import asyncpg

from zlh_actors.lab import cluster, world
from zlh_actors.lab.chaos import fleet as fleet_module
from zlh_actors.lab.chaos import plan, tally

T = TypeVar("T")

WHOLE_WAIT = 20.0
TARGET_WAIT = 10.0  # a fault that needs a running container waits this long for one to exist
POLL = 0.1
FIRED_POLL = 0.25  # how often an armed fakepve error is looked at, until it has failed a request
LAB_ATTEMPTS = 3  # an operator's `pct stop` that met an injected fault is tried again
HANG_SECS = 50  # PVE seconds a hung request waits (1 s at the run's time scale)
SESSIONS = """
SELECT pid FROM pg_stat_activity
WHERE datname = current_database() AND application_name LIKE $1 || '%'
ORDER BY application_name
"""


class Skip(Exception):
    """The fault has no target right now."""


class Injector:
    def __init__(
        self, lab: world.Lab, fleet: fleet_module.Fleet, pool: asyncpg.Pool, counts: tally.Tally
    ) -> None:
        self._lab, self._fleet, self._pool, self._counts = lab, fleet, pool, counts
        self._tasks: set[asyncio.Task[None]] = set()
        self._locked: set[int] = set()
        self._replica_turn = asyncio.Lock()
        self._handlers: dict[str, Callable[[plan.Fault], Awaitable[None]]] = {
            "replica.kill": self._replica_kill,
            "replica.freeze": self._replica_freeze,
            "db.lease": self._terminate,
            "db.listener": self._terminate,
            "pve.task_error": self._task_error,
            "pve.lock": self._lock,
            "pve.flaky": self._flaky,
            "pve.node_offline": self._node_offline,
            "agent.kill": self._agent_kill,
            "container.destroy": self._container,
            "container.stop": self._container,
        }

    async def run(self, faults: Sequence[plan.Fault], stop: asyncio.Event) -> None:
        """Inject each fault at its time (in its own task) until the plan or the run ends."""
        loop = asyncio.get_running_loop()
        started = loop.time()
        for fault in faults:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, started + fault.at - loop.time()))
            if stop.is_set():
                return
            task = asyncio.create_task(self._inject(fault), name=f"chaos:fault-{fault.kind}")
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _inject(self, fault: plan.Fault) -> None:
        try:
            await self._handlers[fault.kind](fault)
        except Skip as why:
            self._counts.fault(fault.kind, tally.SKIPPED, str(why) or None)
        except Exception as exc:  # a refused fault is a result to report, not a crash
            self._counts.fault(fault.kind, tally.FAILED, f"{type(exc).__name__}: {exc}")

    def _done(self, fault: plan.Fault, target: object) -> None:
        self._counts.fault(fault.kind, tally.INJECTED)
        self._counts.event(f"{fault.kind} {target} for {fault.duration:g}s (planned at {fault.at:g}s)")

    async def cancel(self) -> None:
        """Stop the faults in progress (their undos run); safe to call again."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def heal(self) -> None:
        """End every fault now: undo what is pending, bring every replica up, clear fakepve."""
        await self.cancel()
        pve = self._lab.pve

        def clear() -> None:
            pve.failures.clear()
            pve.flaky_network(drop_rate=0.0, hang_rate=0.0)
            for node in self._lab.cluster.nodes:
                pve.set_node_offline(node, offline=False)

        await self._lab.cluster.call(clear)
        for vmid in list(self._locked):
            await self._release(vmid)
        await self._fleet.heal()

    # --- replicas --------------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _alone(self) -> AsyncIterator[None]:
        """One replica fault at a time, striking only when every replica is up: one keeps serving."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + WHOLE_WAIT
        try:
            async with asyncio.timeout(WHOLE_WAIT):
                await self._replica_turn.acquire()
        except TimeoutError:
            raise Skip("another replica fault was still in progress") from None
        try:
            while not self._fleet.whole():
                if loop.time() > deadline:
                    raise Skip("a replica was still down or frozen")
                await asyncio.sleep(POLL)
            yield
        finally:
            self._replica_turn.release()

    async def _replica_kill(self, fault: plan.Fault) -> None:
        async with self._alone():
            index = fault.params["replica"]
            pid = self._fleet.kill(index)
            self._done(fault, f"r{index} (pid {pid})")
            await asyncio.sleep(fault.duration)
            # Shielded: a restart cut short by `heal` would leave a half-started process in the slot.
            await asyncio.shield(self._fleet.restart(index))

    async def _replica_freeze(self, fault: plan.Fault) -> None:
        async with self._alone():
            index = fault.params["replica"]
            pid = self._fleet.freeze(index)
            self._done(fault, f"r{index} (pid {pid})")
            try:
                await asyncio.sleep(fault.duration)
            finally:
                self._fleet.thaw(index)

    # --- the database ----------------------------------------------------------------------------

    async def _target(self, candidates: Callable[[], Awaitable[Sequence[T]]], pick: float, what: str) -> T:
        """The candidate at `pick`, waiting a little for there to be one."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + TARGET_WAIT
        while True:
            found = plan.choose(await candidates(), pick)
            if found is not None:
                return found
            if loop.time() > deadline:
                raise Skip(f"no {what}")
            await asyncio.sleep(POLL)

    async def _terminate(self, fault: plan.Fault) -> None:
        prefix = "zlh-lease:" if fault.kind == "db.lease" else fault.params["app"]

        async def sessions() -> list[int]:
            return [row["pid"] for row in await self._pool.fetch(SESSIONS, prefix)]

        pid = await self._target(sessions, fault.pick, f"{prefix} session")
        if not await self._pool.fetchval("SELECT pg_terminate_backend($1)", pid):
            raise RuntimeError(f"{prefix} session {pid} was already gone")
        self._done(fault, f"{prefix} backend {pid}")

    # --- fakepve ---------------------------------------------------------------------------------

    async def _task_error(self, fault: plan.Fault) -> None:
        method, suffix, error = plan.TASK_ERRORS[fault.params["rule"]]
        times = fault.params["times"]
        pve = self._lab.pve

        def arm() -> dict[str, Any]:
            pve.fail(method, suffix, error=error, times=times)
            rule: dict[str, Any] = pve.failures[method, suffix]
            return rule  # fakepve counts its `times` down as it fails requests

        rule = await self._lab.cluster.call(arm)
        what = f"{method} {suffix} -> {error} x{times}"
        try:
            while True:  # fakepve has no event to wait on: its count is looked at now and then
                if await self._lab.cluster.call(lambda: rule["times"]) != times:
                    break
                await asyncio.sleep(FIRED_POLL)
        except asyncio.CancelledError:
            # Cancelled by the heal, with no time left to ask the fake's loop: a plain read of an int
            # it may be counting down. Unfired, the rule was never met (or a later one replaced it).
            if rule["times"] != times:
                self._done(fault, what)
            else:
                self._counts.fault(fault.kind, tally.SKIPPED, f"{what}: no matching request came")
            raise
        self._done(fault, what)

    async def _lock(self, fault: plan.Fault) -> None:
        if fault.params["on"] == "template":
            vmid = self._lab.settings.template_vmid
        else:
            vmid = await self._target(self._running, fault.pick, "running container")
        await self._lab.cluster.run(self._lab.pve.hold_config_lock(vmid, None))
        self._locked.add(vmid)
        self._done(fault, f"CT {vmid}")
        try:
            await asyncio.sleep(fault.duration)
        finally:
            await self._release(vmid)

    async def _release(self, vmid: int) -> None:
        self._locked.discard(vmid)
        pve = self._lab.pve

        def release() -> None:
            if pve.guest(vmid) is not None:  # a container may be gone since (destroyed once released)
                pve.release_config_lock(vmid)

        await self._lab.cluster.call(release)

    async def _flaky(self, fault: plan.Fault) -> None:
        pve = self._lab.pve
        drop, hang = fault.params["drop_rate"], fault.params["hang_rate"]
        await self._lab.cluster.call(
            lambda: pve.flaky_network(drop_rate=drop, hang_rate=hang, hang_secs=HANG_SECS)
        )
        self._done(fault, f"drop {drop:.0%} hang {hang:.0%}")
        try:
            await asyncio.sleep(fault.duration)
        finally:
            await self._lab.cluster.call(lambda: pve.flaky_network(drop_rate=0.0, hang_rate=0.0))

    async def _node_offline(self, fault: plan.Fault) -> None:
        pve = self._lab.pve
        node = self._lab.cluster.nodes[fault.params["node"] % len(self._lab.cluster.nodes)]
        await self._lab.cluster.call(lambda: pve.set_node_offline(node))
        self._done(fault, node)
        try:
            await asyncio.sleep(fault.duration)
        finally:
            await self._lab.cluster.call(lambda: pve.set_node_offline(node, offline=False))

    # --- containers and agents -------------------------------------------------------------------

    async def _running(self) -> list[int]:
        """Running containers on nodes that answer (an operator cannot reach the others either)."""
        guests = await self._lab.cluster.guests()
        pve = self._lab.pve
        online = await self._lab.cluster.call(
            lambda: {name for name, node in pve.nodes.items() if node.get("online", True)}
        )
        return sorted(vmid for vmid, ct in guests.items() if ct.status == "running" and ct.node in online)

    async def _serving(self) -> list[int]:
        """Running containers whose servers the database has at rest in `running`: stopping one is the
        power drift the reconciler must repair. (A container stopped mid-provisioning only fails its
        step, which is the task-error faults' ground, and never shows as power drift.)"""
        running = set(await self._running())
        rows = await self._pool.fetch("SELECT vmid FROM servers WHERE state = 'running' AND vmid IS NOT NULL")
        return sorted(running & {row["vmid"] for row in rows})

    async def _agent_kill(self, fault: plan.Fault) -> None:
        async def agents() -> list[int]:
            return sorted(self._lab.agents())

        vmid = await self._target(agents, fault.pick, "agent listening")
        pid = self._lab.kill_agent(vmid)
        self._done(fault, f"CT {vmid} (pid {pid})")

    async def _container(self, fault: plan.Fault) -> None:
        if fault.kind == "container.destroy":
            act, candidates, what = self._lab.destroy_container, self._running, "running container"
        else:
            act, candidates, what = self._lab.stop_container, self._serving, "container of a running server"
        for attempt in range(LAB_ATTEMPTS):
            # Picked again each time: the last one may be gone (deleted, or stopped by now).
            vmid = await self._target(candidates, fault.pick, what)
            try:
                await act(vmid)
                break
            except (cluster.LabError, aiohttp.ClientError):  # a lock, an injected error, a dropped request
                if attempt == LAB_ATTEMPTS - 1:
                    raise
                await asyncio.sleep(1.0)
        self._done(fault, f"CT {vmid}")
