"""GET /v1/stream: live journal events over a WebSocket, resumable by cursor, per tenant, bounded.

Most tests write transitions straight into the database with the stores (servers parked at rest
states, alternating stopped -> lost -> stopped, so no actor touches them) and compare what a client
received with the journal itself, in the stream's (txid, position) order. Nothing sleeps to
synchronize: a test reads until a *sentinel* entry it wrote last arrives, and because the stream is
ordered, anything missing, repeated or foreign before the sentinel would have shown up by then.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import re
import socket
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohappyeyeballs
import aiohttp
import asyncpg
import pytest

from statemachines import lifecycle
from storage import database, journal, servers
from tests import helpers
from tests.e2e import harness
from zlh_actors import errors, service
from zlh_actors.api import stream
from zlh_actors.lab import world

Event = dict[str, Any]
Ws = aiohttp.ClientWebSocketResponse


async def make_servers(pool: asyncpg.Pool, tenant: str, count: int) -> list[uuid.UUID]:
    """Servers at rest (stopped, desired stopped): no actor or sweep acts on them."""
    made: list[uuid.UUID] = []
    async with database.transaction(pool) as conn:
        for _ in range(count):
            server = await servers.insert(
                conn,
                tenant=tenant,
                name=f"s-{uuid.uuid4().hex[:12]}",
                spec={},
                state="stopped",
                event="imported",
                desired_state="stopped",
            )
            made.append(server.id)
    return made


async def flip(conn: database.Conn, server_id: uuid.UUID) -> journal.Entry:
    """One valid chart transition between rest states: stopped -lost-> lost -repaired-> stopped."""
    server = await servers.get(conn, server_id)
    event = "lost" if server.state == "stopped" else "repaired"
    await servers.transition(conn, server, lifecycle.apply(server.state, event), event)
    return await journal.newest(conn, server_id)


async def flip_committed(pool: asyncpg.Pool, server_id: uuid.UUID) -> journal.Entry:
    while True:
        try:
            async with database.transaction(pool) as conn:
                return await flip(conn, server_id)
        except errors.StaleWrite:
            continue  # another writer moved the server first: read it again


def key(event: Event) -> tuple[str, int]:
    return (event["server_id"], event["seq"])


async def journal_after(
    pool: asyncpg.Pool, cursor: str, server_ids: list[uuid.UUID] | None = None
) -> list[Any]:
    """(server_id, seq, cursor) of every entry after `cursor`, in the stream's order."""
    after = journal.Cursor.parse(cursor)
    rows = await pool.fetch(
        "SELECT server_id, seq, txid, position FROM journal WHERE (txid, position) > ($1::xid8, $2::bigint)"
        " AND ($3::uuid[] IS NULL OR server_id = ANY ($3::uuid[])) ORDER BY txid, position",
        after.txid,
        after.position,
        server_ids,
    )
    return [(str(r["server_id"]), r["seq"], f"{r['txid']}-{r['position']}") for r in rows]


def received(events: list[Event]) -> list[Any]:
    return [(e["server_id"], e["seq"], e["cursor"]) for e in events]


class Client:
    """A stream client that reads messages with deadlines."""

    def __init__(self, ws: Ws) -> None:
        self.ws = ws

    async def message(self, timeout: float = 30.0) -> Event:
        got = await self.ws.receive(timeout=timeout)
        assert got.type is aiohttp.WSMsgType.TEXT, (got.type, got.data, got.extra)
        data: Event = json.loads(got.data)
        return data

    async def hello(self) -> str:
        first = await self.message()
        assert first["type"] == "hello", first
        cursor: str = first["cursor"]
        return cursor

    async def event(self) -> Event:
        """The next event, heartbeats skipped."""
        while (message := await self.message())["type"] != "server.state":
            pass
        return message

    async def events_until(self, last: Callable[[Event], bool], timeout: float = 30.0) -> list[Event]:
        """Events (heartbeats skipped) up to and including the first for which `last` is true."""
        events: list[Event] = []
        async with asyncio.timeout(timeout):
            while not events or not last(events[-1]):
                events.append(await self.event())
        return events

    async def collect(self, into: list[Event]) -> None:
        """Append every event to `into`, until cancelled."""
        while True:
            into.append(await self.event())

    async def closed(self, timeout: float = 30.0) -> tuple[int | None, str, int]:
        """Read to the close frame: (close code, reason, events read before it)."""
        events = 0
        async with asyncio.timeout(timeout):
            while True:
                got = await self.ws.receive()
                if got.type is aiohttp.WSMsgType.TEXT:
                    events += json.loads(got.data)["type"] == "server.state"
                    continue
                assert got.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED), got
                return self.ws.close_code, str(got.extra or ""), events


