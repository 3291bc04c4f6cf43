"""`GET /v1/stream`: every journal entry of the caller's servers, live, over a WebSocket, resumable.

The order. Entries are streamed in the journal's `(txid, position)` order, and each carries that
pair as its cursor (`storage/journal.py`, migration 0004). A position alone cannot be a cursor:
positions are drawn at insert and transactions commit in any order, so position 104 may become
visible after 105 was sent. What makes the order safe to follow is the horizon: no transaction
older than the oldest one still running (`pg_snapshot_xmin`) can add an entry any more, so the
entries below it are final, and only those are ever sent. A committed entry above it is *held*
until the older transactions end, and re-read shortly (10 ms, backing off to 0.5 s). A cursor is
therefore a point in a final prefix: resuming after it loses nothing and repeats nothing, whichever
replica serves the reconnect. (txid is raised to the server's previous entry's when smaller, so each
server's entries keep their seq order.) docs/stream.md has the full argument.

The fan-out. One `Hub` per replica LISTENs on `zlh_journal` on a dedicated connection (a pooled one
is UNLISTENed on release). A notification is only a wake-up: the hub re-reads the journal after its
own head, never taking entries from the payload, and hands the final entries, serialized once, to
every subscriber. The payload's cursor only spares a read: an entry at or before the head was final
when the head passed it, hence visible and sent, and under load most notifications arrive after the
read that sent their entry. The actors' entries are not NOTIFYed one by one: their replica announces
them after the commit (`runtime.announcer`), waking its own hub directly and the others with one
coalesced NOTIFY, which names the sender so that its own hub skips it. Notifications sent while the
connection is down are lost, so after every (re)connect the hub re-reads from its head; and an
announcement that never came (its replica died before sending it) is caught by the read the hub
does whenever it has been idle for `PROBE_INTERVAL`. Nothing else is needed, because entries are
read, not received.

A client. The handler subscribes first and then sends from its own cursor: each batch from the hub
says which part of the order it covers (`prev`, `head`]; if the client's cursor is behind `prev` (it
asked for `since=`), the gap is read from the journal (final, so exact) before the batch is sent,
and entries at or before the cursor are skipped. Replay and live are one loop, so
there is no hand-over to get wrong. A subscriber holds at most `MAX_PENDING` undelivered events;
beyond that the client is closed with 4008 "consumer too slow" instead of being buffered without
bound, and it may reconnect with its last cursor.

Authentication is the REST API's bearer token: the `Authorization` header, or (browsers cannot set
headers on a WebSocket) a first message `{"type": "auth", "token": ...}` within `AUTH_TIMEOUT`.
A user sees its tenant's servers only, in replay and live; an admin sees every tenant. On shutdown
every socket is closed with 1001 (GOING_AWAY) before the hub stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import asyncpg
import orjson
from aiohttp import web

from storage import database, journal, tokens
from zlh_actors import errors
from zlh_actors.api import auth, keys
from zlh_actors.runtime import announcer, listener
from zlh_actors.servers import views

log = logging.getLogger(__name__)

PATH = "/v1/stream"
LISTEN_APP = "zlh-stream:"

# Module constants rather than settings; read when a client connects, so tests may patch them.
# Timeouts use asyncio.timeout, never wait_for: on Python 3.11 wait_for can swallow a cancellation
# that arrives as its awaitable completes, and these loops end only by being cancelled.
HEARTBEAT = 15.0  # seconds: WebSocket pings, and a heartbeat message after this long without one
AUTH_TIMEOUT = 5.0  # seconds a header-less client has to send its auth message
MAX_PENDING = 1000  # undelivered events a client may have before it is closed as too slow
CLOSE_GRACE = 10.0  # seconds a closing client has to read its close frame before the socket is cut
MAX_MESSAGE = 4096  # bytes: clients only ever send an auth message
SEND_BUFFER = 128 * 1024  # bytes of kernel send buffer per client (see `_bound_send_buffer`)
PAGE = 500  # entries per journal read

HELD_POLL = (0.01, 0.5)  # seconds: first and longest wait before re-reading held entries
PROBE_INTERVAL = 1.0  # seconds idle before the LISTEN connection is probed and the journal read
RETRY = (0.2, 5.0)  # seconds: first and longest wait before reconnecting

UNAUTHORIZED = 4401
TOO_SLOW = 4008


@dataclasses.dataclass
class Batch:
    """Everything in the order after `prev` up to `head`, as events a subscriber may see."""

    prev: journal.Cursor
    head: journal.Cursor
    events: list[tuple[journal.Cursor, str]]


class Subscriber:
    """One client's window on the hub: a single pending batch, bounded, never blocking the hub."""

    def __init__(self, scope: str | None, head: journal.Cursor, limit: int) -> None:
        self.scope = scope
        self.start = head
        self.ready = asyncio.Event()
        self.overflowed = asyncio.Event()
        self._limit = limit
        # The hub's batches are contiguous, so everything undelivered merges into one.
        self._pending: Batch | None = Batch(head, head, [])
        self.ready.set()

    def offer(
        self, prev: journal.Cursor, head: journal.Cursor, found: list[tuple[journal.Published, str]]
    ) -> None:
        if self.overflowed.is_set():
            return
        events = [(p.entry.cursor, text) for p, text in found if self.scope is None or p.tenant == self.scope]
        if self._pending is None:
            self._pending = Batch(prev, head, events)
        else:
            self._pending.head = head
            self._pending.events.extend(events)
        if len(self._pending.events) > self._limit:
            self._pending = None  # let the memory go now; the client is closed
            self.overflowed.set()
        self.ready.set()

    def take(self) -> Batch | None:
        batch, self._pending = self._pending, None
        self.ready.clear()
        return batch


