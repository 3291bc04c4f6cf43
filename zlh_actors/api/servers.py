"""REST handlers for servers: thin parse -> send -> render.

Creating goes through `servers.create` (one transaction, idempotent); every other change is a
command in the inbox, answered when the owning actor has accepted or rejected it (202 or 409), or
with 202 and the command still queued if the owner does not answer within the wait (it will run).
"""

from __future__ import annotations

import base64
import datetime
import re
import uuid
from typing import Any

from aiohttp import web

from statemachines import lifecycle
from storage import commands, database, idempotency, journal, servers
from zlh_actors import errors
from zlh_actors.api import auth, bodies, keys
from zlh_actors.servers import create, requests, views

IDEMPOTENCY_KEY = re.compile(r"^[!-~]{1,255}$")
ACTIONS = frozenset({"start", "stop", "restart", "retry"})
# The actions are in the route itself, so `/v1/servers/{id}/events` never matches it: a 405 there
# advertises only GET in its Allow header, and an unknown action is the router's 404.
ACTION_PATH = "/v1/servers/{server_id}/{action:" + "|".join(sorted(ACTIONS)) + "}"
DEFAULT_PAGE, MAX_PAGE = 50, 100
MAX_EVENTS = 1000
MAX_SEQ = 2**31 - 1  # journal.seq is an integer column
# `?state=`: a state, or a group of them by its prefix ("provisioning."). An unknown one is a 400,
# not an empty page, so a typo is not mistaken for "no such servers".
STATE_FILTERS = (
    *lifecycle.STATES,
    *sorted({state.split(".")[0] + "." for state in lifecycle.STATES if "." in state}),
)
_WHOLE_NUMBER = re.compile(r"-?[0-9]{1,20}")


def _server_id(request: web.Request) -> uuid.UUID:
    try:
        return uuid.UUID(request.match_info["server_id"])
    except ValueError:
        raise errors.NotFound("no such server", server_id=request.match_info["server_id"]) from None


async def _visible(request: web.Request, server_id: uuid.UUID) -> servers.Server:
    async with database.acquire(request.app[keys.POOL]) as conn:
        return await servers.get(conn, server_id, tenant=auth.principal(request).scope())


def _server_response(server: servers.Server, status: int = 200, **extra: Any) -> web.Response:
    body = views.server(server)
    body.update(extra)
    headers = {"ETag": f'"{server.version}"', "Location": f"/v1/servers/{server.id}"}
    return bodies.json_response(body, status, headers)


async def create_server(request: web.Request) -> web.Response:
    who = auth.principal(request)
    key = request.headers.get("Idempotency-Key")
    if key is None or not IDEMPOTENCY_KEY.fullmatch(key):
        raise errors.BadRequest(
            "an Idempotency-Key header of 1-255 visible ASCII characters is required",
            fields={"Idempotency-Key": "missing or malformed"},
        )
    data = await bodies.read_json(request)
    settings = request.app[keys.SETTINGS]
    answer = await create.create(
        request.app[keys.POOL],
        settings,
        request.app[keys.PLACEMENT],
        tenant=who.tenant,
        key=key,
        fingerprint=idempotency.fingerprint(request.method, request.path, data),
        parse=lambda: requests.parse_create(data, settings),
    )
    headers = {"Location": f"/v1/servers/{answer.body['id']}"}
    if answer.replayed:
        headers["Idempotent-Replayed"] = "true"
    return bodies.json_response(answer.body, answer.status, headers)


def _cursor(text: str | None) -> tuple[datetime.datetime, uuid.UUID] | None:
    if not text:
        return None
    try:
        created, _, server_id = base64.urlsafe_b64decode(text.encode()).decode().partition("|")
        # In UTC here: a far-off offset near year 1 or 9999 must fail now, not in the driver.
        return datetime.datetime.fromisoformat(created).astimezone(datetime.UTC), uuid.UUID(server_id)
    except (ValueError, UnicodeDecodeError, OverflowError):
        raise errors.BadRequest(
            "malformed cursor", fields={"cursor": "not a cursor this API issued"}
        ) from None


def _encode_cursor(server: servers.Server) -> str:
    return base64.urlsafe_b64encode(f"{server.created_at.isoformat()}|{server.id}".encode()).decode()


def _query_int(request: web.Request, name: str, default: int, low: int, high: int) -> int:
    """A whole-number query parameter in [low, high]: plain ASCII digits, else a 400 naming it."""
    text = request.query.get(name)
    if text is None:
        return default
    if not _WHOLE_NUMBER.fullmatch(text) or not low <= int(text) <= high:
        raise errors.BadRequest(
            f"{name} must be a whole number from {low} to {high}",
            fields={name: f"must be a whole number from {low} to {high}"},
        )
    return int(text)


async def list_servers(request: web.Request) -> web.Response:
    who = auth.principal(request)
    limit = _query_int(request, "limit", DEFAULT_PAGE, 1, MAX_PAGE)
    state = request.query.get("state") or None
    if state is not None and state not in STATE_FILTERS:
        raise errors.BadRequest(
            "unknown state", fields={"state": "a state, or a prefix such as 'provisioning.'"}
        )
    async with database.acquire(request.app[keys.POOL]) as conn:
        rows = await servers.page(
            conn,
            tenant=who.scope(),
            state=state,
            after=_cursor(request.query.get("cursor")),
            limit=limit,
        )
    next_cursor = _encode_cursor(rows[-1]) if len(rows) == limit else None
    return bodies.json_response({"items": [views.server(row) for row in rows], "next_cursor": next_cursor})


async def get_server(request: web.Request) -> web.Response:
    return _server_response(await _visible(request, _server_id(request)))


async def _command(request: web.Request, kind: str) -> web.Response:
    server = await _visible(request, _server_id(request))
    if kind == "delete" and server.state == servers.DELETED:
        return _server_response(server, 202)  # deleting a deleted server is the same outcome
    command = await request.app[keys.INBOX].submit(request.app[keys.POOL], server.id, kind)
    server = await _visible(request, server.id)
    if command.status == "rejected":
        result = command.result or {}
        raise errors.InvalidTransition(
            f"{kind} is not allowed while the server is {result.get('state', server.state)}",
            state=result.get("state", server.state),
            allowed=result.get("allowed", []),
        )
    return _server_response(server, 202, command=views.command(command))


async def server_action(request: web.Request) -> web.Response:
    return await _command(request, request.match_info["action"])


async def delete_server(request: web.Request) -> web.Response:
    return await _command(request, "delete")


async def server_events(request: web.Request) -> web.Response:
    after = _query_int(request, "after", 0, 0, MAX_SEQ)
    limit = _query_int(request, "limit", MAX_EVENTS, 1, MAX_EVENTS)
    server = await _visible(request, _server_id(request))
    async with database.acquire(request.app[keys.POOL]) as conn:
        entries = await journal.entries(conn, server.id, after=after, limit=limit)
    return bodies.json_response({"items": [views.event(entry) for entry in entries]})


async def get_command(request: web.Request) -> web.Response:
    server = await _visible(request, _server_id(request))
    try:
        command_id = uuid.UUID(request.match_info["command_id"])
    except ValueError:
        raise errors.NotFound("no such command") from None
    async with database.acquire(request.app[keys.POOL]) as conn:
        command = await commands.get(conn, command_id)
    if command.server_id != server.id:
        raise errors.NotFound("no such command")
    return bodies.json_response(views.command(command))
