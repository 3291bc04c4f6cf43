"""The API's OpenAPI 3.1 description, served at `GET /openapi.json`.

The document is written by hand, here (paths, parameters, responses) and in `openapi_schemas`
(bodies), but every limit in it is read from the code that enforces it: the create body's
patterns and bounds from `servers.requests` (the memory, cores, disk and URL scheme limits from the
running service's settings, so the document describes *this* deployment), the idempotency key and
query bounds from `api.servers`, lifecycle states from the chart, agent report states and bounds
from the agent protocol and its handler. What cannot be imported (which statuses a handler
answers) is kept honest by tests: `tests/e2e/test_openapi.py` checks that every route of the
application is described and nothing else, and runs schemathesis against a live service, which
fails on any status, header, content type or body the document does not allow, and on any request
the document calls invalid that the service accepts.

Errors are RFC 9457 problem documents (`problems.py`); the schema of one lists the structured
details a client may see, and nothing else.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from zlh_actors import config
from zlh_actors.agent import wire
from zlh_actors.api import admin, agent_callbacks, bodies, dashboard, keys, servers
from zlh_actors.api import openapi_schemas as schemas

PATH = "/openapi.json"
PROBLEM = "application/problem+json"


async def serve(request: web.Request) -> web.Response:
    return bodies.json_response(document(request.app[keys.SETTINGS]))


def document(settings: config.Settings) -> dict[str, Any]:
    """The whole description, for a service running with `settings`."""
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "zlh-actors",
            "version": "1",
            "description": "Lifecycle control plane for ZeroLagHub's Minecraft (Fabric) servers. "
            "Errors are RFC 9457 application/problem+json; see docs/api.md.",
        },
        "security": [{"bearer": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "description": "an API token (user or admin)"},
                "agentToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "the per-server, per-generation token an agent got at enrollment",
                },
            },
            "schemas": schemas.components(settings),
            "responses": _responses(),
            "parameters": {
                "server_id": {
                    "name": "server_id",
                    "in": "path",
                    "required": True,
                    "schema": schemas.UUID,
                },
            },
        },
    }


# --- helpers -------------------------------------------------------------------------------------


def _json(description: str, schema: schemas.Schema, headers: dict[str, Any] | None = None) -> schemas.Schema:
    answer: schemas.Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def _errors(*names: str) -> dict[str, schemas.Schema]:
    """Shared error responses by status: "400" -> the `BadRequest` component, and so on."""
    return {status: {"$ref": f"#/components/responses/{_ERRORS[status][0]}"} for status in names}


_ERRORS: dict[str, tuple[str, str]] = {
    "400": ("BadRequest", "a malformed request: every invalid field is named in `fields`"),
    "401": ("Unauthorized", "no bearer token, or an invalid or revoked one"),
    "403": ("Forbidden", "the token may not do this (an admin endpoint, another server's agent token)"),
    "404": ("NotFound", "no such server or command, or one of another tenant"),
    "409": ("Conflict", "refused in the current state: `state` and `allowed` name it and what it accepts"),
    "413": ("TooLarge", "the body is larger than the service accepts (1 MiB)"),
    "415": ("UnsupportedMediaType", "a JSON body sent with a Content-Type other than application/json"),
    "422": ("KeyReused", "this Idempotency-Key was used with a different request"),
    "503": ("Unavailable", "temporarily unavailable (database, capacity, a full mailbox): retry later"),
}


def _responses() -> dict[str, schemas.Schema]:
    problem = {PROBLEM: {"schema": schemas.ref("Problem")}}
    return {name: {"description": text, "content": problem} for name, text in _ERRORS.values()}


def _operation(
    operation_id: str, summary: str, responses: dict[str, schemas.Schema], **extra: Any
) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, "responses": responses, **extra}


def _integer_query(name: str, low: int, high: int, default: int | None, description: str) -> schemas.Schema:
    schema: schemas.Schema = {"type": "integer", "minimum": low, "maximum": high}
    if default is not None:
        schema["default"] = default
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}


_SERVER_ID = {"$ref": "#/components/parameters/server_id"}
_SCOPE = {
    "name": "scope",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": [admin.LOCAL]},
    "description": "`local`: this replica only (how replicas ask each other); absent: every replica",
}
_SERVER_HEADERS = {
    "ETag": {"schema": {"type": "string"}, "required": True, "description": "the row version, quoted"},
    "Location": {"schema": {"type": "string"}, "required": True},
}

# --- paths ---------------------------------------------------------------------------------------


def _paths() -> dict[str, Any]:
    public: list[dict[str, Any]] = []  # no security
    paths: dict[str, Any] = {
        "/healthz": {
            "get": _operation(
                "healthz",
                "liveness: the process serves HTTP",
                {"200": _json("alive", schemas.closed({"status": {"const": "ok"}}))},
                security=public,
            )
        },
        "/readyz": {
            "get": _operation(
                "readyz",
                "readiness: the database is reachable and carries every migration",
                {
                    "200": _json(
                        "ready",
                        schemas.closed(
                            {
                                "status": {"const": "ready"},
                                "database": {"const": "ok"},
                                "migrations": {"const": "current"},
                            }
                        ),
                    ),
                    "503": {"$ref": "#/components/responses/Unavailable"},
                },
                security=public,
            )
        },
        "/metrics": {
            "get": _operation(
                "metrics",
                "Prometheus text exposition",
                {
                    "200": {
                        "description": "metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    }
                },
                security=public,
            )
        },
        PATH: {
            "get": _operation(
                "openapi",
                "this document",
                {"200": _json("the OpenAPI 3.1 description", {"type": "object"})},
                security=public,
            )
        },
        "/v1/servers": {"post": _create(), "get": _list()},
        "/v1/servers/{server_id}": {
            "parameters": [_SERVER_ID],
            "get": _operation(
                "getServer",
                "one server",
                {
                    "200": _json("the server", schemas.ref("Server"), _SERVER_HEADERS),
                    **_errors("401", "404", "503"),
                },
            ),
            "delete": _operation(
                "deleteServer",
                "delete: accepted in every state; deleting a deleted server answers it again",
                {
                    "202": _json(
                        "accepted (no command when already deleted)",
                        schemas.ref("ServerDeleting"),
                        _SERVER_HEADERS,
                    ),
                    **_errors("401", "404", "409", "503"),
                },
            ),
        },
        "/v1/servers/{server_id}/events": {
            "parameters": [_SERVER_ID],
            "get": _operation(
                "serverEvents",
                "the server's transition journal, oldest first",
                {
                    "200": _json("journal entries", schemas.ref("EventList")),
                    **_errors("400", "401", "404", "503"),
                },
                parameters=[
                    _integer_query("after", 0, servers.MAX_SEQ, 0, "entries with a greater seq"),
                    _integer_query("limit", 1, servers.MAX_EVENTS, servers.MAX_EVENTS, "entries at most"),
                ],
            ),
        },
        "/v1/servers/{server_id}/commands/{command_id}": {
            "parameters": [
                _SERVER_ID,
                {"name": "command_id", "in": "path", "required": True, "schema": schemas.UUID},
            ],
            "get": _operation(
                "getCommand",
                "a command of the server and its outcome",
                {"200": _json("the command", schemas.ref("Command")), **_errors("401", "404", "503")},
            ),
        },
        "/": {"get": _dashboard_file("dashboard", "the dashboard page", {"text/html"})},
        dashboard.ASSET_PREFIX + "{name}": {
            "get": _dashboard_file(
                "dashboardAsset",
                "the dashboard's script and style sheet",
                {kind for name, kind in dashboard.FILES.items() if name != "index.html"},
                parameters=[
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": sorted(set(dashboard.FILES) - {"index.html"})},
                    }
                ],
                missing=True,
            )
        },
        "/v1/stream": {"get": _stream()},
        "/agent/v1/servers/{server_id}/status": {"parameters": [_SERVER_ID], "post": _agent_report()},
        **_admin(),
    }
    for action in sorted(servers.ACTIONS):
        paths[f"/v1/servers/{{server_id}}/{action}"] = {
            "parameters": [_SERVER_ID],
            "post": _operation(
                f"{action}Server",
                f"{action}: 202 once the server's actor accepts it (or while it is still queued)",
                {
                    "202": _json("accepted", schemas.ref("ServerAccepted"), _SERVER_HEADERS),
                    **_errors("401", "404", "409", "503"),
                },
            ),
        }
    return paths


def _create() -> dict[str, Any]:
    return _operation(
        "createServer",
        "create a server: one record, its VMID, IP, node and game port, in one transaction",
        {
            "202": {
                **_json(
                    "accepted; a replay of the key's first answer carries Idempotent-Replayed",
                    schemas.ref("ServerAccepted"),
                    {
                        "Location": {"schema": {"type": "string"}, "required": True},
                        "Idempotent-Replayed": {"schema": {"const": "true"}, "required": False},
                    },
                ),
                "links": _server_links(),
            },
            **_errors("400", "401", "409", "413", "415", "422", "503"),
        },
        parameters=[
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "pattern": servers.IDEMPOTENCY_KEY.pattern},
                "description": "1-255 visible ASCII characters (the same key and body: the first answer)",
            }
        ],
        requestBody={
            "required": True,
            "content": {
                "application/json": {
                    "schema": schemas.ref("CreateServer"),
                    "example": {
                        "name": "survival",
                        "minecraft_version": "1.21.1",
                        "fabric": {"loader": "0.16.14", "installer": "1.0.1"},
                    },
                }
            },
        },
    )


def _server_links() -> dict[str, Any]:
    """Where a created server's id (and its create command's id) lead."""
    server = {"server_id": "$response.body#/id"}
    links = {
        name: {"operationId": operation, "parameters": server}
        for name, operation in (
            ("GetServer", "getServer"),
            ("ServerEvents", "serverEvents"),
            ("DeleteServer", "deleteServer"),
            *((f"{action.title()}Server", f"{action}Server") for action in sorted(servers.ACTIONS)),
        )
    }
    links["GetCommand"] = {
        "operationId": "getCommand",
        "parameters": {**server, "command_id": "$response.body#/command/id"},
    }
    return links


def _list() -> dict[str, Any]:
    return _operation(
        "listServers",
        "the caller's servers (every tenant's for an admin), oldest first",
        {"200": _json("a page", schemas.ref("ServerList")), **_errors("400", "401", "503")},
        parameters=[
            {
                "name": "state",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": ["", *servers.STATE_FILTERS]},
                "description": "a state, or a group of states by its prefix (`provisioning.`); empty: any",
            },
            _integer_query("limit", 1, servers.MAX_PAGE, servers.DEFAULT_PAGE, "servers per page"),
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "`next_cursor` of the previous page; anything else is a 400",
            },
        ],
    )


def _dashboard_file(
    operation_id: str, summary: str, media_types: set[str], *, missing: bool = False, **extra: Any
) -> dict[str, Any]:
    text = {kind: {"schema": {"type": "string"}} for kind in sorted(media_types)}
    responses: dict[str, schemas.Schema] = {
        "200": {
            "description": "the file",
            "content": text,
            "headers": {"ETag": {"schema": {"type": "string"}}},
        },
        "304": {"description": "unchanged since the ETag in If-None-Match"},
    }
    if missing:
        responses.update(_errors("404"))
    etag = {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}
    parameters = [*extra.pop("parameters", []), etag]
    return _operation(operation_id, summary, responses, security=[], parameters=parameters, **extra)


def _stream() -> dict[str, Any]:
    return _operation(
        "stream",
        "WebSocket: a `server.state` event per journal entry of the caller's servers (docs/stream.md)",
        {
            "101": {"description": "switching to the WebSocket protocol"},
            **_errors("400", "401", "503"),
        },
        description="Only a WebSocket upgrade is served; a plain GET is a 400. Without an Authorization "
        'header the first message must be {"type": "auth", "token": ...}.',
        parameters=[
            {
                "name": "since",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "the cursor of the last event seen: what was missed is replayed first",
            }
        ],
        security=[{"bearer": []}, {}],
    )


def _agent_report() -> dict[str, Any]:
    status = {"type": "string"}
    return _operation(
        "agentReport",
        "an agent reports its state; the report becomes a command for the server's actor",
        {
            "200": _json(
                "ignored: an older sequence number than one already recorded",
                schemas.closed({"status": {"const": "ignored"}, "reason": {"const": "stale_seq"}}),
            ),
            "202": _json("accepted", schemas.closed({"status": {"const": "accepted"}})),
            **_errors("400", "401", "403", "404", "409", "413", "415", "503"),
        },
        description="The token is checked before the body is read: without a valid one the answer is 401 "
        "whatever the body.",
        security=[{"agentToken": []}],
        requestBody={
            "required": True,
            "content": {
                "application/json": {
                    "schema": schemas.closed(
                        {
                            "generation": {"type": "integer", "minimum": 1},
                            "seq": {"type": "integer", "minimum": 1, "maximum": agent_callbacks.MAX_SEQ},
                            "state": {**status, "enum": list(wire.REPORT_STATES)},
                            "manifest_sha256": {**status, "pattern": agent_callbacks.NO_NUL},
                            "detail": {**status, "pattern": agent_callbacks.NO_NUL},
                        }
                    )
                }
            },
        },
    )


def _admin() -> dict[str, Any]:
    admin_errors = _errors("400", "401", "403", "503")
    return {
        "/admin/v1/actors": {
            "get": _operation(
                "adminActors",
                "resident actors on every replica, with each server's state and last transition",
                {"200": _json("actors", schemas.ref("Actors")), **admin_errors},
                parameters=[_SCOPE],
            )
        },
        "/admin/v1/shards": {
            "get": _operation(
                "adminShards",
                "shard owners and epochs, and the registered replicas",
                {"200": _json("shards", schemas.ref("Shards")), **_errors("401", "403", "503")},
            )
        },
        "/admin/v1/drift": {
            "get": _operation(
                "adminDrift",
                "the newest reconciliation report of every replica",
                {
                    "200": _json(
                        "reports",
                        schemas.closed({"reports": {"type": "array", "items": schemas.ref("Report")}}),
                    ),
                    **_errors("401", "403", "503"),
                },
            )
        },
        "/admin/v1/reconcile": {
            "post": _operation(
                "adminReconcile",
                "a reconciliation pass now, on every replica over its own shards",
                {
                    "200": _json(
                        "the reports (scope=local: this replica's report alone)",
                        {"oneOf": [schemas.ref("Reports"), schemas.ref("Report")]},
                    ),
                    **admin_errors,
                },
                parameters=[_SCOPE],
            )
        },
    }