@contextlib.asynccontextmanager
async def connect(
    control: harness.Control,
    who: str | None = "alpha",
    *,
    since: str | None = None,
    base: str | None = None,
    first_message: str | None = None,
    session: aiohttp.ClientSession | None = None,
) -> AsyncIterator[Client]:
    """A client of /v1/stream: bearer header for `who`, or (who=None) an auth message first."""
    headers = {} if who is None else {"Authorization": f"Bearer {control.tokens[who]}"}
    params = {} if since is None else {"since": since}
    url = (base or control.base_urls[0]) + stream.PATH
    async with (session or control.http).ws_connect(url, headers=headers, params=params) as ws:
        if first_message is not None:
            await ws.send_str(first_message)
        yield Client(ws)


async def settled(pool: asyncpg.Pool, running: service.Service) -> None:
    """Wait until the replica's LISTEN connections (inbox and stream) are up: stopping a replica that
    is still connecting them is another test's subject, and leaks a connection (see the report)."""
    names = [f"zlh-listen:{running.replica.id}", f"{stream.LISTEN_APP}{running.replica.id}"]

    async def listening() -> bool:
        found = await pool.fetchval(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = ANY ($1::text[])", names
        )
        return bool(found == len(names))

    await helpers.assert_eventually(listening, timeout=30, message=f"{names} not connected")


def is_entry(entry: journal.Entry) -> Callable[[Event], bool]:
    return lambda event: key(event) == (str(entry.server_id), entry.seq)


async def test_a_client_sees_a_server_come_up_as_its_journal_says(control: harness.Control) -> None:
    async with connect(control) as client:
        await client.hello()
        server = await control.create("streamed")
        events = await client.events_until(lambda e: e["server_id"] == server["id"] and e["to"] == "running")
    status, body, _ = await control.call("GET", f"/v1/servers/{server['id']}/events")
    assert status == 200
    assert [e["to"] for e in events][:1] == ["requested"]
    assert [{k: v for k, v in e.items() if k not in ("type", "cursor")} for e in events] == body["items"]
    cursors = [journal.Cursor.parse(e["cursor"]) for e in events]
    assert cursors == sorted(set(cursors))


async def test_an_entry_that_commits_late_is_neither_skipped_nor_out_of_order(
    control: harness.Control,
) -> None:
    x, y = await make_servers(control.pool, "alpha", 2)
    async with connect(control, "admin") as client:
        start = await client.hello()
        async with control.pool.acquire() as old:
            transaction = old.transaction()
            await transaction.start()
            early = await flip(old, y)  # the older transaction takes its id and an early position
            later = await flip_committed(control.pool, x)  # a younger one commits a later position
            async with control.pool.acquire() as conn:
                final, held = await journal.committed_after(conn, journal.Cursor.parse(start), limit=100)
            # While the older transaction runs, the younger entry is committed but not final.
            assert held
            assert later.cursor not in [p.entry.cursor for p in final]
            last = await flip(old, x)  # appended after `later` by the older transaction
            await transaction.commit()
        events = await client.events_until(is_entry(last))
    assert early.position < later.position < last.position
    assert last.txid == later.txid > early.txid  # raised to its predecessor's, so x stays in seq order
    mine = [key(e) for e in events if e["server_id"] in (str(x), str(y)) and e["seq"] > 1]
    assert mine == [(str(y), 2), (str(x), 2), (str(x), 3)]
    assert received(events) == await journal_after(control.pool, start)


