"""A bare aiohttp WebSocket echo server in a process of its own: `bench.stream`'s baseline.

    python -m bench._echo PORT

It listens on 127.0.0.1:PORT, prints `listening` once it does, and sends every text
frame it receives straight back. A round trip through it is what the same client stack and the same
loaded machine cost without the control plane and the database in the way.
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp
from aiohttp import web


async def echo(request: web.Request) -> web.WebSocketResponse:
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    async for message in ws:
        if message.type == aiohttp.WSMsgType.TEXT:
            await ws.send_str(message.data)
    return ws


async def serve(port: int) -> None:
    app = web.Application()
    app.router.add_get("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    print("listening", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1])))
