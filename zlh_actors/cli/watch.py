"""Following `GET /v1/stream`, resuming after a dropped connection without losing a transition.

The protocol (docs/stream.md) gives every message a cursor: the hello's, each event's, each
heartbeat's. `Stream` remembers the last one it received and, when the connection drops (a reset,
a replica shutting down with 1001, "consumer too slow" 4008, silence for two heartbeats), reconnects
with `?since=` that cursor, so the service replays exactly what was missed and nothing twice. It
retries with backoff for `GIVE_UP` seconds, then reports the service unreachable (exit 3). A refused
token (401 before the upgrade, 4401 after it) is not retried: it will not get better. Neither is a
400: the only one the stream answers to a WebSocket upgrade is for a malformed `since`. Before the
upgrade aiohttp keeps only the status ("Invalid response status"), so the line is built from it.
A connection that fails after the upgrade (no hello) is closed before the next attempt: each
attempt would otherwise leave a socket open until the command ends.

The first connection is not retried: if the service is not there when the command starts, saying
so at once is more useful than waiting a minute.

`wait_settled` is `create --wait`: the stream is opened *before* the server is created, so no
transition can fall between creating and following; the server's journal (`/events`) then gives
what already happened (every page of it: a server that crash-looped has more than one), and the
stream's events are taken from the next journal `seq` on.
"""

from __future__ import annotations

import asyncio
import time
from types import TracebackType
from typing import Any

import aiohttp
import orjson

from zlh_actors.cli import client, errors, render

PATH = "/v1/stream"
GIVE_UP = 60.0  # seconds of failed reconnection attempts before the stream is reported lost
BACKOFF = (0.2, 5.0)  # seconds: first and longest wait between reconnection attempts
UNAUTHORIZED = 4401
EVENTS_PAGE = 1000  # journal entries per /events request: the service's maximum `limit`
# Closing a connection that is already dead must not hold up the reconnection for long.
CLOSE_TIMEOUT = aiohttp.ClientWSTimeout(ws_close=2.0)

# Where a server `create --wait` waits for stops: running is success; the others will not become
# running without someone acting (retry, start), so waiting on would only hang.
SETTLED = ("running", "failed", "lost", "stopping", "stopped", "deleting", "deleted")


def matches(state: str, wanted: tuple[str, ...] | list[str]) -> bool:
    """`state` is one of `wanted`, or inside one of them (`failed` matches `failed.starting`)."""
    return any(state == w or state.startswith(w.rstrip(".") + ".") for w in wanted)


class Dropped(Exception):
    """The connection ended in a way a reconnection may cure; the message says how."""


