"""The aiohttp application, built from explicit dependencies; every route in one table."""

from __future__ import annotations

import dataclasses

import asyncpg
from aiohttp import web

from zlh_actors import config, metrics
from zlh_actors.api import (
    admin,
    agent_callbacks,
    auth,
    dashboard,
    health,
    keys,
    openapi,
    problems,
    servers,
    stream,
)
from zlh_actors.reconciler import loop
from zlh_actors.runtime import replica
from zlh_actors.servers import actor, create

MAX_BODY = 1024 * 1024


@dataclasses.dataclass(frozen=True)
class Deps:
    pool: asyncpg.Pool
    settings: config.Settings
    placement: create.Placement
    replica: replica.Replica[actor.Wake]
    metrics: metrics.Metrics
    reconciler: loop.Reconciler
    stream: stream.Hub
    tokens: auth.Tokens | None = None


def make_app(deps: Deps) -> web.Application:
    app = web.Application(middlewares=[problems.middleware, auth.middleware], client_max_size=MAX_BODY)
    app[keys.POOL] = deps.pool
    app[keys.SETTINGS] = deps.settings
    app[keys.PLACEMENT] = deps.placement
    app[keys.INBOX] = deps.replica.inbox
    app[keys.REPLICA] = deps.replica
    app[keys.METRICS] = deps.metrics
    app[keys.RECONCILER] = deps.reconciler
    app[keys.STREAM] = deps.stream
    app[keys.SOCKETS] = {}
    app.cleanup_ctx.append(stream.hub_context)
    if deps.tokens is not None:
        app[auth.TOKENS] = deps.tokens
        app.cleanup_ctx.append(auth.tokens_context)
    app.on_shutdown.append(stream.close_sockets)
    app.add_routes(
        [
            web.get("/healthz", health.healthz),
            web.get("/readyz", health.readyz),
            web.get("/metrics", health.metrics),
            web.get(openapi.PATH, openapi.serve),
            web.post("/v1/servers", servers.create_server),
            web.get("/v1/servers", servers.list_servers),
            web.get("/v1/servers/{server_id}", servers.get_server),
            web.delete("/v1/servers/{server_id}", servers.delete_server),
            web.post(servers.ACTION_PATH, servers.server_action),
            web.get("/v1/servers/{server_id}/events", servers.server_events),
            web.get("/v1/servers/{server_id}/commands/{command_id}", servers.get_command),
            web.get(stream.PATH, stream.handler),
            web.post("/agent/v1/servers/{server_id}/status", agent_callbacks.report_status),
            web.get("/admin/v1/actors", admin.actors),
            web.get("/admin/v1/shards", admin.shards),
            web.get("/admin/v1/drift", admin.drift),
            web.post("/admin/v1/reconcile", admin.reconcile),
            web.get("/", dashboard.index),
            web.get(dashboard.ASSET_PREFIX + "{name}", dashboard.asset),
        ]
    )
    return app
