"""Errors as RFC 9457 problem+json, translated in one middleware.

Handlers raise the project's typed errors (or aiohttp's HTTP exceptions); this middleware renders
them. An unexpected exception becomes a 500 problem without internals, and is logged with its
traceback, so a client never sees a stack trace.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from aiohttp import web

from zlh_actors import errors
from zlh_actors.api import bodies

log = logging.getLogger(__name__)

CONTENT_TYPE = "application/problem+json"

# Error class -> (HTTP status, problem type slug). The first matching class wins, so subclasses first.
# Errors that mean a bug or an internal fault (a schema invariant firing, an unclassified permanent
# error from a driver) are a 500 with no details: their text is for the log, not for clients.
_STATUS: tuple[tuple[type[errors.ZlhError], int, str], ...] = (
    (errors.NotFound, 404, "not-found"),
    (errors.IdempotencyMismatch, 422, "idempotency-key-reused"),
    (errors.InProgress, 409, "in-progress"),
    (errors.NameTaken, 409, "name-taken"),
    (errors.StaleGeneration, 409, "stale_generation"),
    (errors.StaleWrite, 409, "stale-write"),
    (errors.Conflict, 409, "conflict"),
    (errors.InvalidTransition, 409, "invalid-transition"),
    (errors.Unauthorized, 401, "unauthorized"),
    (errors.Forbidden, 403, "forbidden"),
    (errors.Overloaded, 503, "overloaded"),
    (errors.BadRequest, 400, "bad-request"),
    (bodies.UnsupportedMediaType, 415, "unsupported-media-type"),
    (errors.CapacityExhausted, 503, "capacity-exhausted"),
    (errors.StorageUnavailable, 503, "storage-unavailable"),
    (errors.OwnershipLost, 503, "ownership-lost"),
    (errors.Transient, 503, "unavailable"),
)

# The title of an error translated from a database constraint, whose message is PostgreSQL's. A rule
# a client can break (a taken name) is checked where it is broken and raised again with its own
# message (servers/create.py), so this is only for constraints that have no message of their own.
_CONSTRAINT_TITLE = "conflicts with existing data"

# The structured details a client may see; anything else (Proxmox texts, SQL states, task logs)
# stays in the logs.
PUBLIC_DETAILS = frozenset(
    {"fields", "state", "allowed", "key", "generation", "current", "server_id", "reason"}
)


# Headers of aiohttp's own errors that the client needs (RFC 9110 requires Allow on a 405).
_KEPT_HEADERS = ("Allow",)


def problem(
    status: int,
    title: str,
    *,
    slug: str = "about:blank",
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> web.Response:
    body: dict[str, Any] = {
        "type": slug if slug == "about:blank" else f"/problems/{slug}",
        "title": title,
        "status": status,
    }
    body.update(extra)
    return web.Response(status=status, body=orjson.dumps(body), content_type=CONTENT_TYPE, headers=headers)


def from_error(exc: errors.ZlhError) -> web.Response:
    for cls, status, slug in _STATUS:
        if isinstance(exc, cls):
            if status == 503 and not isinstance(exc, errors.CapacityExhausted | errors.Overloaded):
                log.warning("answering 503: %s", exc)
                title = "temporarily unavailable; try again"
            elif "constraint" in exc.details:
                # The database's own words name tables and SQL: a client never sees them.
                title = _CONSTRAINT_TITLE
            else:
                title = exc.message
            extra = {k: _jsonable(v) for k, v in exc.details.items() if k in PUBLIC_DETAILS}
            return problem(status, title, slug=slug, **extra)
    log.error("internal error answered as 500: %s", exc, exc_info=exc)
    return problem(500, "internal error", slug="internal")


def _jsonable(value: Any) -> Any:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return str(value)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.ZlhError as exc:
        return from_error(exc)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        kept = {name: exc.headers[name] for name in _KEPT_HEADERS if name in exc.headers}
        return problem(exc.status, exc.reason, headers=kept)
    except ConnectionResetError:
        # The client went away mid-request (while we read its body, say): not our error. The answer
        # goes nowhere, but returning one keeps aiohttp from logging the request as a server error.
        log.info("client of %s %s disconnected before its answer", request.method, request.path)
        return problem(400, "the connection closed before the request was complete", slug="bad-request")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, "internal error", slug="internal")
