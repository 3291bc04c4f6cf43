"""Bearer-token authentication for the public and admin API.

Tokens are stored hashed with a tenant and a role. A user sees and touches only its own tenant's
servers (another tenant's server is a 404, not a 403, so ids do not leak); an admin sees all.
Agent callbacks authenticate with their own per-server tokens (see `agent_callbacks`).

Looking a token up costs a pool connection and a round trip, on every request. With `Tokens` in
the application (`TOKENS`, started by `tokens_context`), a replica remembers the tokens it found
live, for at most `CACHE_TTL` seconds, and only while it listens on `tokens.REVOKED_CHANNEL`: a
revocation (`tokens.revoke`, the only way a token is revoked) notifies every replica at its commit,
and each one forgets every cached token when it hears it. While the listener is not connected
(starting, reconnecting) nothing is cached or served from the cache, and a lookup that was running
when a revocation was heard is not cached. So a revoked token is refused by a replica as soon as the
notification reached it, milliseconds after the revocation's commit; only a revocation written
around `tokens.revoke` (plain SQL) waits for `CACHE_TTL`. Unknown and revoked tokens are never
cached: each is looked up again.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import time
from collections.abc import AsyncIterator

import asyncpg
from aiohttp import web

from storage import database, tokens
from zlh_actors import errors
from zlh_actors.api import keys, problems
from zlh_actors.runtime import listener

PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
STREAM_PATH = "/v1/stream"  # may authenticate with its first message instead of the header


@dataclasses.dataclass(frozen=True)
class Principal:
    tenant: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def scope(self) -> str | None:
        """The tenant to filter by: None for admins, who see every tenant."""
        return None if self.is_admin else self.tenant


PRINCIPAL = web.RequestKey("principal", Principal)

LISTEN_APP = "zlh-tokens:"  # the listener's application_name prefix, as the stream's and inbox's
CACHE_TTL = 10.0  # seconds a live lookup is reused: the bound for a revocation that sent no NOTIFY
CACHE_SIZE = 10_000  # tokens remembered per replica, least recently used out first
PROBE_INTERVAL = 1.0  # a listening connection shows no error until used: probed this often
# The cache answers only while the last probe came back this recently: a connection that died
# without a word (no FIN, no RST) hears no revocation, and this bounds how long that goes unseen.
FRESH = PROBE_INTERVAL * 1.5
RETRY = (0.5, 5.0)  # reconnect backoff, first and largest


class Tokens:
    """This replica's cache of live token lookups, valid while it hears revocations."""

    def __init__(
        self, url: str, *, server_settings: dict[str, str], ttl: float = CACHE_TTL, size: int = CACHE_SIZE
    ) -> None:
        self._ttl = ttl
        self._size = size
        self._known: collections.OrderedDict[bytes, tuple[float, Principal]] = collections.OrderedDict()
        # Bumped whenever what a running lookup read may be stale (a revocation heard, the listener
        # gone): its answer is then not cached.
        self._epoch = 0
        self._running: dict[bytes, tuple[int, asyncio.Future[Principal | None]]] = {}
        self._listening = False
        self._listener = listener.Listener(
            url,
            name="token revocation listener",
            server_settings=server_settings,
            channels={tokens.REVOKED_CHANNEL: self._revoked},
            on_connect=self._connected,
            on_lost=self._lost,
            probe_interval=PROBE_INTERVAL,
            probe_timeout=PROBE_INTERVAL * 5,
            backoff=RETRY,
        )
        self.lookups = 0  # database lookups made (hits are not), for tests and benchmarks

    @property
    def listening(self) -> bool:
        """The listener is connected and answered a probe within `FRESH` seconds: revocations are heard."""
        return self._listening and time.monotonic() - self._listener.answered <= FRESH

    @property
    def reconnects(self) -> int:
        return self._listener.reconnects

    async def authenticate(self, pool: asyncpg.Pool, secret: str) -> Principal | None:
        """The principal of a live token, or None; from the cache when it may be.

        Concurrent lookups of one token while listening share one database lookup, as long as no
        revocation was heard since it began (the same rule as for caching its answer)."""
        digest = tokens.digest(secret)
        if not self.listening:
            return await self._lookup(pool, secret)
        known = self._known.get(digest)
        if known is not None and known[0] > time.monotonic():
            self._known.move_to_end(digest)
            return known[1]
        running = self._running.get(digest)
        if running is not None and running[0] == self._epoch:
            return await asyncio.shield(running[1])
        epoch = self._epoch
        shared = asyncio.ensure_future(self._lookup(pool, secret))
        shared.add_done_callback(_retrieve)  # its error reaches whoever waits; none may be left
        self._running[digest] = (epoch, shared)
        try:
            who = await asyncio.shield(shared)
        finally:
            if self._running.get(digest, (0, None))[1] is shared:
                del self._running[digest]
        if who is not None and self.listening and epoch == self._epoch:
            self._known[digest] = (time.monotonic() + self._ttl, who)
            self._known.move_to_end(digest)
            while len(self._known) > self._size:
                self._known.popitem(last=False)
        return who

    async def _lookup(self, pool: asyncpg.Pool, secret: str) -> Principal | None:
        self.lookups += 1
        async with database.acquire(pool) as conn:
            token = await tokens.authenticate(conn, secret)
        return None if token is None else Principal(tenant=token.tenant, role=token.role)

    def _forget(self) -> None:
        self._epoch += 1
        self._known.clear()

    def _revoked(self, _conn: object, _pid: int, _channel: str, _payload: object) -> None:
        self._forget()

    async def _connected(self) -> None:
        self._forget()  # revocations sent while nobody listened
        self._listening = True

    def _lost(self) -> None:
        # Nothing is served from the cache until the listener is back: a failure costs speed, not safety.
        self._listening = False
        self._forget()

    async def start(self) -> None:
        self._listener.start("token-revocations")

    async def stop(self) -> None:
        self._listening = False
        await self._listener.close()


def _retrieve(done: asyncio.Future[Principal | None]) -> None:
    if not done.cancelled():
        done.exception()


TOKENS = web.AppKey("tokens", Tokens)


async def tokens_context(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the token cache listens for revocations for the application's lifetime."""
    cache = app[TOKENS]
    await cache.start()
    yield
    await cache.stop()


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def principal(request: web.Request) -> Principal:
    if PRINCIPAL not in request:
        raise errors.Unauthorized("authentication required")
    return request[PRINCIPAL]


def require_admin(request: web.Request) -> Principal:
    who = principal(request)
    if not who.is_admin:
        raise errors.Forbidden("this endpoint needs an admin token")
    return who


@web.middleware
async def middleware(request: web.Request, handler: problems.Handler) -> web.StreamResponse:
    if (
        request.path in PUBLIC
        or request.path.startswith("/agent/")
        or not request.path.startswith(("/v1/", "/admin/"))
    ):
        return await handler(request)
    secret = bearer(request)
    if secret is None:
        if request.path == STREAM_PATH:
            return await handler(request)  # browsers cannot set WebSocket headers: it authenticates itself
        raise errors.Unauthorized("missing bearer token")
    who = await _authenticate(request.app, secret)
    if who is None:
        raise errors.Unauthorized("invalid or revoked token")
    request[PRINCIPAL] = who
    return await handler(request)


async def _authenticate(app: web.Application, secret: str) -> Principal | None:
    cache = app.get(TOKENS)
    if cache is not None:
        return await cache.authenticate(app[keys.POOL], secret)
    async with database.acquire(app[keys.POOL]) as conn:
        token = await tokens.authenticate(conn, secret)
    return None if token is None else Principal(tenant=token.tenant, role=token.role)
