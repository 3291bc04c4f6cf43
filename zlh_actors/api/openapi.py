"""The API's OpenAPI 3.1 description, served at `GET /openapi.json`.

The document is written by hand, here (the public server API), in `openapi_auxiliary` (admin,
agent and dashboard paths) and in `openapi_schemas` (bodies), but every limit in it is read from the
code that enforces it: the create body's patterns and bounds from `servers.requests` (the memory,
cores, disk and URL scheme limits from the running service's settings, so the document describes
*this* deployment), the idempotency key and query bounds from `api.servers`, lifecycle states from
the chart, agent report states and bounds from the agent protocol and its handler. What cannot be
imported (which statuses a handler answers) is kept honest by tests: `tests/e2e/test_openapi.py`
checks that every route of the application is described and nothing else, and runs schemathesis
against a live service, which fails on any status, header, content type or body the document does
not allow, and on any request the document calls invalid that the service accepts.

Settings never change in a running process, so the document is built and encoded once per settings
(`_encoded`) and every request is answered with those bytes.

Errors are RFC 9457 problem documents (`problems.py`); the schema of one lists the structured
details a client may see, and nothing else.
"""

from __future__ import annotations

import functools
from typing import Any

import orjson
from aiohttp import web

from zlh_actors import config
from zlh_actors.api import bodies, keys, servers
from zlh_actors.api import openapi_auxiliary as auxiliary
from zlh_actors.api import openapi_objects as objects
from zlh_actors.api import openapi_schemas as schemas

PATH = "/openapi.json"


async def serve(request: web.Request) -> web.Response:
    return web.Response(body=_encoded(request.app[keys.SETTINGS]), content_type=bodies.JSON)


@functools.lru_cache(maxsize=4)
def _encoded(settings: config.Settings) -> bytes:
    return orjson.dumps(document(settings))


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
        "paths": {**_paths(), **auxiliary.paths()},
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
            "responses": objects.response_components(),
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


_SERVER_HEADERS = {
    "ETag": {"schema": {"type": "string"}, "required": True, "description": "the row version, quoted"},
    "Location": {"schema": {"type": "string"}, "required": True},
}


def _paths() -> dict[str, Any]:
    public: list[dict[str, Any]] = []  # no security
    paths: dict[str, Any] = {
        "/healthz": {
            "get": objects.operation(
                "healthz",
                "liveness: the process serves HTTP",
                {"200": objects.json_answer("alive", schemas.closed({"status": {"const": "ok"}}))},
                security=public,
            )
        },
        "/readyz": {
            "get": objects.operation(
                "readyz",
                "readiness: the database is reachable and carries every migration",
                {
                    "200": objects.json_answer(
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
            "get": objects.operation(
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
            "get": objects.operation(
                "openapi",
                "this document",
                {"200": objects.json_answer("the OpenAPI 3.1 description", {"type": "object"})},
                security=public,
            )
        },
        "/v1/servers": {"post": _create(), "get": _list()},
        "/v1/servers/{server_id}": {
            "parameters": [objects.SERVER_ID],
            "get": objects.operation(
                "getServer",
                "one server",
                {
                    "200": objects.json_answer("the server", schemas.ref("Server"), _SERVER_HEADERS),
                    **objects.errors("401", "404", "503"),
                },
            ),
            "delete": objects.operation(
                "deleteServer",
                "delete: accepted in every state; deleting a deleted server answers it again",
                {
                    "202": objects.json_answer(
                        "accepted (no command when already deleted)",
                        schemas.ref("ServerDeleting"),
                        _SERVER_HEADERS,
                    ),
                    **objects.errors("401", "404", "409", "503"),
                },
            ),
        },
        "/v1/servers/{server_id}/events": {
            "parameters": [objects.SERVER_ID],
            "get": objects.operation(
                "serverEvents",
                "the server's transition journal, oldest first",
                {
                    "200": objects.json_answer("journal entries", schemas.ref("EventList")),
                    **objects.errors("400", "401", "404", "503"),
                },
                parameters=[
                    objects.integer_query("after", 0, servers.MAX_SEQ, 0, "entries with a greater seq"),
                    objects.integer_query(
                        "limit", 1, servers.MAX_EVENTS, servers.MAX_EVENTS, "entries at most"
                    ),
                ],
            ),
        },
        "/v1/servers/{server_id}/commands/{command_id}": {
            "parameters": [
                objects.SERVER_ID,
                {"name": "command_id", "in": "path", "required": True, "schema": schemas.UUID},
            ],
            "get": objects.operation(
                "getCommand",
                "a command of the server and its outcome",
                {
                    "200": objects.json_answer("the command", schemas.ref("Command")),
                    **objects.errors("401", "404", "503"),
                },
            ),
        },
        "/v1/stream": {"get": _stream()},
    }
    for action in sorted(servers.ACTIONS):
        paths[f"/v1/servers/{{server_id}}/{action}"] = {
            "parameters": [objects.SERVER_ID],
            "post": objects.operation(
                f"{action}Server",
                f"{action}: 202 once the server's actor accepts it (or while it is still queued)",
                {
                    "202": objects.json_answer("accepted", schemas.ref("ServerAccepted"), _SERVER_HEADERS),
                    **objects.errors("401", "404", "409", "503"),
                },
            ),
        }
    return paths


def _create() -> dict[str, Any]:
    return objects.operation(
        "createServer",
        "create a server: one record, its VMID, IP, node and game port, in one transaction",
        {
            "202": {
                **objects.json_answer(
                    "accepted; a replay of the key's first answer carries Idempotent-Replayed",
                    schemas.ref("ServerAccepted"),
                    {
                        "Location": {"schema": {"type": "string"}, "required": True},
                        "Idempotent-Replayed": {"schema": {"const": "true"}, "required": False},
                    },
                ),
                "links": _server_links(),
            },
            **objects.errors("400", "401", "409", "413", "415", "422", "503"),
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
    return objects.operation(
        "listServers",
        "the caller's servers (every tenant's for an admin), oldest first",
        {
            "200": objects.json_answer("a page", schemas.ref("ServerList")),
            **objects.errors("400", "401", "503"),
        },
        parameters=[
            {
                "name": "state",
                "in": "query",
                "required": False,
                "schema": {"type": "string", "enum": ["", *servers.STATE_FILTERS]},
                "description": "a state, or a group of states by its prefix (`provisioning.`); empty: any",
            },
            objects.integer_query("limit", 1, servers.MAX_PAGE, servers.DEFAULT_PAGE, "servers per page"),
            {
                "name": "cursor",
                "in": "query",
                "required": False,
                "schema": {"type": "string"},
                "description": "`next_cursor` of the previous page; anything else is a 400",
            },
        ],
    )


def _stream() -> dict[str, Any]:
    return objects.operation(
        "stream",
        "WebSocket: a `server.state` event per journal entry of the caller's servers (docs/stream.md)",
        {
            "101": {"description": "switching to the WebSocket protocol"},
            **objects.errors("400", "401", "503"),
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