class Stream:
    """One logical subscription over as many WebSocket connections as it takes.

    Attributes:
        cursor: the cursor of the last message received (None before the first hello).
    """

    def __init__(self, api: client.Client, console: render.Console, since: str | None = None) -> None:
        self.api = api
        self.console = console
        self.cursor = since
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._silence = 35.0

    async def __aenter__(self) -> Stream:
        try:
            await self._connect()
        except Dropped as exc:
            raise errors.ConnectionFailed(str(exc)) from None
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._close()

    async def _close(self) -> None:
        ws, self._ws = self._ws, None
        if ws is not None:
            await ws.close()

    async def next(self) -> dict[str, Any]:
        """The next `server.state` event, reconnecting as often as needed within GIVE_UP."""
        while True:
            try:
                message = await self._receive()
            except Dropped as exc:
                await self._reconnect(str(exc))
                continue
            if isinstance(message.get("cursor"), str):
                self.cursor = message["cursor"]
            if message.get("type") == "server.state":
                return message

    async def _connect(self) -> None:
        """Open a connection from `cursor` and read its hello; `Dropped` if that may be retried."""
        params = {} if self.cursor is None else {"since": self.cursor}
        try:
            self._ws = await self.api.session.ws_connect(
                self.api.url + PATH, params=params, headers=self.api.headers, timeout=CLOSE_TIMEOUT
            )
        except aiohttp.WSServerHandshakeError as exc:
            if exc.status == 401:
                raise errors.ApiError(401, "401 invalid or revoked token") from None
            if exc.status == 400:
                raise errors.ApiError(400, "400 malformed --since cursor") from None
            if 400 <= exc.status < 500:
                raise errors.ApiError(exc.status, f"{exc.status} the stream refused the connection") from None
            raise Dropped(f"{self.api.url}{PATH} answered {exc.status} {exc.message}") from None
        except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError, TimeoutError) as exc:
            raise Dropped(client.unreachable(self.api.url, exc).message) from None
        try:
            hello = await self._receive()
            if hello.get("type") != "hello" or not isinstance(hello.get("cursor"), str):
                raise Dropped(f"expected a hello, got {hello.get('type')!r}")
        except BaseException:
            await self._close()
            raise
        self.cursor = hello["cursor"]
        # Heartbeats come every `heartbeat` seconds when nothing else does: two missed is a dead link.
        self._silence = 2 * float(hello.get("heartbeat", 15.0)) + 5.0

    async def _receive(self) -> dict[str, Any]:
        assert self._ws is not None
        try:
            message = await self._ws.receive(timeout=self._silence)
        except TimeoutError:
            raise Dropped(f"nothing heard for {self._silence:g} s") from None
        if message.type is aiohttp.WSMsgType.TEXT:
            try:
                data = orjson.loads(message.data)
            except orjson.JSONDecodeError:
                data = None
            if not isinstance(data, dict):
                raise Dropped("the service sent something that is not a JSON object")
            return data
        code = self._ws.close_code
        reason = message.extra if message.type is aiohttp.WSMsgType.CLOSE and message.extra else ""
        if code == UNAUTHORIZED:
            raise errors.ApiError(401, f"401 the stream refused the token: {reason or 'unauthorized'}")
        if message.type is aiohttp.WSMsgType.CLOSE:
            raise Dropped(f"closed by the service: {code}{f' {reason}' if reason else ''}")
        raise Dropped(f"connection lost{f': {message.data}' if message.data else ''}")

    async def _reconnect(self, why: str) -> None:
        await self._close()
        self.console.warn(f"stream dropped ({why}); resuming after cursor {self.cursor}")
        deadline = time.monotonic() + GIVE_UP
        pause = BACKOFF[0]
        while True:
            await asyncio.sleep(pause)  # backoff between attempts, not synchronisation
            try:
                await self._connect()
                return
            except Dropped as exc:
                why = str(exc)
            if time.monotonic() + pause > deadline:
                raise errors.ConnectionFailed(
                    f"lost the stream and could not resume within {GIVE_UP:g} s: {why}"
                )
            pause = min(pause * 2, BACKOFF[1])


async def watch(
    api: client.Client,
    console: render.Console,
    *,
    server_id: str | None,
    since: str | None,
    until: list[str],
    as_json: bool,
) -> int:
    """Print transitions as they happen; with `until`, stop when the server reaches one of them."""
    if until and server_id is None:
        raise errors.UsageError("--until needs a server ID")
    async with Stream(api, console, since) as stream:
        if server_id is not None:
            # Read after subscribing: a transition between the two shows as an event, never is lost.
            server = await api.get(api.path("v1", "servers", server_id))
            server_id = str(server["id"])
            if since is None and (matches(server["state"], until) or server["state"] == "deleted"):
                console.warn(f"{server['name']} is already {server['state']}")
                return 0
        while True:
            event = await stream.next()
            if server_id is not None and event["server_id"] != server_id:
                continue
            console.print(render.json_text(event, compact=True) if as_json else render.event(event))
            if server_id is not None and (matches(event["to"], until) or event["to"] == "deleted"):
                return 0


async def wait_settled(
    api: client.Client, console: render.Console, stream: Stream, server: dict[str, Any]
) -> dict[str, Any]:
    """Show `server`'s state changes until it settles (see SETTLED); returns it as it is then."""
    started = time.monotonic()
    path = api.path("v1", "servers", server["id"])

    def show(state: str) -> None:
        console.status(f"{time.monotonic() - started:6.1f} s  {server['name']}  {state}")

    seq, state = 0, server["state"]
    while True:
        page = (await api.get(path + "/events", {"after": str(seq), "limit": str(EVENTS_PAGE)}))["items"]
        for entry in page:
            seq, state = entry["seq"], entry["to"]
            show(state)
        if len(page) < EVENTS_PAGE:
            break
    while not matches(state, SETTLED):
        event = await stream.next()
        if event["server_id"] == server["id"] and event["seq"] > seq:
            seq, state = event["seq"], event["to"]
            show(state)
    console.end_status()
    settled: dict[str, Any] = await api.get(path)
    return settled
