"""Every `web.AppKey` of the application, in one place."""

from __future__ import annotations

from typing import TYPE_CHECKING

import asyncpg
from aiohttp import web

from zlh_actors import config, metrics
from zlh_actors.reconciler import loop
from zlh_actors.runtime import inbox, replica
from zlh_actors.servers import actor, create

if TYPE_CHECKING:
    from zlh_actors.api import stream  # stream imports this module: its type is for annotations only

POOL = web.AppKey("pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", config.Settings)
PLACEMENT = web.AppKey("placement", create.Placement)
INBOX = web.AppKey("inbox", inbox.Inbox)
METRICS = web.AppKey("metrics", metrics.Metrics)
REPLICA = web.AppKey("replica", replica.Replica[actor.Wake])
STREAM: web.AppKey[stream.Hub] = web.AppKey("stream")
SOCKETS: web.AppKey[dict[web.WebSocketResponse, web.Request]] = web.AppKey("stream_sockets")
RECONCILER = web.AppKey("reconciler", loop.Reconciler)
