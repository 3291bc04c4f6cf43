"""Creating a server: one request -> one record, with everything allocated in the same transaction.

One transaction inserts the idempotency record, the server row, its VMID, its IP, its node and game
port, its first journal entry and its `create` command, and stores the answer under the key. Either
all of it exists or none of it does.

Keys. The database's primary key on (tenant, key) is the arbiter: of two requests with one key,
exactly one claims it, and the other replays the stored answer (`Idempotent-Replayed: true`). A key
reused with a different request is refused (422); a key past its expiry is forgotten and reusable; a
request whose transaction fails (a taken name, an unpinned launcher) stores nothing, so retrying it
re-runs the checks. Within one replica two shortcuts keep duplicates off the database, each
answering exactly what the database would:

- **In flight**: a request whose key is already being created on this replica waits for that
  request's answer (no pool connection, no row lock) and replays it. A different body under the
  key waits too, and is a 422 only once the first has stored an answer. If the first request
  fails, it stored nothing, so each waiter runs its request itself, as it would have after the
  first's rollback (a different body included: the key holds nothing to conflict with).
- **Recently answered**: the answers this replica stored or replayed are kept (at most `RECENT`,
  least recently used out first) with the key's fingerprint and expiry. A stored answer never
  changes before its expiry, so it is replayed from memory, but only until `MARGIN` before the
  expiry: near it the database decides, as for any key this replica has not seen, so a clock that
  differs from the database's by less than `MARGIN` cannot replay an answer the database forgot.

A duplicate that takes either shortcut is not validated again: its body is the one that was valid.
Across replicas nothing is shared but the database, as before.

Batches (group commit). Allocation is serialized by a transaction-scoped advisory lock, so two
creates never pick the same free VMID, IP or port. A replica runs one batch at a time: the creates
that arrive while one runs wait, and the next batch takes them (up to `MAX_BATCH`) once its
transaction is open, so those that arrive while it opens go too. A batch is one transaction under
that one lock, with one statement per step for the whole batch (storage/new_servers.py, the batched
forms in allocations and idempotency) and one commit: the same rows, allocated exactly as the same
creates one after another would be. Keys are claimed before the lock is taken, as alone. What
concerns one request only is settled before the batch writes anything: a stored answer is
replayed, a key reused with another body is a 422, an unpinned launcher a 400, and a key another
replica holds is left to run alone (it then replays that replica's answer). Anything that fails the
batch's transaction itself (a taken name, no capacity, a lock timeout) rolls the whole batch back,
and then each of its requests runs alone in its own transaction, exactly as an unbatched create:
one bad request never fails the others, it only costs them the fast path.

Starting. A new server's `create` command wakes its actor, which starts provisioning: Proxmox calls,
database writes, an agent to start. Given the replica's inbox (`Starts`), the creating replica wakes
the actors of the servers it created itself, once no create is being answered here, and at most
`START_WITHIN` after their commit; their commands' notifications are skipped here (they still reach
the owner when another replica holds the shard). A burst of creates is thus answered before the
provisioning it causes competes with the answers for the event loop, the interpreter and the
machine's cores. Provisioning takes seconds; the wait adds at most `START_WITHIN` to it, and only
while creates keep arriving. Should the replica stop before it wakes them, the commands wait in the
inbox for the sweep, as any command whose wake-up was lost.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import datetime
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Iterator
from typing import Any, Protocol

import asyncpg

from storage import (
    allocations,
    database,
    idempotency,
    launchers,
    new_servers,
    queries,
    servers,
)
from zlh_actors import config, errors
from zlh_actors.proxmox import protocol
from zlh_actors.servers import requests, views

log = logging.getLogger(__name__)

# The first journal entry of every server (from nothing to `requested`).
REQUEST_EVENT = "request"
_ATTEMPTS = 5
RECENT = 4096  # answers kept per replica: ~1-2 KiB each
MARGIN = datetime.timedelta(seconds=60)  # near its expiry a key is looked up in the database
MAX_BATCH = 100  # creates per transaction; the allocation lock is held for the whole batch
START_WITHIN = 0.25  # seconds: the longest a created server's provisioning waits for answers to go out

Pair = idempotency.Pair


@dataclasses.dataclass(frozen=True)
class Answer:
    """What the API answers; `expires_at` is when the stored answer's key expires (not rendered)."""

    status: int
    body: dict[str, Any]
    replayed: bool = False
    expires_at: datetime.datetime | None = None


