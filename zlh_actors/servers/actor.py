"""The server actor's handler: read the world, apply commands through the chart, do the next step.

Each message is only a wake-up: the handler re-reads everything from the database (level-based, in
controller-runtime's sense), so a duplicated, lost or reordered wake-up changes nothing. A handler
run does, in order:

1. every queued command of the server, oldest first, in one fenced transaction: the command's
   event goes through the chart; allowed, the state changes, the journal records it with the
   command id and the lease epoch, and the command is `accepted`; refused, it is `rejected` with
   the state and the events the state allows. Outcome, state and journal commit together. An
   agent's report is settled `done` at once: it asks for nothing to converge to.
2. at rest (running, stopped, failed, deleted): accepted commands become `done`, in that same
   transaction (so a command that brings the server to rest, such as a `stopped` report, costs one
   transaction); or, in a transaction of its own, when the current state's work says there is
   nothing left to do.
3. otherwise the work of the current state, through `Effects.perform`, then the event it reports,
   in a fenced transaction; repeated until the server rests or waits. A state held past its
   deadline fails with the step named in `last_error`. `crashed` and `lost` have work too when the
   server should run (the crash policy; re-provisioning as a new generation), so they are not rest
   states: a new owner after a failover resumes them like any step.

Drifts found by the reconciler arrive as `drift` commands (`reconciler.repairs`): applied only if
the server is still the row the reconciler observed (same version), as the chart events that repair
it, each journaled with the reason.

Every write is fenced by the shard lease (`fencing.transaction`): if another replica took the shard,
the write raises `OwnershipLost` and the actor stops without retrying. Given `announce`, the
journal entries a write makes are not NOTIFYed at its commit: `announce` is called after it instead
(`runtime.announcer`).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import datetime
import logging
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol, TypeVar

import asyncpg

from statemachines import lifecycle
from storage import allocations, commands, database, journal, servers
from zlh_actors import errors, logs, metrics
from zlh_actors.reconciler import repairs
from zlh_actors.runtime import fencing
from zlh_actors.servers import effects

log = logging.getLogger(__name__)

T = TypeVar("T")

# Command kind -> chart event.
COMMAND_EVENTS = {
    "create": "create",
    "start": "start",
    "stop": "stop",
    "restart": "restart",
    "delete": "delete",
    "retry": "retry",
}

# Agent reports that are events of the chart, and the states in which they are news: a game that
# exits on its own while running (or starting) has crashed or stopped. Every other report (installed,
# ready, ...) is read by the step that waits for it (`provisioning`), and only wakes the actor here.
REPORT_EVENTS = {
    "crashed": ("crashed", frozenset({"running", "starting"})),
    "stopped": ("stopped", frozenset({"running"})),
}

# Command kind -> what the server should converge to once the command is accepted.
DESIRED_STATES = {
    "create": "running",
    "start": "running",
    "restart": "running",
    "stop": "stopped",
    "delete": "deleted",
}

# States in which the actor has nothing to do until something (a command, a report, the reconciler)
# arrives. Every other state is work in progress, resumed by whichever replica owns the server.
# `crashed` and `lost` are not among them: while the server should run, the crash policy restarts
# the game and a lost container is re-provisioned, and that work must survive a failover.
REST_STATES = frozenset(
    {
        "running",
        "stopped",
        "failed.provisioning",
        "failed.starting",
        "failed.stopping",
        "deleted",
    }
)

# A safety bound on steps per wake-up, so a misbehaving effect cannot spin a handler forever.
MAX_STEPS_PER_WAKE = 32


async def _leaving(conn: database.Conn, server: servers.Server, event: str) -> None:
    """Writes that go with leaving the server's state by `event`, in the same transaction.

    `retry` from `lost` re-provisions as a new generation: what the lost container held is released
    here, whoever sent the retry, so the cloning step finds no live allocation and places the new
    generation afresh (the `lost` step releases them too, but a retry may come before it runs).
    """
    if server.state == "lost" and event == "retry":
        await allocations.move(conn, server.id, allocations.LIVE, "released")


@dataclasses.dataclass(frozen=True)
class Wake:
    """A wake-up for one server: look at the database and do what it says."""

    server_id: uuid.UUID


class Owner(Protocol):
    """What the handler needs from its replica."""

    fence: fencing.FenceCounter

    def lease_for(self, server_id: uuid.UUID) -> fencing.Lease:
        """The lease to write under; `OwnershipLost` when the server is not ours."""

    def holds(self, lease: fencing.Lease) -> bool:
        """`lease` is still ours, judged without the database (see `Replica.holds`)."""

    def route(self, server_id: uuid.UUID) -> None:
        """Wake the server's actor (if still ours)."""


