"""Every `web.AppKey` of the application, in one place."""

from __future__ import annotations

import asyncpg
from aiohttp import web

from zlh_actors import config, metrics
from zlh_actors.runtime import inbox, replica
from zlh_actors.servers import actor, create

POOL = web.AppKey("pool", asyncpg.Pool)
SETTINGS = web.AppKey("settings", config.Settings)
PLACEMENT = web.AppKey("placement", create.Placement)
INBOX = web.AppKey("inbox", inbox.Inbox)
METRICS = web.AppKey("metrics", metrics.Metrics)
REPLICA = web.AppKey("replica", replica.Replica[actor.Wake])