async def test_a_client_that_reconnects_with_its_cursor_misses_nothing_and_repeats_nothing(
    control: harness.Control,
) -> None:
    owned = [await make_servers(control.pool, tenant, 2) for tenant in ("alpha", "beta", "alpha", "beta")]

    async def writer(mine: list[uuid.UUID], transitions: int) -> None:
        async with control.pool.acquire() as conn:
            while transitions > 0:
                async with conn.transaction():
                    for _ in range(min(transitions, random.randint(1, 3))):
                        await flip(conn, random.choice(mine))
                        transitions -= 1
                    # Hold the transaction open a moment so commits interleave across writers and
                    # positions become visible out of order (load shaping, not synchronization).
                    await asyncio.sleep(random.random() / 500)

    def burst() -> asyncio.Future[list[None]]:
        return asyncio.gather(*(writer(mine, 125) for mine in owned))

    async with connect(control, "admin") as client:
        start = await client.hello()
        first_half = burst()
        before = [await client.event() for _ in range(150)]
    await first_half  # the rest of it is written while the client is away
    second_half = burst()
    async with connect(control, "admin", since=before[-1]["cursor"]) as client:
        after: list[Event] = []
        reading = asyncio.create_task(client.collect(after))
        await second_half
        sentinel = await flip_committed(control.pool, owned[0][0])

        async def arrived() -> bool:
            assert not reading.done(), reading
            return any(is_entry(sentinel)(event) for event in after)

        await helpers.assert_eventually(arrived, timeout=30, message="the sentinel never arrived")
        reading.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reading
    everything = before + after
    expected = await journal_after(control.pool, start)
    assert len(expected) >= 1001
    assert received(everything) == expected
    by_server: dict[str, list[int]] = {}
    for event in everything:
        by_server.setdefault(event["server_id"], []).append(event["seq"])
    for seqs in by_server.values():
        assert seqs == list(range(seqs[0], seqs[0] + len(seqs)))


async def test_entries_committed_while_the_hub_was_not_listening_still_arrive(
    control: harness.Control,
) -> None:
    [server_id] = await make_servers(control.pool, "alpha", 1)
    hub_backend = (
        "SELECT pid, backend_start FROM pg_stat_activity"
        " WHERE application_name LIKE 'zlh-stream:%' AND datname = current_database()"
    )
    async with connect(control, "alpha") as client:
        start = await client.hello()
        [(pid, _)] = await control.pool.fetch(hub_backend)
        assert await control.pool.fetchval("SELECT pg_terminate_backend($1)", pid)
        # Their notifications go nowhere: the hub's connection is gone and it reconnects no sooner
        # than its first back-off (0.2 s), which the assertion below checks.
        written = [await flip_committed(control.pool, server_id) for _ in range(10)]
        written_by = await control.pool.fetchval("SELECT clock_timestamp()")
        events = await client.events_until(is_entry(written[-1]))
    # The terminated backend can linger in pg_stat_activity for a moment after its client is gone.
    rows: list[asyncpg.Record] = []

    async def only_the_new_one() -> bool:
        rows[:] = await control.pool.fetch(hub_backend)
        return len(rows) == 1 and rows[0]["pid"] != pid

    await helpers.assert_eventually(only_the_new_one, timeout=10, message=f"hub sessions: {rows}")
    [(_, reconnected_at)] = rows
    assert reconnected_at > written_by
    assert received(events) == await journal_after(control.pool, start, [server_id])