class Starts(Protocol):
    """Who wakes a new server's actor (the replica's `runtime.inbox.Inbox`)."""

    def expect(self, command_ids: Iterable[uuid.UUID]) -> None:
        """Before the commit: these commands' servers are woken here; skip their notifications."""

    def wake(self, server_ids: Iterable[uuid.UUID]) -> None:
        """After the commit: wake the servers' actors where this replica owns them."""


class Placement:
    """Chooses a node by free memory among online nodes, with the answer cached for a moment so a
    burst of creates does not query Proxmox once per request.

    It also carries the replica's `Front` (requests in flight, recent answers, the batch queue, the
    servers to start): the one per-replica object the create path is given. Without `starts`, new
    servers are woken by their commands' notifications, at once."""

    def __init__(
        self, driver: protocol.ProxmoxDriver, *, ttl: float = 2.0, starts: Starts | None = None
    ) -> None:
        self._driver = driver
        self._ttl = ttl
        self._cached: tuple[float, list[protocol.NodeInfo]] | None = None
        self._reading: asyncio.Task[list[protocol.NodeInfo]] | None = None
        self.front = Front(starts=starts)

    def warm(self) -> None:
        """Start reading the node list now if the cached one is stale: a create calls this when it
        arrives, so the read overlaps what comes before its batch instead of delaying the batch."""
        if self._stale() and (self._reading is None or self._reading.done()):
            self._reading = asyncio.create_task(self._read(), name="placement-nodes")
            self._reading.add_done_callback(_retrieved)

    async def nodes(self) -> list[protocol.NodeInfo]:
        """The node list, read at most `ttl` seconds ago; concurrent reads share one."""
        if self._cached is not None and not self._stale():
            return self._cached[1]
        self.warm()
        assert self._reading is not None
        return await asyncio.shield(self._reading)

    def _stale(self) -> bool:
        return self._cached is None or time.monotonic() - self._cached[0] > self._ttl

    async def _read(self) -> list[protocol.NodeInfo]:
        try:
            now = time.monotonic()
            listing = await self._driver.nodes()
            self._cached = (now, listing)
            return listing
        finally:
            self._reading = None

    async def choose_many(
        self, conn: database.Conn, memory_mb: list[int], nodes: list[protocol.NodeInfo]
    ) -> list[str]:
        """The online node with the most free memory for each server in order, once our pending
        servers are counted, each counting the ones chosen before it as pending, as if each had been
        created (and committed) before the next.

        `nodes` is read from Proxmox *before* the create's transaction: a slow Proxmox must never
        hold the allocation lock or an open transaction."""
        pending = {
            row["node"]: int(row["memory_mb"]) for row in await queries.fetch(conn, "pending_memory_by_node")
        }
        chosen = []
        for wanted in memory_mb:
            best: tuple[int, str] | None = None
            for node in nodes:
                if not node.online:
                    continue
                free = node.free_memory_mb - pending.get(node.name, 0)
                if best is None or free > best[0]:
                    best = (free, node.name)
            if best is None or best[0] < wanted:
                raise errors.CapacityExhausted("no online node has enough free memory", memory_mb=wanted)
            chosen.append(best[1])
            pending[best[1]] = pending.get(best[1], 0) + wanted
        return chosen


def _retrieved(task: asyncio.Task[list[protocol.NodeInfo]]) -> None:
    # A read's error reaches whoever awaits it; one only started by `warm` may have nobody.
    if not task.cancelled():
        task.exception()


