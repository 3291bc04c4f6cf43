"""The `zlh` command line against a running service: its commands, its output, its error paths.

Commands run in-process through `main.run` (in a thread: it runs its own event loop, and the
service runs in this one) with the output captured, except one test that runs the console module
as a real subprocess. The stream's resumption is tested through `CuttingProxy`, a TCP proxy in
front of the service that cuts every connection and refuses new ones for a while, so the CLI sees
a dropped connection while transitions happen that it must not miss.

Peers the service never is (a mod host that redirects or announces a length of 0, a port that
answers with an SSH banner, a stream that upgrades and then sends garbage) are small stubs in this
process; the tests that need nothing else do without the lab.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import io
import json
import re
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests import helpers
from tests.e2e import harness
from zlh_actors.api import stream
from zlh_actors.cli import main, render, watch
from zlh_actors.lab.replicas import free_port

ROOT = Path(__file__).resolve().parents[2]
VERSIONS = ("--minecraft", "1.21.1", "--loader", "0.16.14", "--installer", "1.0.1")
SHA512 = "ab" * 64


@dataclasses.dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)

    def pairs(self) -> dict[str, str]:
        """The `key  value` lines of a human-readable record."""
        return dict(re.split(r"\s{2,}", line, maxsplit=1) for line in self.out.splitlines())

    def one_error_line(self) -> str:
        """The error, asserting it is exactly one line and no traceback."""
        assert "Traceback" not in self.err, self.err
        lines = self.err.splitlines()
        assert len(lines) == 1, self.err
        assert lines[0].startswith("zlh: "), self.err
        return lines[0]


class Cli:
    """`zlh` with a fixed environment (HOME points at an empty directory: no user config is read)."""

    def __init__(self, home: Path, **environ: str) -> None:
        self.environ = {"HOME": str(home), **environ}

    def start(self, *argv: str, live: bool = False, **environ: str) -> tuple[Awaitable[int], render.Console]:
        console = render.Console(out=io.StringIO(), err=io.StringIO(), live=live)
        running = asyncio.to_thread(main.run, list(argv), {**self.environ, **environ}, console)
        return running, console

    async def __call__(self, *argv: str, live: bool = False, **environ: str) -> Result:
        running, console = self.start(*argv, live=live, **environ)
        code = await running
        assert isinstance(console.out, io.StringIO)
        assert isinstance(console.err, io.StringIO)
        return Result(code, console.out.getvalue(), console.err.getvalue())


def cli_for(control: harness.Control, home: Path, who: str = "alpha") -> Cli:
    return Cli(home, ZLH_URL=control.base_urls[0], ZLH_TOKEN=control.tokens[who])


def mod_flag(control: harness.Control, name: str, tamper: Any = None) -> str:
    mod = control.lab.add_mod(f"{name}.jar", tamper=tamper)
    return f"{name}={mod.url}#{mod.sha512}"


@contextlib.asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """`app` on a free loopback port, as its base URL."""
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


def mod_host(redirects: dict[str, str]) -> web.Application:
    """A mod host: `/moved/NAME` redirects (302, with a body of its own) as `redirects` says, and
    `/unsized` answers without announcing a size (Content-Length: 0, as some hosts do for HEAD)."""

    async def moved(request: web.Request) -> web.StreamResponse:
        raise web.HTTPFound(redirects[request.match_info["name"]], text="302: see the Location header")

    async def unsized(request: web.Request) -> web.StreamResponse:
        return web.Response(headers={"Content-Length": "0"})

    app = web.Application()
    app.router.add_get("/moved/{name}", moved)
    app.router.add_get("/unsized", unsized)
    return app


@contextlib.asynccontextmanager
async def ssh_port() -> AsyncIterator[str]:
    """A port that answers like sshd: a banner, not HTTP (a mistyped --url)."""

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"SSH-2.0-OpenSSH_9.6\r\n")
        with contextlib.suppress(ConnectionError):
            await writer.drain()
            await reader.read()
        writer.transport.abort()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


async def test_create_prints_its_key_and_the_same_key_gives_the_same_server(
    control: harness.Control, tmp_path: Path
) -> None:
    zlh = cli_for(control, tmp_path)
    lithium_file = control.lab.add_mod("lithium.jar")
    async with serving(mod_host({"lithium.jar": lithium_file.url})) as host:
        # Through a redirect, as GitHub release assets answer: the size is the file's, not the 302's.
        lithium = f"lithium={host}/moved/lithium.jar#{lithium_file.sha512}"
        first = await zlh("servers", "create", "keyed", *VERSIONS, "--mod", lithium)
    assert first.code == 0, first.err
    created = first.pairs()
    uuid.UUID(created["key"])
    server = await control.get(created["id"])
    assert server["name"] == "keyed"
    assert server["mods"] == ["lithium"]
    sent = await control.pool.fetchval(
        "SELECT (spec->'mods'->0->>'size')::bigint FROM servers WHERE id = $1", uuid.UUID(created["id"])
    )
    assert sent == lithium_file.size

    # The same body (the size given, equal to what the HEAD found) with the same key: a replay.
    sized = f"{lithium}:{lithium_file.size}"
    again = await zlh(
        "servers", "create", "keyed", *VERSIONS, "--mod", sized, "--key", created["key"], "--json"
    )
    assert again.code == 0, again.err
    assert again.json()["server"]["id"] == created["id"]
    assert again.json()["replayed"] is True
    assert again.json()["idempotency_key"] == created["key"]

    table = await zlh("servers", "ls")
    header, *rows = table.out.splitlines()
    assert header.split() == ["ID", "NAME", "STATE", "ADDRESS", "MINECRAFT", "CREATED"]
    assert [row.split()[:2] for row in rows] == [[created["id"], "keyed"]]
    listed = await zlh("servers", "ls", "--json")
    assert [item["id"] for item in listed.json()] == [created["id"]]
    shown = await zlh("servers", "show", created["id"], "--json")
    assert shown.json()["fabric"] == {"loader": "0.16.14", "installer": "1.0.1"}
    human = await zlh("servers", "show", created["id"])
    assert human.pairs()["name"] == "keyed"
    assert human.pairs()["mods"] == "lithium"
    beta = await cli_for(control, tmp_path, "beta")("servers", "ls", "--json")
    assert beta.json() == []  # another tenant's token sees none of it


async def test_create_wait_shows_progress_until_running_or_fails_with_the_reason(
    control: harness.Control, tmp_path: Path
) -> None:
    zlh = cli_for(control, tmp_path)
    good, bad = await asyncio.gather(
        zlh("servers", "create", "waited", *VERSIONS, "--wait", "--json", live=True),
        zlh(
            "servers",
            "create",
            "tampered",
            *VERSIONS,
            "--wait",
            "--mod",
            mod_flag(control, "evil", tamper="bytes"),
        ),
    )
    assert good.code == 0, good.err
    made = good.json()
    assert made["server"]["state"] == "running"
    # The id and key come first, as soon as the POST answers: Ctrl-C during the wait loses neither.
    notice, rest = good.err.split("\n", 1)
    server_id, key = made["server"]["id"], made["idempotency_key"]
    assert notice == f"zlh: created waited {server_id} (key {key}); waiting for it to settle"
    # On a terminal: one line rewritten in place, through every step, ending at running.
    shown = [part.split()[-1] for part in rest.split(render.ERASE_LINE) if part.strip()]
    assert shown == await control.journal_states(good.json()["server"]["id"])
    assert shown[-1] == "running"
    assert "provisioning.installing" in shown
    assert good.err.endswith("\n")

    assert bad.code == 1
    progress, error = bad.err.splitlines()[1:-1], bad.err.splitlines()[-1]
    assert bad.err.startswith(f"zlh: created tampered {bad.pairs()['id']} (key {bad.pairs()['key']}); ")
    assert [line.split()[-1] for line in progress][-1] == "failed.provisioning"
    assert error.startswith("zlh: tampered is failed.provisioning: "), error
    assert "evil.jar" in error, error
    assert bad.pairs()["state"] == "failed.provisioning"


async def test_actions_drive_a_server_and_refusals_name_what_is_allowed(
    control: harness.Control, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    zlh, admin = cli_for(control, tmp_path), cli_for(control, tmp_path, "admin")
    key = str(uuid.uuid4())
    # The body `zlh servers create driven` sends, so that the CLI's create below is a replay.
    server_id = (await control.create("driven", key=key, mods=[], properties={}, resources={}))["id"]
    await control.wait_state(server_id, "running")

    # `create --wait` of a server that already ran: the whole journal, read page by page (pages
    # of 2 here), shown once each, and done at once since it is running.
    monkeypatch.setattr(watch, "EVENTS_PAGE", 2)
    replayed = await zlh("servers", "create", "driven", *VERSIONS, "--key", key, "--wait")
    assert replayed.code == 0, replayed.err
    assert replayed.pairs()["id"] == server_id
    notice, *progress = replayed.err.splitlines()
    assert notice == f"zlh: replayed driven {server_id} (key {key}); waiting for it to settle"
    journal = await control.journal_states(server_id)
    assert len(journal) > 2 * watch.EVENTS_PAGE, journal  # more than one page
    assert [line.split()[-1] for line in progress] == journal

    stopped = await zlh("servers", "stop", server_id)
    assert stopped.code == 0, stopped.err
    assert stopped.out.startswith(f"stop accepted for driven {server_id}, now "), stopped.out
    await control.wait_state(server_id, "stopped")
    started = await zlh("servers", "start", server_id, "--json")
    assert started.json()["command"]["kind"] == "start"
    await control.wait_state(server_id, "running")
    restarted = await zlh("servers", "restart", server_id)
    assert restarted.code == 0, restarted.err
    await control.wait_state(server_id, "running")
    assert (await control.journal_states(server_id))[-2:] == ["starting", "running"]

    refused = await zlh("servers", "start", server_id)
    assert refused.code == 1
    line = refused.one_error_line()
    assert line.startswith("zlh: 409 start is not allowed while the server is running (allowed: "), line
    assert "restart" in line
    assert "stop" in line

    actors = await admin("admin", "actors")
    assert actors.code == 0, actors.err
    assert actors.out.splitlines()[0].split()[:4] == ["SERVER", "NAME", "TENANT", "STATE"]
    assert [server_id, "driven", "alpha", "running"] in [row.split()[:4] for row in actors.out.splitlines()]
    shards = await admin("admin", "shards", "--json")
    assert sorted(item["shard"] for item in shards.json()["shards"]) == list(range(8))
    assert [replica["owned_shards"] for replica in shards.json()["replicas"]] == [8]
    drift = await admin("admin", "drift")
    assert drift.code == 0, drift.err
    assert drift.out.startswith(("no reconciliation reports yet", "replica ")), drift.out
    for view in ("actors", "shards", "drift"):
        forbidden = await zlh("admin", view)
        assert forbidden.code == 1
        assert forbidden.one_error_line() == "zlh: 403 this endpoint needs an admin token"

    deleted = await zlh("servers", "delete", server_id)
    assert deleted.code == 0, deleted.err
    await control.wait_state(server_id, "deleted")
    assert (await zlh("servers", "show", server_id)).pairs()["state"] == "deleted"


class CuttingProxy:
    """A TCP proxy to the service that can cut every connection and refuse new ones.

    It records the request target of every `GET /v1/stream` it forwards, so a test can see the
    cursor a reconnection carried.
    """

    REQUEST = re.compile(rb"GET (/v1/stream[^ ]*) HTTP/1\.1\r\n")

    def __init__(self, upstream: str) -> None:
        self.host, port = upstream.removeprefix("http://").split(":")
        self.port = int(port)
        self.refusing = False
        self.stream_requests: list[str] = []
        self.url = ""
        self._links: set[asyncio.StreamWriter] = set()

    async def __aenter__(self) -> CuttingProxy:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cut()
        self._server.close()
        await self._server.wait_closed()

    def cut(self) -> None:
        for writer in list(self._links):
            writer.transport.abort()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.refusing:
            writer.transport.abort()
            return
        up_reader, up_writer = await asyncio.open_connection(self.host, self.port)
        self._links |= {writer, up_writer}
        try:
            await asyncio.gather(
                self._pipe(reader, up_writer, record=True),
                self._pipe(up_reader, writer),
                return_exceptions=True,
            )
        finally:
            self._links -= {writer, up_writer}
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, record: bool = False
    ) -> None:
        seen = b""
        while data := await reader.read(65536):
            if record:
                seen += data
                while found := self.REQUEST.search(seen):
                    self.stream_requests.append(found.group(1).decode())
                    seen = seen[found.end() :]
                seen = seen[-256:]
            writer.write(data)
            await writer.drain()
        writer.transport.abort()


@pytest.fixture
async def proxy(control: harness.Control) -> AsyncIterator[CuttingProxy]:
    async with CuttingProxy(control.base_urls[0]) as running:
        yield running


async def test_watch_prints_transitions_and_resumes_after_the_connection_drops(
    control: harness.Control, proxy: CuttingProxy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # No heartbeat during the test: the cursor a reconnection carries is then the last event's.
    monkeypatch.setattr(stream, "HEARTBEAT", 600.0)
    server_id = (await control.create("watched"))["id"]
    zlh = Cli(tmp_path, ZLH_URL=proxy.url, ZLH_TOKEN=control.tokens["alpha"])
    watching, console = zlh.start("watch", server_id, "--since", "0-0", "--until", "stopped", "--json")
    task = asyncio.ensure_future(watching)
    assert isinstance(console.out, io.StringIO)
    assert isinstance(console.err, io.StringIO)
    out, err = console.out, console.err

    def printed() -> list[dict[str, Any]]:
        return [json.loads(line) for line in out.getvalue().splitlines()]

    async def shows_running() -> bool:
        assert not task.done(), err.getvalue()
        return bool(printed()) and printed()[-1]["to"] == "running"

    await helpers.assert_eventually(shows_running, timeout=60, interval=0.05, message=err.getvalue())
    last_cursor = printed()[-1]["cursor"]
    proxy.refusing = True
    proxy.cut()
    # While the CLI cannot reconnect, the server moves on: these entries must arrive by replay.
    status, body, _ = await control.call("POST", f"/v1/servers/{server_id}/stop")
    assert status == 202, body
    await control.wait_state(server_id, "stopped")
    proxy.refusing = False
    async with asyncio.timeout(60):
        assert await task == 0, err.getvalue()

    events = printed()
    assert [event["to"] for event in events] == await control.journal_states(server_id)
    assert [event["seq"] for event in events] == list(range(1, len(events) + 1))
    assert proxy.stream_requests[0] == "/v1/stream?since=0-0"
    assert proxy.stream_requests[1:] == [f"/v1/stream?since={last_cursor}"], proxy.stream_requests
    assert err.getvalue().count("stream dropped") == 1, err.getvalue()
    assert f"resuming after cursor {last_cursor}" in err.getvalue()


async def test_error_paths_are_one_line_with_distinct_exit_codes(
    control: harness.Control, tmp_path: Path
) -> None:
    zlh = cli_for(control, tmp_path)
    bad_token = await zlh("servers", "ls", "--token", "zlh_not-a-token")
    assert bad_token.code == 1
    assert bad_token.one_error_line() == "zlh: 401 invalid or revoked token"
    watch_refused = await zlh("watch", "--token", "zlh_not-a-token")
    assert watch_refused.code == 1
    assert watch_refused.one_error_line() == "zlh: 401 invalid or revoked token"
    bad_cursor = await zlh("watch", "--since", "yesterday")
    assert bad_cursor.code == 1
    assert bad_cursor.one_error_line() == "zlh: 400 malformed --since cursor"

    nobody = f"http://127.0.0.1:{free_port()}"
    for command in (("servers", "ls"), ("watch",), ("servers", "create", "x", *VERSIONS)):
        unreachable = await zlh(*command, "--url", nobody)
        assert unreachable.code == 3, unreachable
        assert unreachable.one_error_line().startswith(f"zlh: cannot reach {nobody}: Connection refused")
    assert "repeat with --key " in unreachable.err  # the create's key, for a safe retry
    debugged = await zlh("servers", "ls", "--url", nobody, "--debug")
    assert debugged.code == 3
    assert "Traceback" in debugged.err
    assert debugged.err.splitlines()[-1] == f"zlh: cannot reach {nobody}: Connection refused"

    missing = str(uuid.uuid4())
    for lookup in (("servers", "show", missing), ("servers", "delete", missing), ("watch", missing)):
        unknown = await zlh(*lookup)
        assert unknown.code == 1, unknown
        assert unknown.one_error_line() == "zlh: 404 no such server"

    invalid = await zlh("servers", "create", "Not_A_Name", *VERSIONS)
    assert invalid.code == 1
    assert invalid.one_error_line().startswith(
        "zlh: 400 the request has invalid fields: name must be a DNS label"
    )

    no_token = await Cli(tmp_path, ZLH_URL=control.base_urls[0])("servers", "ls")
    assert no_token.code == 2
    assert no_token.one_error_line().startswith("zlh: no token: give --token")
    no_url = await Cli(tmp_path)("servers", "ls", "--token", "t")
    assert no_url.code == 2
    assert no_url.one_error_line().startswith("zlh: no url: give --url")
    for wrong in (("servers", "frobnicate"), ("servers", "create", "x"), ("watch", "--until", "running")):
        usage = await zlh(*wrong)
        assert usage.code == 2, usage
        usage.one_error_line()
    bad_mod = await zlh("servers", "create", "x", *VERSIONS, "--mod", "no-hash=https://example.invalid/a.jar")
    assert bad_mod.code == 2
    assert "NAME=URL#SHA512" in bad_mod.one_error_line()


async def test_odd_peers_and_malformed_urls_are_one_line_with_the_right_exit_code(tmp_path: Path) -> None:
    """No service needed: each of these fails before a request reaches one."""
    zlh = Cli(tmp_path, ZLH_TOKEN="zlh_unused")
    async with ssh_port() as ssh, serving(mod_host({})) as host:
        for command in (("servers", "ls"), ("watch",)):
            not_http = await zlh(*command, "--url", ssh)
            assert not_http.code == 3, not_http
            assert not_http.one_error_line() == f"zlh: {ssh} did not answer as HTTP"
        mod_not_http = await zlh(
            "servers", "create", "x", *VERSIONS, "--url", ssh, "--mod", f"m={ssh}/m#{SHA512}"
        )
        assert mod_not_http.code == 3, mod_not_http
        assert mod_not_http.one_error_line() == f"zlh: {ssh}/m did not answer as HTTP"
        unsized = await zlh(
            "servers", "create", "x", *VERSIONS, "--url", ssh, "--mod", f"m={host}/unsized#{SHA512}"
        )
        assert unsized.code == 2, unsized
        assert unsized.one_error_line() == (
            f"zlh: {host}/unsized does not announce its size; give it as m=URL#SHA512:SIZE"
        )

    # The resolver's words, not os.strerror of its code ("Unknown error -2").
    with pytest.raises(socket.gaierror) as resolving:
        socket.getaddrinfo("no-such-host.invalid", 80)
    unknown_host = await zlh("servers", "ls", "--url", "http://no-such-host.invalid")
    assert unknown_host.code == 3
    assert unknown_host.one_error_line() == (
        f"zlh: cannot reach http://no-such-host.invalid: {resolving.value.strerror}"
    )

    for url, why in (
        ("http://127.0.0.1:99999", "has an invalid port (1-65535)"),
        ("http://127.0.0.1:0", "has an invalid port (1-65535)"),
        ("http://127.0.0.1:80a", "has an invalid port (1-65535)"),
        (
            "http://zlh.example:8080/?x=1",
            "has a query or fragment: give the service's base URL, e.g. http://HOST:PORT",
        ),
        (
            "http://zlh.example:8080#top",
            "has a query or fragment: give the service's base URL, e.g. http://HOST:PORT",
        ),
        ("http://zlh example:8080", "contains white space"),
        ("ftp://zlh.example", "is not an http:// or https:// URL"),
    ):
        bad_url = await zlh("servers", "ls", "--url", url)
        assert bad_url.code == 2, bad_url
        assert bad_url.one_error_line() == f"zlh: --url: {url!r} {why}"
    blank = await zlh("servers", "ls", "--url", "http://127.0.0.1:1", ZLH_TOKEN="  ")
    assert blank.code == 2
    assert blank.one_error_line() == "zlh: ZLH_TOKEN: the token is blank"
    for mod in (f"x=ftp://h/x#{SHA512}", f"x=http://h:99999/x#{SHA512}"):
        bad_mod = await zlh("servers", "create", "x", *VERSIONS, "--url", "http://127.0.0.1:1", "--mod", mod)
        assert bad_mod.code == 2, bad_mod
        assert (
            bad_mod.one_error_line()
            == f"zlh: --mod {mod!r}: the URL must be http:// or https://, with a valid port"
        )


async def test_a_reconnection_that_gets_no_hello_is_closed_before_the_next(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A stream that upgrades and then says nothing sensible: every such connection is closed by the
    CLI (a close frame, not a socket abandoned until the command ends), and it gives up with exit 3."""
    monkeypatch.setattr(watch, "GIVE_UP", 1.0)
    reconnections = 0
    heard: list[aiohttp.WSMsgType] = []  # what each reconnection heard from the CLI

    async def stream_handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        if request.query.get("since") is None:
            await ws.send_json({"type": "hello", "cursor": "7-7", "heartbeat": 15})
            await ws.close(code=aiohttp.WSCloseCode.GOING_AWAY, message=b"server shutting down")
            return ws
        nonlocal reconnections
        reconnections += 1
        await ws.send_str("SSH-2.0-not-json")
        heard.append((await ws.receive(timeout=30)).type)
        return ws

    app = web.Application()
    app.router.add_get("/v1/stream", stream_handler)
    async with serving(app) as url:
        result = await Cli(tmp_path, ZLH_URL=url, ZLH_TOKEN="zlh_unused")("watch")
    assert result.code == 3, result
    assert (
        result.err.splitlines()[0]
        == "zlh: stream dropped (closed by the service: 1001 server shutting down); "
        "resuming after cursor 7-7"
    )
    assert result.err.splitlines()[-1] == (
        "zlh: lost the stream and could not resume within 1 s: "
        "the service sent something that is not a JSON object"
    )
    assert reconnections > 0

    async def all_heard() -> bool:
        return len(heard) == reconnections

    await helpers.assert_eventually(all_heard, timeout=10, message=f"{reconnections} reconnections, {heard}")
    assert set(heard) == {aiohttp.WSMsgType.CLOSE}, heard