def _state_event(entry: journal.Entry) -> str:
    # The REST journal view is the one shape of an entry; the stream adds its type and cursor.
    return orjson.dumps({"type": "server.state", **views.event(entry), "cursor": str(entry.cursor)}).decode()


class Hub:
    """This replica's follower of the journal, fanning final entries out to subscribers."""

    def __init__(
        self,
        url: str,
        pool: asyncpg.Pool,
        *,
        server_settings: dict[str, str],
        announcements: announcer.Announcer | None = None,
    ) -> None:
        self.head = journal.ORIGIN
        self._pool = pool
        self._subscribers: set[Subscriber] = set()
        self._wake = asyncio.Event()
        self._replica_id = None if announcements is None else announcements.replica_id
        if announcements is not None:
            announcements.on_local(self._wake.set)
        self._listener = listener.Listener(
            url,
            name="stream hub",
            server_settings=server_settings,
            channels={announcer.CHANNEL: self._notified},
            on_connect=self._connected,
            serve=self._follow,  # waits for work, probing when idle; a failed read also reconnects
            probe_interval=PROBE_INTERVAL,
            probe_timeout=PROBE_INTERVAL * 5,
            backoff=RETRY,
        )
        self._stopping = False

    def __len__(self) -> int:
        return len(self._subscribers)

    @property
    def reconnects(self) -> int:
        return self._listener.reconnects

    async def start(self) -> None:
        # The head must be known before the first client subscribes: it is where "now" begins.
        async with self._pool.acquire() as conn:
            self.head = await journal.horizon(conn)
        self._listener.start("stream-hub")

    async def stop(self) -> None:
        # The flags end the loops even if a library swallows the cancellation.
        self._stopping = True
        await self._listener.close()

    def subscribe(self, scope: str | None) -> Subscriber:
        subscriber = Subscriber(scope, self.head, MAX_PENDING)
        self._subscribers.add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        self._subscribers.discard(subscriber)

    def _notified(self, _conn: object, _pid: int, _channel: str, payload: object) -> None:
        own = self._replica_id is not None and announcer.sender(str(payload)) == self._replica_id
        if not own and not self._sent(payload):
            self._wake.set()

    def _sent(self, payload: object) -> bool:
        """Whether the notified entry is at or before the head: final then, so read and sent already.

        Every entry whose key is at most a final key was visible when that key was final (see the
        module's docstring), so the read that moved the head past it sent it. Any payload that does
        not name a cursor wakes the hub.
        """
        try:
            data = orjson.loads(str(payload))
            cursor = journal.Cursor(int(data["txid"]), int(data["position"]))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            return False
        return cursor <= self.head

    async def _connected(self) -> None:
        self._wake.set()  # entries committed while nobody listened: read from the head

    async def _follow(self) -> None:
        """While connected: read after each wake-up, re-read held entries shortly, and when idle
        probe the connection and read (a peer's announcement may never have come)."""
        held, wait = False, HELD_POLL[0]
        while not self._stopping:
            try:
                async with asyncio.timeout(wait if held else PROBE_INTERVAL):
                    await self._wake.wait()
            except TimeoutError:
                if not held:
                    await self._listener.probe()
            self._wake.clear()
            held = await self._read()
            wait = min(wait * 2, HELD_POLL[1]) if held else HELD_POLL[0]

    async def _read(self) -> bool:
        """Publish every final entry after the head; True if newer committed ones are held back."""
        while True:
            async with self._pool.acquire() as conn:
                found, held = await journal.committed_after(conn, self.head, limit=PAGE)
            if found:
                prev, self.head = self.head, found[-1].entry.cursor
                texts = [(published, _state_event(published.entry)) for published in found]
                for subscriber in list(self._subscribers):
                    subscriber.offer(prev, self.head, texts)
            if held or len(found) < PAGE:
                return held