@dataclasses.dataclass
class _Recent:
    fingerprint: bytes
    answer: Answer
    expires_at: datetime.datetime


@dataclasses.dataclass
class _Flight:
    fingerprint: bytes
    # The first request's answer as its duplicates get it (replayed), or None when it failed (it
    # stored nothing).
    done: asyncio.Future[Answer | None]
    waiting: int = 0  # duplicates waiting for it


@dataclasses.dataclass
class _Item:
    """One request waiting for a batch; `done` gets its answer, or None: run alone."""

    pair: Pair
    fingerprint: bytes
    request: requests.CreateRequest
    done: asyncio.Future[Answer | None]


class Front:
    """A replica's in-process state of creation: requests in flight by key, recent answers, the
    queue of creates waiting for the running batch, and the new servers waiting to be started."""

    def __init__(self, *, recent: int = RECENT, starts: Starts | None = None) -> None:
        self.flights: dict[Pair, _Flight] = {}
        self._recent: collections.OrderedDict[Pair, _Recent] = collections.OrderedDict()
        self._capacity = recent
        self._queue: list[_Item] = []
        self._batcher: asyncio.Task[None] | None = None
        self.batches = 0  # batch transactions attempted, for tests and benchmarks
        self.fallbacks = 0  # of them, rolled back and run request by request
        self._starts = starts
        self._answering = 0  # creates being answered here (`create` calls not returned)
        self._answered = asyncio.Event()  # set while none is
        self._answered.set()
        self._to_start: list[uuid.UUID] = []
        self._starter: asyncio.Task[None] | None = None

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Around the answering of one create."""
        self._answering += 1
        self._answered.clear()
        try:
            yield
        finally:
            self._answering -= 1
            if not self._answering:
                self._answered.set()

    def expect(self, commands: Iterable[uuid.UUID]) -> None:
        """In the transaction that enqueues these `create` commands: this replica starts their servers."""
        if self._starts is not None:
            self._starts.expect(commands)

    def start(self, server_ids: Iterable[uuid.UUID]) -> None:
        """After the commit: wake the new servers' actors once no create is being answered here, or
        `START_WITHIN` from now."""
        if self._starts is None:
            return
        self._to_start.extend(server_ids)
        if self._starter is None:
            self._starter = asyncio.create_task(self._start(self._starts), name="zlh-create-starts")

    async def _start(self, starts: Starts) -> None:
        try:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(START_WITHIN):
                    await self._answered.wait()
        finally:  # cancelled (the loop is ending): the sweep finds their commands
            self._starter = None
            server_ids, self._to_start = self._to_start, []
        starts.wake(server_ids)

    def recent(self, pair: Pair) -> _Recent | None:
        """The stored answer for the key if this replica knows it and it is not near its expiry."""
        known = self._recent.get(pair)
        if known is None:
            return None
        if known.expires_at - MARGIN <= datetime.datetime.now(datetime.UTC):
            del self._recent[pair]
            return None
        self._recent.move_to_end(pair)
        return known

    def remember(self, pair: Pair, fingerprint: bytes, replay: Answer) -> None:
        """Keep an answer, in the form a duplicate gets it (`replayed`)."""
        if replay.expires_at is None:
            return
        self._recent[pair] = _Recent(fingerprint, replay, replay.expires_at)
        self._recent.move_to_end(pair)
        while len(self._recent) > self._capacity:
            self._recent.popitem(last=False)

    def submit(self, item: _Item, run: Callable[[_Batch], Awaitable[None]]) -> None:
        """Queue a create for the next batch, starting the batcher if none runs."""
        self._queue.append(item)
        if self._batcher is None:
            self._batcher = asyncio.create_task(self._drain(run), name="zlh-create-batches")

    async def _drain(self, run: Callable[[_Batch], Awaitable[None]]) -> None:
        try:
            while self._queue:
                batch = _Batch(self._queue)
                try:
                    await run(batch)
                except Exception:
                    log.exception("a batch of creates failed; each runs alone")
                finally:
                    for item in batch.take():  # what the batch did not answer runs alone
                        _settle(item.done, None)
        finally:
            self._batcher = None
            for item in self._queue:  # only when cancelled (the loop is ending)
                _settle(item.done, None)
            self._queue.clear()


class _Batch:
    """The creates of one batch, taken from the queue as late as possible: once its transaction is
    open, so the creates that arrived while it was being opened go with it."""

    def __init__(self, queue: list[_Item]) -> None:
        self._queue = queue
        self._items: list[_Item] | None = None

    def take(self) -> list[_Item]:
        """The batch's items (taken from the queue at the first call)."""
        if self._items is None:
            self._items = self._queue[:MAX_BATCH]
            del self._queue[:MAX_BATCH]
        return self._items


