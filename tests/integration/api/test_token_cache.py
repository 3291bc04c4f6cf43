"""The token cache: lookups are remembered and shared, and a revocation is refused once heard, however
long the cache would have kept the token."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable

import asyncpg
import pytest
from aiohttp import test_utils, web

from storage import database, tokens
from tests import helpers
from zlh_actors.api import auth, keys, problems

Client = test_utils.TestClient[web.Request, web.Application]


async def whoami(request: web.Request) -> web.Response:
    who = auth.principal(request)
    return web.json_response({"tenant": who.tenant, "role": who.role})


@pytest.fixture
async def cache(db_url: str) -> auth.Tokens:
    return auth.Tokens(db_url, server_settings={"application_name": "test-tokens"}, ttl=3600)


@pytest.fixture
async def client(pool: asyncpg.Pool, cache: auth.Tokens) -> AsyncIterator[Client]:
    app = web.Application(middlewares=[problems.middleware, auth.middleware])
    app[keys.POOL] = pool
    app[auth.TOKENS] = cache
    app.cleanup_ctx.append(auth.tokens_context)
    app.router.add_get("/v1/whoami", whoami)
    async with test_utils.TestClient(test_utils.TestServer(app)) as running:
        await helpers.assert_eventually(_listening(cache), message="the cache never listened")
        yield running


def _listening(cache: auth.Tokens) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        return cache.listening

    return check


async def status(client: Client, secret: str) -> int:
    async with client.get("/v1/whoami", headers={"Authorization": f"Bearer {secret}"}) as response:
        return response.status


async def test_a_live_token_is_looked_up_once_and_concurrent_lookups_share_it(
    pool: asyncpg.Pool, client: Client, cache: auth.Tokens
) -> None:
    async with database.acquire(pool) as conn:
        _, secret = await tokens.create(conn, "acme", "user")
    assert await asyncio.gather(*(status(client, secret) for _ in range(50))) == [200] * 50
    assert await status(client, secret) == 200
    assert cache.lookups == 1
    assert await status(client, "zlh_unknown") == 401
    assert await status(client, "zlh_unknown") == 401
    assert cache.lookups == 3  # refusals are never cached


async def test_a_revoked_token_is_refused_as_soon_as_the_revocation_is_heard(
    pool: asyncpg.Pool, client: Client, cache: auth.Tokens
) -> None:
    async with database.acquire(pool) as conn:
        made, secret = await tokens.create(conn, "acme", "user")
        _, other = await tokens.create(conn, "acme", "user")
    assert await status(client, secret) == 200
    assert await status(client, other) == 200
    assert cache.lookups == 2
    async with database.transaction(pool) as conn:
        await tokens.revoke(conn, made.id)

    async def refused() -> bool:
        return await status(client, secret) == 401

    # An hour of TTL, yet refused within moments: the notification emptied the cache.
    await helpers.assert_eventually(refused, timeout=5, message="the revoked token is still accepted")
    assert await status(client, other) == 200  # looked up again, still live


async def test_nothing_is_cached_while_the_listener_is_down(
    pool: asyncpg.Pool, client: Client, cache: auth.Tokens
) -> None:
    async with database.acquire(pool) as conn:
        made, secret = await tokens.create(conn, "acme", "user")
    assert await status(client, secret) == 200
    await pool.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'test-tokens'"
    )

    async def deaf() -> bool:
        return not cache.listening

    await helpers.assert_eventually(deaf, message="the cache did not notice its listener was gone")
    before = cache.lookups
    assert await status(client, secret) == 200
    assert cache.lookups == before + 1
    # Revoked while nobody listened: the cache starts empty when the listener is back.
    async with database.acquire(pool) as conn:
        await tokens.revoke(conn, made.id)
    await helpers.assert_eventually(_listening(cache), message="the listener did not come back")
    assert await status(client, secret) == 401


async def test_a_listener_that_stops_answering_stops_the_cache_within_its_freshness(
    pool: asyncpg.Pool, client: Client, cache: auth.Tokens
) -> None:
    """A listener's connection that goes silent (its backend frozen: no error, no FIN, no
    notification) stops the cache from answering after `auth.FRESH`, long before the probe times out:
    a revocation it cannot hear is then checked against the database."""
    async with database.acquire(pool) as conn:
        made, secret = await tokens.create(conn, "acme", "user")
    assert await status(client, secret) == 200
    backend = await pool.fetchval("SELECT pid FROM pg_stat_activity WHERE application_name = 'test-tokens'")
    os.kill(backend, signal.SIGSTOP)
    try:
        async with database.acquire(pool) as conn:
            await tokens.revoke(conn, made.id)
        loop = asyncio.get_running_loop()
        frozen_at = loop.time()

        async def deaf() -> bool:
            return not cache.listening

        await helpers.assert_eventually(deaf, timeout=auth.FRESH + 2, message="the cache kept answering")
        assert loop.time() - frozen_at < auth.PROBE_INTERVAL * 5  # before the probe's own timeout
        assert await status(client, secret) == 401
    finally:
        os.kill(backend, signal.SIGCONT)