async def handler(request: web.Request) -> web.StreamResponse:
    since = _since(request)
    ws = web.WebSocketResponse(heartbeat=HEARTBEAT, compress=False, max_msg_size=MAX_MESSAGE)
    if not ws.can_prepare(request).ok:
        raise errors.BadRequest(f"{PATH} is a WebSocket: send a WebSocket upgrade request")
    _bound_send_buffer(request)
    await ws.prepare(request)
    sockets = request.app[keys.SOCKETS]
    sockets[ws] = request
    try:
        who = request[auth.PRINCIPAL] if auth.PRINCIPAL in request else await _authenticate(request, ws)
        if who is not None:
            await _serve(request, ws, who, since)
    except errors.ZlhError as exc:
        # Past the upgrade, errors are close codes: the problem+json middleware cannot answer.
        await _close(ws, request, 1011, f"unavailable: {exc.message}")
    except Exception:
        log.exception("stream handler failed")
        await _close(ws, request, 1011, "internal error")
    finally:
        sockets.pop(ws, None)
    return ws


def _bound_send_buffer(request: web.Request) -> None:
    """Fix the send buffer: autotuned, a client that stops reading holds megabytes of events in the
    kernel before its queue here starts to fill. Fixed, a slow client costs at most this, aiohttp's
    64 KiB write buffer and MAX_PENDING events, and is noticed after a few thousand events.
    """
    sock = None if request.transport is None else request.transport.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


def _since(request: web.Request) -> journal.Cursor | None:
    text = request.query.get("since")
    if text is None:
        return None
    try:
        return journal.Cursor.parse(text)
    except ValueError:
        raise errors.BadRequest("malformed cursor", fields={"since": "not a cursor of this API"}) from None


async def _authenticate(request: web.Request, ws: web.WebSocketResponse) -> auth.Principal | None:
    """The principal named by the first message, or None after closing the socket with 4401."""
    try:
        message = await ws.receive(timeout=AUTH_TIMEOUT)
    except TimeoutError:
        await _refuse(request, ws, f"no auth message within {AUTH_TIMEOUT:g} s")
        return None
    if message.type is not aiohttp.WSMsgType.TEXT:
        if ws.closed:
            return None
        await _refuse(request, ws, 'the first message must be {"type": "auth", "token": ...}')
        return None
    try:
        data: Any = orjson.loads(message.data)
    except orjson.JSONDecodeError:
        data = None
    secret = data.get("token") if isinstance(data, dict) and data.get("type") == "auth" else None
    if not isinstance(secret, str):
        await _refuse(request, ws, 'the first message must be {"type": "auth", "token": ...}')
        return None
    async with database.acquire(request.app[keys.POOL]) as conn:
        token = await tokens.authenticate(conn, secret)
    if token is None:
        await _refuse(request, ws, "invalid or revoked token")
        return None
    return auth.Principal(tenant=token.tenant, role=token.role)


async def _refuse(request: web.Request, ws: web.WebSocketResponse, reason: str) -> None:
    request.app[keys.METRICS].inc("zlh_stream_closed_total", reason="unauthorized")
    await _close(ws, request, UNAUTHORIZED, reason)