def _settle(done: asyncio.Future[Answer | None], answer: Answer | None) -> None:
    if not done.done():
        done.set_result(answer)


def _fail(done: asyncio.Future[Answer | None], exc: errors.ZlhError) -> None:
    if not done.done():
        done.set_exception(exc)


async def create(
    pool: asyncpg.Pool,
    settings: config.Settings,
    placement: Placement,
    *,
    tenant: str,
    key: str,
    fingerprint: bytes,
    parse: Callable[[], requests.CreateRequest],
) -> Answer:
    """The answer to a create; `parse` validates its body (`BadRequest`).

    The body is validated first, as always, except for a request identical (same fingerprint) to
    one whose answer is known or awaited here: that body was valid, and parsing it is most of what a
    duplicate would cost."""
    with placement.front.answering():
        return await _create(pool, settings, placement, (tenant, key), fingerprint, parse)


async def _create(
    pool: asyncpg.Pool,
    settings: config.Settings,
    placement: Placement,
    pair: Pair,
    fingerprint: bytes,
    parse: Callable[[], requests.CreateRequest],
) -> Answer:
    front = placement.front
    key = pair[1]
    while True:
        recent = front.recent(pair)
        if recent is not None:
            if recent.fingerprint != fingerprint:
                parse()
                raise _mismatch(key)
            return recent.answer
        flight = front.flights.get(pair)
        if flight is None:
            break
        same = flight.fingerprint == fingerprint
        if not same:
            parse()  # a bad body is a 400 before anything else, as always
        flight.waiting += 1
        try:
            first = await asyncio.shield(flight.done)
        finally:
            flight.waiting -= 1
        if first is not None and same:
            return first
        # A different request under the key waits for the first too, and is refused (422) only if
        # the first stored an answer (the next look finds it); if the first failed and stored
        # nothing, the key is free: this one runs (or waits for the next try).
    request = parse()
    placement.warm()
    flight = _Flight(fingerprint, asyncio.get_running_loop().create_future())
    front.flights[pair] = flight
    replay: Answer | None = None  # one copy for every duplicate, in flight or later
    item = _Item(pair, fingerprint, request, _future())
    try:
        answer = await _batched(pool, settings, placement, item)
        if answer is None:
            answer = await _alone(pool, settings, placement, item)
        replay = dataclasses.replace(answer, replayed=True)
        front.remember(pair, fingerprint, replay)
        return answer
    finally:
        del front.flights[pair]
        _settle(flight.done, replay)


def _future() -> asyncio.Future[Answer | None]:
    return asyncio.get_running_loop().create_future()


async def _batched(
    pool: asyncpg.Pool, settings: config.Settings, placement: Placement, item: _Item
) -> Answer | None:
    """The request's answer from a batch, or None when it has to run alone."""

    async def run(batch: _Batch) -> None:
        await _run_batch(pool, settings, placement, batch)

    placement.front.submit(item, run)
    return await asyncio.shield(item.done)


