"""The aiohttp application, built from explicit dependencies."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from zlh_actors.api import health, keys, problems


def make_app(pool: asyncpg.Pool) -> web.Application:
    app = web.Application(middlewares=[problems.middleware])
    app[keys.POOL] = pool
    app.add_routes(
        [
            web.get("/healthz", health.healthz),
            web.get("/readyz", health.readyz),
        ]
    )
    return app