Announce = Callable[[], None]


@dataclasses.dataclass
class _Uncommitted:
    """What the fenced transaction running in this task has written, acted on once it commits: its
    counts go to the metrics (a write that rolled back is not counted), and its journal entries are
    announced (`runtime.announcer`), if it wrote any."""

    counts: list[tuple[metrics.Metrics, str, dict[str, str]]] = dataclasses.field(default_factory=list)
    journaled: bool = False


_uncommitted: contextvars.ContextVar[_Uncommitted | None] = contextvars.ContextVar(
    "zlh_uncommitted", default=None
)


def _count(counters: metrics.Metrics, name: str, **labels: str) -> None:
    """Count a write: now, or when the fenced transaction it belongs to commits."""
    pending = _uncommitted.get()
    if pending is None:
        counters.inc(name, 1, **labels)
    else:
        pending.counts.append((counters, name, labels))


def _journaled() -> None:
    """The fenced transaction running in this task wrote a journal entry."""
    pending = _uncommitted.get()
    if pending is not None:
        pending.journaled = True


class _FencedWrites:
    """The fenced transactions of one wake-up, and the lease check for what the database cannot
    fence. Given `announce`, their journal entries are not NOTIFYed at commit (`fencing`'s `quiet`);
    `announce` is called after each commit that wrote one."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        lease: fencing.Lease,
        owner: Owner,
        announce: Announce | None = None,
    ) -> None:
        self._pool, self._lease, self._owner, self._announce = pool, lease, owner, announce

    def ensure_lease_held(self) -> None:
        if not self._owner.holds(self._lease):
            raise errors.OwnershipLost(
                "shard lease no longer held here (lost, or the heartbeat is overdue); refusing to act",
                shard=self._lease.shard,
                held_epoch=self._lease.epoch,
            )

    def transaction(self) -> contextlib.AbstractAsyncContextManager[database.Conn]:
        return self._committing(
            fencing.transaction(self._pool, self._lease, self._owner.fence, quiet=self._announce is not None)
        )

    def server(
        self, server_id: uuid.UUID
    ) -> contextlib.AbstractAsyncContextManager[tuple[database.Conn, servers.Server]]:
        """A fenced transaction and the server as read in it."""
        return self._committing(
            fencing.server_transaction(
                self._pool, self._lease, server_id, self._owner.fence, quiet=self._announce is not None
            )
        )

    @contextlib.asynccontextmanager
    async def _committing(self, writes: contextlib.AbstractAsyncContextManager[T]) -> AsyncIterator[T]:
        pending = _Uncommitted()
        token = _uncommitted.set(pending)
        try:
            async with writes as value:
                yield value
        finally:
            _uncommitted.reset(token)
        # Reached only once the transaction has committed.
        for counters, name, labels in pending.counts:
            counters.inc(name, 1, **labels)
        if pending.journaled and self._announce is not None:
            self._announce()


class ServerHandler:
    """Handles wake-ups for servers owned by this replica (`bind` it to the replica first)."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        work: effects.Effects,
        counters: metrics.Metrics | None = None,
        *,
        announce: Announce | None = None,
    ) -> None:
        self._metrics = counters or metrics.Metrics()
        self._metrics.describe("zlh_commands_total", "commands settled by this replica, by kind and outcome")
        self._metrics.describe("zlh_transitions_total", "state transitions written by this replica, by event")
        self._pool = pool
        self._work = work
        # Called after each committed write that journaled (its entries are then not NOTIFYed at commit).
        self._announce = announce
        self._owner: Owner | None = None
        self._timers: dict[uuid.UUID, asyncio.TimerHandle] = {}

    async def _settle(
        self, conn: database.Conn, command: commands.Command, status: str, result: Any
    ) -> commands.Command:
        settled = await commands.settle(conn, command, status, result)
        _count(self._metrics, "zlh_commands_total", kind=command.kind, outcome=status)
        return settled

    async def _transition(
        self, conn: database.Conn, server: servers.Server, to_state: str, event: str, **kwargs: Any
    ) -> servers.Server:
        moved = await servers.transition(conn, server, to_state, event, **kwargs)
        _journaled()
        _count(self._metrics, "zlh_transitions_total", event=event)
        return moved

    def bind(self, owner: Owner) -> None:
        self._owner = owner

    @property
    def owner(self) -> Owner:
        assert self._owner is not None, "ServerHandler used before bind()"
        return self._owner

    def _writes(self, lease: fencing.Lease) -> _FencedWrites:
        return _FencedWrites(self._pool, lease, self.owner, self._announce)

    async def __call__(self, server_id: uuid.UUID, message: Wake) -> str:
        lease = self.owner.lease_for(server_id)
        with logs.bind(server_id=server_id, shard=lease.shard, epoch=lease.epoch):
            return await self._wake(server_id, lease)

    async def _wake(self, server_id: uuid.UUID, lease: fencing.Lease) -> str:
        writes = self._writes(lease)
        server = await self._apply_commands(server_id, lease, writes)
        for _ in range(MAX_STEPS_PER_WAKE):
            if server.state in REST_STATES:
                return server.state  # `_apply_commands` finished its accepted commands
            step = await self._next_step(server, writes)
            if step.event is None:
                if step.last_error is not None and step.last_error != server.last_error:
                    async with writes.server(server_id) as (conn, current):
                        server = await servers.set_last_error(conn, current, step.last_error)
                if step.retry_after is None:
                    await self._finish_commands(server, writes)  # nothing left to do: at rest
                self._wake_later(server_id, step.retry_after)
                return server.state
            server = await self._apply_event(server_id, lease, writes, step)
            server = await self._apply_commands(server_id, lease, writes)
        self._wake_later(server_id, 0)
        return server.state

    async def _next_step(self, server: servers.Server, writes: _FencedWrites) -> effects.Step:
        deadline = self._work.deadline(server.state)
        if deadline is not None:
            async with self._pool.acquire() as conn:
                entered = (await journal.newest(conn, server.id)).at
            waited = (datetime.datetime.now(datetime.UTC) - entered).total_seconds()
            if waited > deadline:
                return effects.Step(
                    event="fail", last_error=f"{server.state}: no progress within {deadline:.0f}s"
                )
        return await self._work.perform(server, writes)

    async def _apply_commands(
        self, server_id: uuid.UUID, lease: fencing.Lease, writes: _FencedWrites
    ) -> servers.Server:
        """Apply the queued commands and, if the server is then at rest, finish the accepted ones."""
        async with writes.server(server_id) as (conn, server):
            accepted = []
            for command in await commands.pending(conn, server_id):
                if command.status == "queued":
                    server, command = await self._apply_command(conn, server, command, lease)
                if command.status == "accepted":
                    accepted.append(command)
            if server.state in REST_STATES:
                for command in accepted:
                    await self._settle(conn, command, "done", {"state": server.state})
        return server

    async def _apply_command(
        self, conn: database.Conn, server: servers.Server, command: commands.Command, lease: fencing.Lease
    ) -> tuple[servers.Server, commands.Command]:
        """The server after the command, and the command as settled."""
        with logs.bind(command_id=command.id):
            return await self._apply_one(conn, server, command, lease)

    async def _apply_one(
        self, conn: database.Conn, server: servers.Server, command: commands.Command, lease: fencing.Lease
    ) -> tuple[servers.Server, commands.Command]:
        if command.kind == "report":
            return await self._apply_report(conn, server, command, lease)
        if command.kind == repairs.COMMAND_KIND:
            return await self._apply_drift(conn, server, command, lease)
        event = COMMAND_EVENTS.get(command.kind)
        try:
            if event is None:
                raise errors.InvalidTransition(f"unknown command {command.kind!r}", state=server.state)
            target = lifecycle.apply(server.state, event)
        except errors.InvalidTransition as exc:
            settled = await self._settle(
                conn,
                command,
                "rejected",
                {
                    "reason": exc.message,
                    "state": server.state,
                    "allowed": lifecycle.allowed_events(server.state),
                },
            )
            log.info(
                "server %s: command %s (%s) rejected in %s", server.id, command.id, command.kind, server.state
            )
            return server, settled
        await _leaving(conn, server, event)
        server = await self._transition(
            conn, server, target, event, command_id=command.id, epoch=lease.epoch, last_error=None
        )
        desired = DESIRED_STATES.get(command.kind)
        if desired is not None and desired != server.desired_state:
            server = await servers.set_desired_state(conn, server, desired)
        settled = await self._settle(conn, command, "accepted", {"state": server.state})
        log.info("server %s: %s -> %s (command %s)", server.id, command.kind, server.state, command.id)
        return server, settled

    async def _apply_report(
        self, conn: database.Conn, server: servers.Server, command: commands.Command, lease: fencing.Lease
    ) -> tuple[servers.Server, commands.Command]:
        """A report is news, not a request: once applied it is `done` (nothing converges to it)."""
        reported = command.payload.get("state")
        if command.payload.get("generation") != server.generation:
            settled = await self._settle(
                conn, command, "rejected", {"reason": "report from another generation"}
            )
            return server, settled
        event, when = REPORT_EVENTS.get(str(reported), (None, frozenset()))
        if event is None or server.state not in when:
            settled = await self._settle(conn, command, "done", {"state": server.state, "recorded": reported})
            return server, settled
        server = await self._transition(
            conn,
            server,
            lifecycle.apply(server.state, event),
            event,
            command_id=command.id,
            epoch=lease.epoch,
            last_error=f"agent reported {reported}: {command.payload.get('detail') or 'no detail'}",
        )
        settled = await self._settle(conn, command, "done", {"state": server.state})
        log.info("server %s: agent reported %s -> %s", server.id, reported, server.state)
        return server, settled

    async def _apply_drift(
        self, conn: database.Conn, server: servers.Server, command: commands.Command, lease: fencing.Lease
    ) -> tuple[servers.Server, commands.Command]:
        """Repair a drift the reconciler observed, if the server is still the row it observed."""
        try:
            drift = repairs.parse(command.payload)
        except errors.InvalidData as exc:
            settled = await self._settle(
                conn, command, "rejected", {"reason": exc.message, "state": server.state}
            )
            return server, settled
        if (drift["version"], drift["generation"]) != (server.version, server.generation):
            settled = await self._settle(
                conn,
                command,
                "rejected",
                {"reason": "stale: the server changed since the reconciler looked", "state": server.state},
            )
            log.info("server %s: %s drift no longer applies (version moved on)", server.id, drift["kind"])
            return server, settled
        events = repairs.events(drift["kind"], server.state, server.desired_state, drift["observed"])
        path = [server.state]
        try:
            if not events:
                raise errors.InvalidTransition("this drift calls for nothing here", state=server.state)
            for event in events:
                path.append(lifecycle.apply(path[-1], event))
        except errors.InvalidTransition as exc:
            settled = await self._settle(
                conn, command, "rejected", {"reason": exc.message, "state": server.state}
            )
            return server, settled
        detail = f"reconciler: {drift['kind']}: {drift['reason']}"
        for event, target in zip(events, path[1:], strict=True):
            server = await self._transition(
                conn,
                server,
                target,
                event,
                command_id=command.id,
                epoch=lease.epoch,
                last_error=drift["reason"],
                detail=detail,
            )
        settled = await self._settle(conn, command, "accepted", {"state": server.state, "events": events})
        log.warning("server %s: %s drift (%s) -> %s", server.id, drift["kind"], drift["reason"], server.state)
        return server, settled

    async def _apply_event(
        self, server_id: uuid.UUID, lease: fencing.Lease, writes: _FencedWrites, step: effects.Step
    ) -> servers.Server:
        assert step.event is not None
        async with writes.server(server_id) as (conn, server):
            try:
                target = lifecycle.apply(server.state, step.event)
            except errors.InvalidTransition:
                # The state moved on (a command won the race): the step's news is stale.
                log.info("server %s: %s no longer applies in %s", server_id, step.event, server.state)
                return server
            await _leaving(conn, server, step.event)
            server = await self._transition(
                conn,
                server,
                target,
                step.event,
                epoch=lease.epoch,
                last_error=step.last_error,
                detail=step.detail,
            )
        log.info("server %s: %s -> %s", server_id, step.event, server.state)
        return server

    async def _finish_commands(self, server: servers.Server, writes: _FencedWrites) -> None:
        async with writes.transaction() as conn:
            for command in await commands.accepted(conn, server.id):
                await self._settle(conn, command, "done", {"state": server.state})

    def _wake_later(self, server_id: uuid.UUID, delay: float | None) -> None:
        if delay is None:
            return
        previous = self._timers.pop(server_id, None)
        if previous is not None:
            previous.cancel()

        def fire() -> None:
            self._timers.pop(server_id, None)
            self.owner.route(server_id)

        self._timers[server_id] = asyncio.get_running_loop().call_later(delay, fire)

    async def give_up(self, server_id: uuid.UUID, exc: BaseException) -> None:
        """The supervisor stopped restarting this server's actor: fail it (or mark it) with the reason."""
        reason = f"actor gave up after repeated failures: {type(exc).__name__}: {exc}"
        try:
            lease = self.owner.lease_for(server_id)
            async with self._writes(lease).server(server_id) as (conn, server):
                if "fail" in lifecycle.allowed_events(server.state):
                    await self._transition(
                        conn,
                        server,
                        lifecycle.apply(server.state, "fail"),
                        "fail",
                        epoch=lease.epoch,
                        last_error=reason,
                    )
                else:
                    await servers.set_last_error(conn, server, reason)
        except errors.ZlhError as mark_error:
            log.error("server %s: could not record that its actor gave up: %s", server_id, mark_error)
