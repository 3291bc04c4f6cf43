"""The agent's HTTP API: thin handlers over `lifecycle.Agent`, signed commands, problem+json errors.

    POST /v1/enroll       signed   202 install started | 200 already enrolled | 400 | 401 | 409
    GET  /v1/status       open     200 status (read-only, polled by the reconciler)
    POST /v1/game/start   signed   202 starting | 200 already starting/running | 401 | 409
    POST /v1/game/stop    signed   202 stopping | 200 nothing running | 401 | 409

Every non-GET request must be signed with the enrollment key (`signing`); the check is one
middleware, so a route added later cannot forget it. The signature covers the raw path and the raw
body bytes, so the middleware verifies before any handler parses the body. Status is open because it
reveals nothing secret (never the token) and changes nothing.

Errors are rendered as RFC 9457 problem+json by one middleware and one table, as in the control
plane's API; an unexpected exception becomes a 500 without internals and is logged.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from zlh_actors import errors
from zlh_actors.agent import game, lifecycle, manifest, signing, wire

log = logging.getLogger(__name__)

AGENT = web.AppKey("agent", lifecycle.Agent)
ENROLLMENT_KEY = web.AppKey("enrollment_key", bytes)
# An enrollment carries a manifest of at most `manifest.MAX_MODS` mods: well under this.
MAX_BODY_BYTES = 1024 * 1024
CONTENT_TYPE = "application/problem+json"

# Error class -> (HTTP status, problem type slug). The first matching class wins, so subclasses first.
_STATUS: tuple[tuple[type[errors.ZlhError], int, str], ...] = (
    (signing.SignatureRejected, 401, "unauthorized"),
    (manifest.ManifestInvalid, 400, "invalid-manifest"),
    (wire.BadRequest, 400, "bad-request"),
    (lifecycle.GenerationConflict, 409, "generation-conflict"),
    (lifecycle.NotAllowed, 409, "not-allowed"),
    (game.GameStartFailed, 500, "game-start-failed"),
    (errors.Transient, 503, "unavailable"),
    (errors.Permanent, 400, "bad-request"),
)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def make_app(agent: lifecycle.Agent, enrollment_key: bytes) -> web.Application:
    app = web.Application(middlewares=[_problems, _signed], client_max_size=MAX_BODY_BYTES)
    app[AGENT] = agent
    app[ENROLLMENT_KEY] = enrollment_key
    app.add_routes(
        [
            web.post(wire.ENROLL_PATH, enroll),
            web.get(wire.STATUS_PATH, status),
            web.post(wire.START_PATH, start),
            web.post(wire.STOP_PATH, stop),
        ]
    )
    return app


async def enroll(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    started = agent.enroll(wire.parse_enroll(await _json(request)))
    return web.json_response(agent.status(), status=202 if started else 200)


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[AGENT].status())


async def start(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    started = await agent.start(wire.parse_game_request(await _json(request)))
    return web.json_response(agent.status(), status=202 if started else 200)


async def stop(request: web.Request) -> web.Response:
    agent = request.app[AGENT]
    stopping = await agent.stop(wire.parse_game_request(await _json(request)))
    return web.json_response(agent.status(), status=202 if stopping else 200)


async def _json(request: web.Request) -> object:
    try:
        return json.loads(await request.read())
    except ValueError:
        raise wire.BadRequest("body", "must be JSON") from None


@web.middleware
async def _signed(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.method != "GET":
        body = await request.read()
        signing.verify(
            request.app[ENROLLMENT_KEY],
            request.method,
            request.rel_url.raw_path,
            body,
            request.headers,
            time.time(),
        )
    return await handler(request)


@web.middleware
async def _problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except errors.ZlhError as exc:
        for cls, code, slug in _STATUS:
            if isinstance(exc, cls):
                if code == 401:
                    log.warning(
                        "refused %s %s from %s: %s", request.method, request.path, request.remote, exc
                    )
                return problem(
                    code, exc.message, slug, **{key: str(value) for key, value in exc.details.items()}
                )
        return problem(500, "internal error", "internal")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return problem(exc.status, exc.reason, "about:blank")
    except Exception:
        log.exception("unhandled error in %s %s", request.method, request.path)
        return problem(500, "internal error", "internal")


def problem(code: int, title: str, slug: str, **extra: Any) -> web.Response:
    body: dict[str, Any] = {
        "type": slug if slug == "about:blank" else f"/problems/{slug}",
        "title": title,
        "status": code,
        **extra,
    }
    return web.Response(status=code, body=json.dumps(body).encode("utf-8"), content_type=CONTENT_TYPE)