async def test_tenants_never_see_each_others_events_and_the_admin_sees_both(
    control: harness.Control,
) -> None:
    alpha = await make_servers(control.pool, "alpha", 2)
    beta = await make_servers(control.pool, "beta", 2)
    async with (
        connect(control, "alpha") as alpha_client,
        connect(control, "beta") as beta_client,
        connect(control, "admin") as admin_client,
    ):
        starts = {"alpha": await alpha_client.hello(), "beta": await beta_client.hello()}
        starts["admin"] = await admin_client.hello()
        for n in range(20):
            await flip_committed(control.pool, (alpha if n % 2 else beta)[n % 4 // 2])
        beta_last = await flip_committed(control.pool, beta[0])
        alpha_last = await flip_committed(control.pool, alpha[0])
        live = {
            "alpha": await alpha_client.events_until(is_entry(alpha_last)),
            "beta": await beta_client.events_until(is_entry(beta_last)),
            "admin": await admin_client.events_until(is_entry(alpha_last)),
        }
    # Replay, the browser's way: no header, the token in the first message.
    replayed = {}
    for who, last in (("alpha", alpha_last), ("beta", beta_last), ("admin", alpha_last)):
        auth = json.dumps({"type": "auth", "token": control.tokens[who]})
        async with connect(control, None, since=starts[who], first_message=auth) as client:
            assert await client.hello() == starts[who]
            replayed[who] = await client.events_until(is_entry(last))
    visible = {"alpha": alpha, "beta": beta, "admin": None}
    for who, server_ids in visible.items():
        expected = await journal_after(control.pool, starts[who], server_ids)
        expected = expected[: [e[:2] for e in expected].index(key(live[who][-1])) + 1]
        assert received(live[who]) == expected, who
        assert received(replayed[who]) == expected, who
    assert {e["server_id"] for e in live["alpha"]} <= {str(s) for s in alpha}
    assert {e["server_id"] for e in live["beta"]} <= {str(s) for s in beta}
    assert {e["server_id"] for e in live["admin"]} == {str(s) for s in alpha + beta}


async def test_bad_tokens_missing_auth_and_bad_cursors_are_refused(
    control: harness.Control, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = control.base_urls[0] + stream.PATH
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with control.http.ws_connect(url, headers={"Authorization": "Bearer nope"}):
            pass
    assert refused.value.status == 401
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        async with control.http.ws_connect(url, params={"since": "yesterday"}):
            pass
    assert refused.value.status == 400
    async with control.http.get(url, headers={"Authorization": f"Bearer {control.tokens['alpha']}"}) as plain:
        assert plain.status == 400  # not a WebSocket upgrade
    bad = json.dumps({"type": "auth", "token": "zlh_not-a-token"})
    async with connect(control, None, first_message=bad) as client:
        assert (await client.closed())[:2] == (stream.UNAUTHORIZED, "invalid or revoked token")
    async with connect(control, None, first_message="hello?") as client:
        code, reason, _ = await client.closed()
        assert (code, '"type": "auth"' in reason) == (stream.UNAUTHORIZED, True)
    monkeypatch.setattr(stream, "AUTH_TIMEOUT", 0.3)
    async with connect(control, None) as client:
        assert (await client.closed())[:2] == (stream.UNAUTHORIZED, "no auth message within 0.3 s")


async def test_events_written_through_one_replica_reach_clients_of_another(
    control: harness.Control, lab: world.Lab, db_url: str
) -> None:
    other = harness.settings_for(lab, db_url)
    async with (
        service.running(other, db_url) as replica_b,
        connect(control, "alpha", base=f"http://127.0.0.1:{other.port}") as client,
    ):
        await settled(control.pool, replica_b)
        await client.hello()
        created = await control.create("fanned-out", replica=0)  # replica A's create handler journals it
        events = await client.events_until(lambda e: e["server_id"] == created["id"])
    assert [(e["seq"], e["to"]) for e in events if e["server_id"] == created["id"]] == [(1, "requested")]


async def test_an_actors_entries_reach_clients_of_its_replica_and_of_another_without_the_idle_read(
    control: harness.Control, lab: world.Lab, db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The owner announces its actor's entries (the trigger stays quiet for them): its own hub is woken
    # directly, the other replica's by the announcer's NOTIFY. With the idle read pushed out of the
    # test, a client of either replica sees the server reach `running` only through one of the two.
    monkeypatch.setattr(stream, "PROBE_INTERVAL", 600.0)
    other = harness.settings_for(lab, db_url)
    async with (
        service.running(other, db_url) as replica_b,
        connect(control, "alpha") as on_a,
        connect(control, "alpha", base=f"http://127.0.0.1:{other.port}") as on_b,
    ):
        await settled(control.pool, replica_b)
        await on_a.hello()
        await on_b.hello()
        created = await control.create("announced", replica=0)

        def up(event: Event) -> bool:
            return bool(event["server_id"] == created["id"] and event["to"] == "running")

        seen = [await client.events_until(up) for client in (on_a, on_b)]
    status, body, _ = await control.call("GET", f"/v1/servers/{created['id']}/events")
    assert status == 200
    journaled = [(e["seq"], e["to"]) for e in body["items"]]
    assert journaled[-1][1] == "running"
    assert len(journaled) > 2
    for events in seen:
        assert [(e["seq"], e["to"]) for e in events if e["server_id"] == created["id"]] == journaled


async def test_a_consumer_that_does_not_read_is_closed_as_too_slow(
    control: harness.Control, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "HEARTBEAT", 120.0)  # a client that does not read does not pong either
    # Small bounds, so the backlog builds from hundreds of entries rather than thousands.
    monkeypatch.setattr(stream, "MAX_PENDING", 50)
    monkeypatch.setattr(stream, "SEND_BUFFER", 8 * 1024)
    [server_id] = await make_servers(control.pool, "alpha", 1)

    async def closed_as_slow() -> bool:
        async with control.http.get(control.base_urls[0] + "/metrics") as response:
            text = await response.text()
        return re.search(r'^zlh_stream_closed_total\{reason="too_slow"\} 1$', text, re.MULTILINE) is not None

    def small_receive_buffer(addr_info: aiohappyeyeballs.AddrInfoType) -> socket.socket:
        sock = socket.socket(*addr_info[:3])
        # Fixed before connecting, which turns autotuning off: a client that stops reading pushes
        # back on the server after kilobytes rather than the megabytes an autotuned buffer takes.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        return sock

    written = 0
    connector = aiohttp.TCPConnector(socket_factory=small_receive_buffer)
    async with (
        aiohttp.ClientSession(connector=connector) as session,
        connect(control, session=session) as client,
    ):
        await client.hello()
        # The client stops reading; the server's queue for it must not grow past its bound.
        while not await closed_as_slow():
            async with database.transaction(control.pool) as conn:
                server = await servers.get(conn, server_id)
                for _ in range(250):
                    event = "lost" if server.state == "stopped" else "repaired"
                    server = await servers.transition(
                        conn, server, lifecycle.apply(server.state, event), event
                    )
            written += 250
            assert written <= 20_000, "the server kept buffering for a client that does not read"
        code, reason, delivered = await client.closed()
    assert (code, reason) == (stream.TOO_SLOW, "consumer too slow")
    assert delivered < written


async def test_shutdown_closes_clients_with_going_away(
    control: harness.Control, lab: world.Lab, db_url: str
) -> None:
    other = harness.settings_for(lab, db_url)
    async with contextlib.AsyncExitStack() as replica:
        await settled(control.pool, await replica.enter_async_context(service.running(other, db_url)))
        async with connect(control, "alpha", base=f"http://127.0.0.1:{other.port}") as client:
            await client.hello()
            closing = asyncio.create_task(client.closed())
            await replica.aclose()
            code, reason, _ = await closing
    assert (code, reason) == (aiohttp.WSCloseCode.GOING_AWAY, "server shutting down")


async def test_idle_clients_get_heartbeats_with_a_cursor_to_resume_from(
    control: harness.Control, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(stream, "HEARTBEAT", 0.3)
    async with connect(control, "beta") as client:
        start = await client.hello()
        [server_id] = await make_servers(control.pool, "alpha", 1)  # someone else's: not for beta
        await flip_committed(control.pool, server_id)
        beat = await client.message()
        assert beat["type"] == "heartbeat"
        assert journal.Cursor.parse(beat["cursor"]) >= journal.Cursor.parse(start)
