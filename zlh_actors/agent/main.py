"""zlh-agent: the composition root.

flags/env -> state directory -> HTTP client session -> reporter -> agent (restored from disk) -> HTTP
API on the container's IP, then serve until SIGTERM or SIGINT. Shutdown runs in the opposite order:
stop accepting commands, stop the game (reported as `stopped`), give pending reports a few seconds to
reach the control plane, and exit 0.

Bad configuration (a flag, a variable, an unreadable key, an address that cannot be bound, a corrupt
state directory) ends the process with one line on stderr and exit status 2, never a traceback.
Once the API is listening, one line `zlh-agent listening on http://IP:PORT` goes to stdout, with the
actual port when `--listen IP:0` asked for any free one (the lab and the tests read it).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from collections.abc import Sequence

import aiohttp
from aiohttp import web

from zlh_actors import errors
from zlh_actors.agent import api, config, lifecycle, reporter, state

log = logging.getLogger("zlh_actors.agent")

# How long a stopping agent waits for undelivered reports; systemd's TimeoutStopSec covers it.
DRAIN_TIMEOUT = 3.0


def main(argv: Sequence[str] | None = None) -> int:
    try:
        settings = config.load(sys.argv[1:] if argv is None else argv, os.environ)
    except errors.ConfigError as exc:
        print(f"zlh-agent: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    try:
        asyncio.run(serve(settings))
    except errors.ConfigError as exc:
        print(f"zlh-agent: {exc}", file=sys.stderr)
        return 2
    return 0


async def serve(settings: config.Settings) -> None:
    store = state.StateDir(settings.state_dir)
    try:
        store.prepare()
        settings.game_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise errors.ConfigError(f"cannot use {exc.filename}: {exc.strerror}") from None
    async with aiohttp.ClientSession() as session:
        sender = reporter.Reporter(session, store)
        delivery = asyncio.create_task(sender.run(), name="report-delivery")
        delivery.add_done_callback(_delivery_finished)
        agent = lifecycle.Agent(settings, store, sender, session)
        runner = web.AppRunner(api.make_app(agent, settings.enrollment_key), access_log=None)
        try:
            await agent.restore()
            await runner.setup()
            site = web.TCPSite(runner, settings.listen_ip, settings.listen_port)
            try:
                await site.start()
            except OSError as exc:
                raise errors.ConfigError(
                    f"cannot listen on {settings.listen_ip}:{settings.listen_port}: {exc.strerror}"
                ) from None
            host, port = runner.addresses[0][:2]
            shown = f"[{host}]" if ":" in host else host
            print(f"zlh-agent listening on http://{shown}:{port}", flush=True)
            await _until_signalled()
            log.info("shutting down")
        finally:
            await runner.cleanup()
            await agent.close()
            if not await sender.drain(DRAIN_TIMEOUT):
                log.warning("stopping with undelivered reports")
            delivery.cancel()
            await asyncio.wait([delivery])


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)


def _delivery_finished(task: asyncio.Task[None]) -> None:
    # The delivery loop only ends when shutdown cancels it; anything else means reports stopped flowing.
    if task.cancelled():
        log.debug("report delivery cancelled")
    elif task.exception() is not None:
        log.error("report delivery failed", exc_info=task.exception())
    else:
        log.error("report delivery finished unexpectedly")
