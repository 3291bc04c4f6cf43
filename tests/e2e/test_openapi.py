"""The OpenAPI contract: the document describes every route and only those, a live service keeps it
(schemathesis finds no server error, no undocumented status, header or content type, no response
outside its schema, no invalid request accepted), and bad input of every kind is a 4xx problem that
leaves the database as it was.

schemathesis runs as its own process (`schemathesis run`, its stable interface) against a replica
in this process, so the service's event loop keeps serving while the test awaits it. The run is
bounded and reproducible: deterministic generation (the same cases every run, no seed involved),
at most `MAX_EXAMPLES` fuzzed cases per operation (the coverage phase's boundary cases, missing
headers and unlisted methods come on top), one worker. It takes about 20 s on an idle machine and
a few times that on a loaded one, hence its own timeout.
`schemathesis_hooks.py` holds the one custom check (valid data may be refused only for the rules a
schema cannot state) and keeps generated Idempotency-Keys fresh; see its docstring.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import re
import sys
import types
import urllib.parse
import uuid
from pathlib import Path
from typing import Any, cast

import asyncpg
import pytest
import schemathesis

from tests.e2e import harness
from zlh_actors import config
from zlh_actors.api import app as api_app
from zlh_actors.api import openapi, servers

HOOKS = Path(__file__).with_name("schemathesis_hooks.py")
SCHEMATHESIS = Path(sys.executable).with_name("schemathesis")
MAX_EXAMPLES = 10
RUN_TIMEOUT = 200.0  # seconds: generous, for a loaded machine (the test's own limit is 240)
METHODS = ("get", "put", "post", "delete", "patch")
PROBLEM = "application/problem+json"
# Every table a request could write to; each is fingerprinted whole, so an update shows as well as
# an insert.
WATCHED = (
    "servers",
    "journal",
    "commands",
    "idempotency_keys",
    "vmid_allocations",
    "ip_allocations",
    "port_allocations",
    "agent_tokens",
    "agent_reports",
)


def documented_routes(document: dict[str, Any]) -> set[tuple[str, str]]:
    return {
        (method.upper(), path)
        for path, item in document["paths"].items()
        for method in METHODS
        if method in item
    }


def served_routes() -> set[tuple[str, str]]:
    """(method, path) of every route of the application, with the action route spelled out."""
    deps = {field.name: cast(Any, None) for field in dataclasses.fields(api_app.Deps)}
    deps["replica"] = types.SimpleNamespace(inbox=None)  # make_app reads the inbox off the replica
    application = api_app.make_app(api_app.Deps(**deps))
    routes = set()
    for route in application.router.routes():
        if route.method == "HEAD":
            continue  # aiohttp adds HEAD beside every GET
        path = route.resource.canonical if route.resource is not None else ""
        if "{action}" in path:
            routes |= {(route.method, path.replace("{action}", action)) for action in servers.ACTIONS}
        else:
            routes.add((route.method, path))
    return routes


def test_every_route_is_documented_and_nothing_else() -> None:
    document = openapi.document(config.Settings())
    assert documented_routes(document) == served_routes()


def test_the_document_is_valid_openapi_and_follows_the_settings() -> None:
    document = openapi.document(config.Settings(memory_mb=(1024, 4096), max_cores=3, allow_http_urls=True))
    schemathesis.openapi.from_dict(document).validate()  # raises on a document that is not OpenAPI 3.1
    body = document["components"]["schemas"]["CreateServer"]["properties"]
    resources = body["resources"]["properties"]
    assert (resources["memory_mb"]["minimum"], resources["memory_mb"]["maximum"]) == (1024, 4096)
    assert resources["cores"]["maximum"] == 3
    url = re.compile(body["mods"]["items"]["properties"]["url"]["pattern"])
    assert url.search("http://127.0.0.1:8000/m.jar")
    too_large = document["components"]["responses"]["TooLarge"]["description"]
    assert f"({api_app.MAX_BODY // 2**20} MiB)" in too_large
    strict = openapi.document(config.Settings())["components"]["schemas"]["CreateServer"]["properties"]
    assert not re.search(strict["mods"]["items"]["properties"]["url"]["pattern"], "http://x/m.jar")


@pytest.mark.timeout(240)
async def test_schemathesis_finds_no_contract_violation(control: harness.Control, tmp_path: Path) -> None:
    base = control.base_urls[0]
    async with control.http.get(f"{base}{openapi.PATH}") as response:  # no token: the spec is public
        assert response.status == 200
        served = await response.json()
    assert documented_routes(served) == served_routes()
    settings = tmp_path / "schemathesis.toml"
    settings.write_text(
        "\n".join(
            [
                f'hooks = "{HOOKS}"',
                "workers = 1",
                "[generation]",
                "deterministic = true",
                f"max-examples = {MAX_EXAMPLES}",
                'database = "none"',
                "[checks]",
                "enabled = true",
                # Deleting is soft by design: a deleted server stays readable (state `deleted`).
                "use_after_free.enabled = false",
                "[auth.openapi.bearer]",
                f'bearer = "{control.tokens["admin"]}"',
                # Replaced by the hooks' check for the refusals a schema cannot state.
                "[[operations]]",
                'include-operation-id = ["createServer", "listServers", "stream"]',
                "checks.positive_data_acceptance.enabled = false",
            ]
        )
        + "\n"
    )
    process = await asyncio.create_subprocess_exec(
        str(SCHEMATHESIS),
        "--config-file",
        str(settings),
        "--no-color",
        "run",
        f"{base}{openapi.PATH}",
        cwd=tmp_path,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(RUN_TIMEOUT):
            output, _ = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    report = output.decode(errors="replace")
    assert process.returncode == 0, report
    tested = re.search(r"Tested:\s+(\d+)", report)
    assert tested is not None, report
    # Every operation but GET /openapi.json, which schemathesis leaves out as the document it loaded.
    assert int(tested.group(1)) == len(served_routes()) - 1, report


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    content_type: str
    body: bytes

    def problem(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


async def send(base: str, method: str, path: str, headers: list[bytes], body: bytes = b"") -> Answer:
    """One HTTP/1.1 request written byte for byte: no client library cleans up what is sent."""
    url = urllib.parse.urlsplit(base)
    assert url.hostname is not None
    assert url.port is not None
    reader, writer = await asyncio.open_connection(url.hostname, url.port)
    head = [f"{method} {path} HTTP/1.1", f"Host: {url.netloc}", "Connection: close"]
    lines = [line.encode() for line in head] + [*headers, f"Content-Length: {len(body)}".encode()]
    writer.write(b"\r\n".join(lines) + b"\r\n\r\n" + body)
    try:
        await writer.drain()
        answer = await reader.read()
    finally:
        writer.close()
    head_bytes, _, rest = answer.partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    fields = dict(line.split(": ", 1) for line in header_lines)
    return Answer(int(status_line.split()[1]), fields.get("Content-Type", ""), rest)


async def snapshot(pool: asyncpg.Pool) -> dict[str, str]:
    return {
        table: await pool.fetchval(
            f"SELECT md5(coalesce(string_agg(t::text, '|' ORDER BY t::text), '')) FROM {table} t"
        )
        for table in WATCHED
    }


async def assert_refused(
    control: harness.Control,
    label: str,
    status: int,
    method: str,
    path: str,
    headers: list[bytes],
    body: bytes,
) -> dict[str, Any]:
    """Send a bad request: it must be `status` as problem+json, with every watched table unchanged."""
    before = await snapshot(control.pool)
    answer = await send(control.base_urls[0], method, path, headers, body)
    assert (answer.status, answer.content_type) == (status, PROBLEM), (label, answer)
    problem = answer.problem()
    assert problem["status"] == status, (label, problem)
    assert await snapshot(control.pool) == before, f"{label}: the database changed"
    return problem


VALID: dict[str, Any] = {
    "name": "valid",
    "minecraft_version": "1.21.1",
    "fabric": {"loader": "0.16.14", "installer": "1.0.1"},
}
JSON = b"Content-Type: application/json"


def body(**changes: Any) -> bytes:
    return json.dumps({**VALID, **changes}).encode()


async def test_bad_creates_are_4xx_problems_and_change_nothing(control: harness.Control) -> None:
    alpha = f"Authorization: Bearer {control.tokens['alpha']}".encode()

    def key() -> bytes:
        return f"Idempotency-Key: {uuid.uuid4()}".encode()

    creates: list[tuple[str, int, list[bytes], bytes, set[str] | None]] = [
        # label, status, headers (besides the token), body, the fields the problem must name
        (
            "wrong types",
            400,
            [JSON, key()],
            body(name=5, fabric="0.16.14", resources={"cores": "2", "memory_mb": True}),
            {"name", "fabric", "resources.cores", "resources.memory_mb"},
        ),
        (
            "unknown fields",
            400,
            [JSON, key()],
            body(colour="blue", fabric={**VALID["fabric"], "x": 1}),
            {"colour", "fabric.x"},
        ),
        ("malformed JSON", 400, [JSON, key()], b'{"name": "valid", ', {""}),
        ("invalid UTF-8", 400, [JSON, key()], body()[:-2] + b', "x": "\xff\xfe"}', {""}),
        ("not an object", 400, [JSON, key()], b"[1, 2]", {""}),
        ("nested too deep", 400, [JSON, key()], b"[" * 5000, {""}),
        ("a number out of range", 400, [JSON, key()], body(resources={"memory_mb": 10**400}), {""}),
        ("over the body limit", 413, [JSON, key()], body(name="a" * api_app.MAX_BODY), None),
        ("NUL in a property", 400, [JSON, key()], body(properties={"motd": "a\x00b"}), {"properties.motd"}),
        ("a URL with a space", 400, [JSON, key()], body(mods=[mod("https://x/a b.jar")]), {"mods[0].url"}),
        ("no Idempotency-Key", 400, [JSON], body(), {"Idempotency-Key"}),
        ("an over-long key", 400, [JSON, b"Idempotency-Key: " + b"k" * 256], body(), {"Idempotency-Key"}),
        ("a 4 KiB key", 400, [JSON, b"Idempotency-Key: " + b"k" * 4096], body(), {"Idempotency-Key"}),
        ("a non-ASCII key", 400, [JSON, "Idempotency-Key: clé".encode()], body(), {"Idempotency-Key"}),
        ("an invalid UTF-8 key", 400, [JSON, b"Idempotency-Key: \xff\xfe"], body(), {"Idempotency-Key"}),
        ("a key with a tab", 400, [JSON, b"Idempotency-Key: a\tb"], body(), {"Idempotency-Key"}),
        ("text/plain", 415, [b"Content-Type: text/plain", key()], body(), {"Content-Type"}),
        (
            "form data",
            415,
            [b"Content-Type: application/x-www-form-urlencoded", key()],
            body(),
            {"Content-Type"},
        ),
        ("no Content-Type", 415, [key()], body(), {"Content-Type"}),
        ("no token", 401, [JSON, key()], body(), None),
    ]
    for label, status, headers, payload, fields in creates:
        sent = headers if label == "no token" else [alpha, *headers]
        problem = await assert_refused(control, label, status, "POST", "/v1/servers", sent, payload)
        if fields is not None:
            assert set(problem["fields"]) == fields, (label, problem)
    # Every 4xx above would have created this server had validation let it through.
    answer = await send(control.base_urls[0], "POST", "/v1/servers", [alpha, JSON, key()], body())
    assert answer.status == 202, answer
    assert await control.pool.fetchval("SELECT count(*) FROM servers") == 1


def mod(url: str) -> dict[str, Any]:
    return {"name": "m", "url": url, "sha512": "a" * 128, "size": 1}


async def test_bad_queries_and_agent_reports_are_4xx_problems_and_change_nothing(
    control: harness.Control,
) -> None:
    server = await control.create("reporting")
    await control.wait_state(server["id"], "running")
    agent = control.lab.agents()[server["vmid"]]
    enrollment = json.loads((agent.state_dir / "enrollment.json").read_text())
    server_id = uuid.UUID(server["id"])

    seq = await control.settled_report_seq(server["id"])
    queries = [
        ("a limit that is not a number", "/v1/servers?limit=1e3"),
        ("a limit out of range", "/v1/servers?limit=0"),
        ("an unknown state", "/v1/servers?state=runing"),
        ("NUL in the state", "/v1/servers?state=%00"),
        ("a cursor of invalid UTF-8", "/v1/servers?cursor=%FF%FE"),
        ("a seq past the column's range", f"/v1/servers/{server_id}/events?after=99999999999"),
        ("a negative after", f"/v1/servers/{server_id}/events?after=-1"),
        ("an events limit of 0", f"/v1/servers/{server_id}/events?limit=0"),
        ("an unknown admin scope", "/admin/v1/actors?scope=everything"),
    ]
    admin = f"Authorization: Bearer {control.tokens['admin']}".encode()
    for label, query in queries:
        await assert_refused(control, label, 400, "GET", query, [admin], b"")
    token = f"Authorization: Bearer {enrollment['token']}".encode()
    path = f"/agent/v1/servers/{server['id']}/status"
    # Each report would be recorded (a newer seq of the current generation) if it got through.
    good = {
        "generation": enrollment["generation"],
        "seq": seq + 1,
        "state": "ready",
        "manifest_sha256": "",
        "detail": "",
    }

    def report(**changes: Any) -> bytes:
        return json.dumps({**good, **changes}).encode()

    bad: list[tuple[str, int, list[bytes], bytes]] = [
        ("a seq past bigint", 400, [token, JSON], report(seq=2**63)),
        ("NUL in the detail", 400, [token, JSON], report(detail="a\x00b")),
        ("a generation as text", 400, [token, JSON], report(generation=str(enrollment["generation"]))),
        ("an unknown field", 400, [token, JSON], report(extra=1)),
        ("a missing field", 400, [token, JSON], json.dumps({"seq": seq + 1}).encode()),
        ("malformed JSON", 400, [token, JSON], b'{"seq": '),
        ("invalid UTF-8", 400, [token, JSON], report()[:-1] + b', "x": "\xff"}'),
        ("text/plain", 415, [token, b"Content-Type: text/plain"], report()),
        ("over the body limit", 413, [token, JSON], report(detail="d" * api_app.MAX_BODY)),
        ("no token", 401, [JSON], report()),
        ("another server's path", 403, [token, JSON], report()),
    ]
    for label, status, headers, payload in bad:
        where = f"/agent/v1/servers/{uuid.uuid4()}/status" if label == "another server's path" else path
        await assert_refused(control, label, status, "POST", where, headers, payload)
    answer = await send(control.base_urls[0], "POST", path, [token, JSON], report())
    assert answer.status == 202, answer  # the same report, well formed, is accepted