async def _run_batch(
    pool: asyncpg.Pool, settings: config.Settings, placement: Placement, batch: _Batch
) -> None:
    """One transaction for the batch; settles every item it can answer, leaves the rest to run alone.

    A key appears once per batch: a request whose first (cancelled) try is still in this batch runs
    alone, and so replays it."""
    placement.front.batches += 1
    now = datetime.datetime.now(datetime.UTC)
    expires = now + datetime.timedelta(seconds=settings.idempotency_ttl)
    try:
        nodes = await placement.nodes()
        async with database.transaction(pool) as conn:
            unique: dict[Pair, _Item] = {}
            for item in batch.take():
                unique.setdefault(item.pair, item)
            fresh = await _claim(conn, list(unique.values()), now, expires)
            if not fresh:
                return
            answers = await _write(conn, settings, placement, fresh, nodes, expires)
    except (errors.ZlhError, OSError) as exc:
        placement.front.fallbacks += 1
        log.info("a batch of %d creates was rolled back (%s); each runs alone", len(batch.take()), exc)
        return  # the unsettled items run alone
    for item, (answer, server) in zip(fresh, answers, strict=True):
        _settle(item.done, answer)
        _requested(item.pair[0], server)
    placement.front.start(server.id for _, server in answers)


def _requested(tenant: str, server: servers.Server) -> None:
    log.info(
        "server %s (%s/%s) requested: vmid %s on %s, %s:%s",
        server.id,
        tenant,
        server.name,
        server.vmid,
        server.node,
        server.ip,
        server.game_port,
    )


async def _claim(
    conn: database.Conn, batch: list[_Item], now: datetime.datetime, expires: datetime.datetime
) -> list[_Item]:
    """Claim the batch's keys; answer the requests that need no new server. Returns those claimed."""
    known = await idempotency.get_many(conn, [item.pair for item in batch])
    candidates: list[_Item] = []
    expired: list[_Item] = []
    for item in batch:
        record = known.get(item.pair)
        if record is None:
            candidates.append(item)
        elif record.expires_at <= now:
            expired.append(item)
        elif record.fingerprint != item.fingerprint:
            _fail(item.done, _mismatch(item.pair[1]))
        elif record.completed:
            assert record.response_status is not None
            replay = Answer(record.response_status, record.response_body, True, record.expires_at)
            _settle(item.done, replay)
        # else: claimed but unanswered; left to run alone, which says so
    if expired:
        forgotten = await idempotency.forget(conn, [item.pair for item in expired])
        candidates += [item for item in expired if item.pair in forgotten]
    pinned: dict[tuple[str, str, str], bool] = {}
    ready = []
    for item in candidates:
        triple = (item.request.minecraft_version, item.request.loader_version, item.request.installer_version)
        if triple not in pinned:
            pinned[triple] = await launchers.get(conn, *triple) is not None
        if pinned[triple]:
            ready.append(item)
        else:
            _fail(item.done, _unpinned())
    if not ready:
        return []
    claimed = await idempotency.claim_many(conn, [(item.pair, item.fingerprint) for item in ready], expires)
    return [item for item in ready if item.pair in claimed]  # the others replay once run alone


async def _write(
    conn: database.Conn,
    settings: config.Settings,
    placement: Placement,
    fresh: list[_Item],
    nodes: list[protocol.NodeInfo],
    expires: datetime.datetime,
) -> list[tuple[Answer, servers.Server]]:
    """Every row of the claimed creates, one statement per step, under the allocation lock. Their
    `create` commands are expected by the front: once the transaction commits, the caller starts
    the new servers (`Front.start`)."""
    await allocations.lock(conn)
    chosen = await placement.choose_many(conn, [item.request.memory_mb for item in fresh], nodes)
    new = [
        new_servers.New(servers.ServerId(uuid.uuid4()), item.pair[0], item.request.name, item.request.spec())
        for item in fresh
    ]
    rows = await new_servers.insert(conn, new, state="requested", event=REQUEST_EVENT)
    ids: list[uuid.UUID] = [server.id for server in new]
    low, high = settings.vmid_range
    vmids = await allocations.allocate_vmids(conn, ids, low, high)
    gateway = [settings.ip_gateway] if settings.ip_gateway else []
    ips = await allocations.allocate_ips(conn, ids, settings.ip_subnet, gateway)
    ports = await allocations.allocate_ports(conn, ids, chosen, *settings.game_ports)
    places = [
        new_servers.Placement(node, vmid.vmid, ip.ip, port.port)
        for node, vmid, ip, port in zip(chosen, vmids, ips, ports, strict=True)
    ]
    rows = await new_servers.set_placements(conn, rows, places, generation=1)
    created = await new_servers.enqueue(conn, ids, "create")
    placement.front.expect(command.id for command in created)  # the caller starts their servers
    bodies = []
    for server, command in zip(rows, created, strict=True):
        body = views.server(server)
        body["command"] = views.command(command)
        bodies.append(body)
    await idempotency.complete_many(
        conn,
        [(item.pair, server_id, 202, body) for item, server_id, body in zip(fresh, ids, bodies, strict=True)],
    )
    return [
        (Answer(202, body, expires_at=expires), server) for body, server in zip(bodies, rows, strict=True)
    ]


