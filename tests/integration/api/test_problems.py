"""The problem middleware: a client that goes away mid-request is not an internal error."""

from __future__ import annotations

import asyncio
import logging
import socket

import pytest
from aiohttp import web

from zlh_actors.api import bodies, problems


async def test_a_client_gone_while_its_body_is_read_is_logged_as_such_not_as_an_error(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO)
    reached = asyncio.Event()
    handled: asyncio.Future[BaseException | None] = asyncio.get_running_loop().create_future()

    async def handler(request: web.Request) -> web.Response:
        reached.set()
        try:
            await bodies.read_json(request)
        except BaseException as exc:
            handled.set_result(exc)
            raise
        handled.set_result(None)
        return web.Response()

    app = web.Application(middlewares=[problems.middleware])
    app.router.add_post("/", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        client = socket.create_connection(("127.0.0.1", port))
        client.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
        client.sendall(b'Content-Length: 1000\r\n\r\n{"half": ')
        await asyncio.wait_for(reached.wait(), 10)
        client.close()
        raised = await asyncio.wait_for(handled, 10)
    finally:
        await runner.cleanup()
    assert isinstance(raised, ConnectionResetError)
    assert not [record for record in caplog.records if record.levelno >= logging.ERROR]
    assert "disconnected before its answer" in caplog.text