async def test_configuration_comes_from_flags_then_environment_then_file(
    control: harness.Control, tmp_path: Path
) -> None:
    good, url = control.tokens["alpha"], control.base_urls[0]
    nobody = f"http://127.0.0.1:{free_port()}"
    default = tmp_path / ".config" / "zlh" / "config.toml"
    default.parent.mkdir(parents=True)
    default.write_text(f'url = "{url}"\ntoken = "{good}"\n')
    zlh = Cli(tmp_path)
    assert (await zlh("servers", "ls", "--json")).json() == []  # the default file alone suffices

    assert (await zlh("servers", "ls", ZLH_TOKEN="zlh_wrong")).code == 1  # the environment beats the file
    assert (await zlh("servers", "ls", "--token", good, ZLH_TOKEN="zlh_wrong")).code == 0  # flags beat both
    assert (await zlh("servers", "ls", ZLH_URL=nobody)).code == 3
    assert (await zlh("servers", "ls", "--url", url, ZLH_URL=nobody)).code == 0

    other = tmp_path / "other.toml"
    other.write_text(f'url = "{nobody}"\ntoken = "{good}"\n')
    assert (await zlh("servers", "ls", ZLH_CONFIG=str(other))).code == 3  # ZLH_CONFIG replaces the default
    assert (await zlh("servers", "ls", "--config", str(default), ZLH_CONFIG=str(other))).code == 0

    other.write_text(f'url = "{url}"\ntokne = "{good}"\n')
    misspelled = await zlh("servers", "ls", "--config", str(other))
    assert misspelled.code == 2
    assert "unknown key tokne" in misspelled.one_error_line()
    absent = await zlh("servers", "ls", "--config", str(tmp_path / "absent.toml"))
    assert absent.code == 2
    assert "does not exist" in absent.one_error_line()
    other.write_text("url = \n")
    broken = await zlh("servers", "ls", "--config", str(other))
    assert broken.code == 2
    assert broken.one_error_line().startswith(f"zlh: {other} is not valid TOML: ")
    # A named file is read even when it is not needed; the default file only when it is.
    named = await zlh("servers", "ls", "--url", url, "--token", good, "--config", str(other))
    assert named.code == 2
    assert named.one_error_line().startswith(f"zlh: {other} is not valid TOML: ")
    default.write_text("url = \n")
    assert (await zlh("servers", "ls", "--json", "--url", url, "--token", good)).json() == []
    assert (await zlh("servers", "ls", "--json", ZLH_URL=url, ZLH_TOKEN=good)).json() == []
    needed = await zlh("servers", "ls", "--url", url)
    assert needed.code == 2
    assert needed.one_error_line().startswith(f"zlh: {default} is not valid TOML: ")


async def test_the_console_module_runs_as_a_process(control: harness.Control, tmp_path: Path) -> None:
    """`python -m zlh_actors.cli` (what the `zlh` script runs) for real: its exit statuses and output."""

    async def zlh(*argv: str, **environ: str) -> tuple[int | None, str, str]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "zlh_actors.cli",
            *argv,
            env={"HOME": str(tmp_path), **environ},
            cwd=ROOT,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        return process.returncode, out.decode(), err.decode()

    code, out, err = await zlh(
        "admin", "shards", "--json", ZLH_URL=control.base_urls[0], ZLH_TOKEN=control.tokens["admin"]
    )
    assert code == 0, err
    assert len(json.loads(out)["shards"]) == 8
    nobody = f"http://127.0.0.1:{free_port()}"
    assert await zlh("servers", "ls", "--url", nobody, "--token", "t") == (
        3,
        "",
        f"zlh: cannot reach {nobody}: Connection refused\n",
    )