async def _serve(
    request: web.Request, ws: web.WebSocketResponse, who: auth.Principal, since: journal.Cursor | None
) -> None:
    hub = request.app[keys.STREAM]
    subscriber = hub.subscribe(who.scope())
    sender = asyncio.create_task(
        _send(ws, request.app[keys.POOL], subscriber, since or subscriber.start), name="stream-send"
    )
    reader = asyncio.create_task(_discard_incoming(ws), name="stream-read")
    slow = asyncio.create_task(subscriber.overflowed.wait(), name="stream-overflow")
    try:
        await asyncio.wait({sender, reader, slow}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        hub.unsubscribe(subscriber)
        for task in (sender, reader, slow):
            task.cancel()
        outcome = (await asyncio.gather(sender, reader, slow, return_exceptions=True))[0]
    if subscriber.overflowed.is_set() and not ws.closed:
        request.app[keys.METRICS].inc("zlh_stream_closed_total", reason="too_slow")
        await _close(ws, request, TOO_SLOW, "consumer too slow")
    elif isinstance(outcome, BaseException) and not isinstance(
        outcome, ConnectionResetError | asyncio.CancelledError
    ):
        raise outcome
    # Otherwise the socket is closing (the client left, or shutdown) and there is nothing to add.


async def _send(
    ws: web.WebSocketResponse, pool: asyncpg.Pool, subscriber: Subscriber, cursor: journal.Cursor
) -> None:
    """Send events after `cursor`, gap-free and in order, forever; heartbeats when nothing else."""
    loop = asyncio.get_running_loop()
    await ws.send_str(orjson.dumps({"type": "hello", "cursor": str(cursor), "heartbeat": HEARTBEAT}).decode())
    sent_at = loop.time()
    while True:
        try:
            async with asyncio.timeout_at(sent_at + HEARTBEAT):
                await subscriber.ready.wait()
        except TimeoutError:
            # The cursor of a heartbeat is as good as an event's: a client whose servers are quiet
            # resumes from there without rescanning everyone else's entries.
            await ws.send_str(orjson.dumps({"type": "heartbeat", "cursor": str(cursor)}).decode())
            sent_at = loop.time()
            continue
        batch = subscriber.take()
        if batch is None:
            continue
        if cursor < batch.prev:
            cursor = await _replay(ws, pool, subscriber.scope, cursor, batch.prev)
            sent_at = loop.time()
        for at, text in batch.events:
            if at > cursor:
                await ws.send_str(text)
                sent_at = loop.time()
        cursor = max(cursor, batch.head)


async def _replay(
    ws: web.WebSocketResponse,
    pool: asyncpg.Pool,
    scope: str | None,
    after: journal.Cursor,
    upto: journal.Cursor,
) -> journal.Cursor:
    """Send the journal's entries in (after, upto], which is final; returns `upto`."""
    while True:
        async with database.acquire(pool) as conn:
            entries = await journal.replay(conn, after, upto, tenant=scope, limit=PAGE)
        for entry in entries:
            await ws.send_str(_state_event(entry))
        if len(entries) < PAGE:
            return upto
        after = entries[-1].cursor


async def _discard_incoming(ws: web.WebSocketResponse) -> None:
    # Someone must read: aiohttp answers pings and close frames only inside receive().
    async for _message in ws:
        pass


async def _close(ws: web.WebSocketResponse, request: web.Request, code: int, reason: str) -> None:
    """Close with a reason; a peer that does not read it within CLOSE_GRACE is cut off."""
    try:
        async with asyncio.timeout(CLOSE_GRACE):
            await ws.close(code=code, message=reason.encode()[:123])
    except TimeoutError:
        # A graceful transport close would wait for the peer to read the buffer, possibly forever.
        if request.transport is not None:
            request.transport.abort()


async def close_sockets(app: web.Application) -> None:
    """on_shutdown: every client hears 1001 (GOING_AWAY) and may reconnect to another replica."""
    going = [_close(ws, request, 1001, "server shutting down") for ws, request in app[keys.SOCKETS].items()]
    await asyncio.gather(*going, return_exceptions=True)


async def hub_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the hub follows the journal for the application's lifetime."""
    hub = app[keys.STREAM]
    counters = app[keys.METRICS]
    counters.describe("zlh_stream_closed_total", "stream clients closed by the server, by reason")
    counters.gauge(
        "zlh_stream_clients", "stream clients subscribed on this replica", lambda: [((), len(hub))]
    )
    counters.gauge(
        "zlh_stream_hub_reconnects", "times the stream hub reconnected", lambda: [((), hub.reconnects)]
    )
    await hub.start()
    yield
    await hub.stop()
