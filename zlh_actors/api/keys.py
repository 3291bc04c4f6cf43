"""Every `web.AppKey` of the application, in one place."""

from __future__ import annotations

import asyncpg
from aiohttp import web

POOL = web.AppKey("pool", asyncpg.Pool)
