"""Liveness and readiness.

`/healthz` answers while the process serves HTTP. `/readyz` answers 200 only when the database is
reachable and carries every migration this release knows, so a load balancer sends no traffic to a
replica that could not serve it.
"""

from __future__ import annotations

from aiohttp import web

from storage import database, migrate
from zlh_actors import errors
from zlh_actors.api import keys, problems


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    pool = request.app[keys.POOL]
    try:
        async with pool.acquire(timeout=2) as conn:
            current = await database.guarded(migrate.is_current(conn))
    except errors.ZlhError as exc:
        return problems.problem(503, "not ready", slug="not-ready", reason=exc.message)
    except (TimeoutError, OSError):
        return problems.problem(503, "not ready", slug="not-ready", reason="no database connection available")
    if not current:
        return problems.problem(503, "not ready", slug="not-ready", reason="database migrations are pending")
    return web.json_response({"status": "ready", "database": "ok", "migrations": "current"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(text=request.app[keys.METRICS].render(), content_type="text/plain")
