"""The OpenAPI paths beside the public server API: the admin views, the agent callback, the dashboard.

Each has its own audience and its own authentication: admin tokens (`/admin/v1`, 403 for a user's),
the per-server agent token (`/agent/v1`, checked before the body is read), and none at all for the
dashboard's static files (`/`, `/ui/{name}`, whose names come from `dashboard.FILES`). `openapi.py`
merges these paths into the document.
"""

from __future__ import annotations

from typing import Any

from zlh_actors.agent import wire
from zlh_actors.api import admin, agent_callbacks, dashboard
from zlh_actors.api import openapi_objects as objects
from zlh_actors.api import openapi_schemas as schemas

_SCOPE = {
    "name": "scope",
    "in": "query",
    "required": False,
    "schema": {"type": "string", "enum": [admin.LOCAL]},
    "description": "`local`: this replica only (how replicas ask each other); absent: every replica",
}


def paths() -> dict[str, Any]:
    return {**_dashboard(), **_agent(), **_admin()}


def _dashboard() -> dict[str, Any]:
    assets = sorted(set(dashboard.FILES) - {"index.html"})
    return {
        "/": {"get": _dashboard_file("dashboard", "the dashboard page", {"text/html"})},
        dashboard.ASSET_PREFIX + "{name}": {
            "get": _dashboard_file(
                "dashboardAsset",
                "the dashboard's script modules and style sheet",
                {dashboard.FILES[name] for name in assets},
                parameters=[
                    {
                        "name": "name",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "string", "enum": assets},
                    }
                ],
                missing=True,
            )
        },
    }


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
        responses.update(objects.errors("404"))
    etag = {"name": "If-None-Match", "in": "header", "required": False, "schema": {"type": "string"}}
    parameters = [*extra.pop("parameters", []), etag]
    return objects.operation(operation_id, summary, responses, security=[], parameters=parameters, **extra)


def _agent() -> dict[str, Any]:
    status = {"type": "string"}
    report = objects.operation(
        "agentReport",
        "an agent reports its state; the report becomes a command for the server's actor",
        {
            "200": objects.json_answer(
                "ignored: an older sequence number than one already recorded",
                schemas.closed({"status": {"const": "ignored"}, "reason": {"const": "stale_seq"}}),
            ),
            "202": objects.json_answer("accepted", schemas.closed({"status": {"const": "accepted"}})),
            **objects.errors("400", "401", "403", "404", "409", "413", "415", "503"),
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
    return {"/agent/v1/servers/{server_id}/status": {"parameters": [objects.SERVER_ID], "post": report}}


def _admin() -> dict[str, Any]:
    admin_errors = objects.errors("400", "401", "403", "503")
    return {
        "/admin/v1/actors": {
            "get": objects.operation(
                "adminActors",
                "resident actors on every replica, with each server's state and last transition",
                {"200": objects.json_answer("actors", schemas.ref("Actors")), **admin_errors},
                parameters=[_SCOPE],
            )
        },
        "/admin/v1/shards": {
            "get": objects.operation(
                "adminShards",
                "shard owners and epochs, and the registered replicas",
                {
                    "200": objects.json_answer("shards", schemas.ref("Shards")),
                    **objects.errors("401", "403", "503"),
                },
            )
        },
        "/admin/v1/drift": {
            "get": objects.operation(
                "adminDrift",
                "the newest reconciliation report of every replica",
                {
                    "200": objects.json_answer(
                        "reports",
                        schemas.closed({"reports": {"type": "array", "items": schemas.ref("Report")}}),
                    ),
                    **objects.errors("401", "403", "503"),
                },
            )
        },
        "/admin/v1/reconcile": {
            "post": objects.operation(
                "adminReconcile",
                "a reconciliation pass now, on every replica over its own shards",
                {
                    "200": objects.json_answer(
                        "the reports (scope=local: this replica's report alone)",
                        {"oneOf": [schemas.ref("Reports"), schemas.ref("Report")]},
                    ),
                    **admin_errors,
                },
                parameters=[_SCOPE],
            )
        },
    }
