"""Bearer-token authentication for the public and admin API.

Tokens are stored hashed with a tenant and a role. A user sees and touches only its own tenant's
servers (another tenant's server is a 404, not a 403, so ids do not leak); an admin sees all.
Agent callbacks authenticate with their own per-server tokens (see `agent_callbacks`).
"""

from __future__ import annotations

import dataclasses

from aiohttp import web

from storage import database, tokens
from zlh_actors import errors
from zlh_actors.api import keys, problems

PUBLIC = frozenset({"/healthz", "/readyz", "/metrics", "/openapi.json"})
STREAM_PATH = "/v1/stream"  # may authenticate with its first message instead of the header


@dataclasses.dataclass(frozen=True)
class Principal:
    tenant: str
    role: str

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"

    def scope(self) -> str | None:
        """The tenant to filter by: None for admins, who see every tenant."""
        return None if self.is_admin else self.tenant


PRINCIPAL = web.RequestKey("principal", Principal)


def bearer(request: web.Request) -> str | None:
    header = request.headers.get("Authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        return None
    return value.strip()


def principal(request: web.Request) -> Principal:
    if PRINCIPAL not in request:
        raise errors.Unauthorized("authentication required")
    return request[PRINCIPAL]


def require_admin(request: web.Request) -> Principal:
    who = principal(request)
    if not who.is_admin:
        raise errors.Forbidden("this endpoint needs an admin token")
    return who


@web.middleware
async def middleware(request: web.Request, handler: problems.Handler) -> web.StreamResponse:
    if (
        request.path in PUBLIC
        or request.path.startswith("/agent/")
        or not request.path.startswith(("/v1/", "/admin/"))
    ):
        return await handler(request)
    secret = bearer(request)
    if secret is None:
        if request.path == STREAM_PATH:
            return await handler(request)  # browsers cannot set WebSocket headers: it authenticates itself
        raise errors.Unauthorized("missing bearer token")
    async with database.acquire(request.app[keys.POOL]) as conn:
        token = await tokens.authenticate(conn, secret)
    if token is None:
        raise errors.Unauthorized("invalid or revoked token")
    request[PRINCIPAL] = Principal(tenant=token.tenant, role=token.role)
    return await handler(request)