def _mismatch(key: str) -> errors.IdempotencyMismatch:
    return errors.IdempotencyMismatch("this Idempotency-Key was used with a different request", key=key)


def _unpinned() -> errors.BadRequest:
    return errors.BadRequest(
        "no Fabric launcher is pinned for this Minecraft, loader and installer version",
        fields={
            "fabric": "unpinned triple; an operator pins launchers with `python -m zlh_actors launchers pin`"
        },
    )


# --- one request alone, a batch of one in a transaction of its own: the path a request takes when
# --- its batch could not answer it


async def _replay(conn: database.Conn, tenant: str, key: str, fingerprint: bytes) -> Answer | None:
    """The answer for a key that is already taken, or None if the key is free (or expired and freed)."""
    record = await idempotency.get(conn, tenant, key)
    if record is None:
        return None
    if record.expires_at <= datetime.datetime.now(datetime.UTC):
        await queries.fetchval(conn, "forget_idempotency_key", tenant, key)
        return None
    if record.fingerprint != fingerprint:
        raise _mismatch(key)
    if not record.completed:
        raise errors.InProgress("a request with this Idempotency-Key is still in progress", key=key)
    assert record.response_status is not None
    return Answer(record.response_status, record.response_body, True, record.expires_at)


async def _alone(pool: asyncpg.Pool, settings: config.Settings, placement: Placement, item: _Item) -> Answer:
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return await _create_once(pool, settings, placement, item)
        except errors.IdempotencyKeyTaken:
            continue  # another request with this key committed first: replay its answer
        except errors.CapacityExhausted:
            raise
        except errors.Transient:
            # A lock wait that hit lock_timeout (a burst of creates): nothing was written; try again.
            if attempt == _ATTEMPTS:
                raise
            await asyncio.sleep(0.05 * attempt)
    raise errors.InProgress("a request with this Idempotency-Key is still in progress", key=item.pair[1])


async def _create_once(
    pool: asyncpg.Pool, settings: config.Settings, placement: Placement, item: _Item
) -> Answer:
    """A batch of one, in a transaction of its own, whose failures are the request's answer."""
    (tenant, key), request = item.pair, item.request
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=settings.idempotency_ttl)
    nodes = await placement.nodes()
    async with database.transaction(pool) as conn:
        replay = await _replay(conn, tenant, key, item.fingerprint)
        if replay is not None:
            return replay
        await idempotency.claim(conn, tenant, key, item.fingerprint, expires)
        launcher = await launchers.get(
            conn, request.minecraft_version, request.loader_version, request.installer_version
        )
        if launcher is None:
            raise _unpinned()
        try:
            [(answer, server)] = await _write(conn, settings, placement, [item], nodes, expires)
        except errors.NameTaken:
            raise errors.NameTaken(
                f"a live server named {request.name!r} already exists", fields={"name": "taken"}
            ) from None
    _requested(tenant, server)
    placement.front.start([server.id])
    return answer
