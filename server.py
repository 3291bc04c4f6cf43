"""zlh-actors service: the composition root.

config -> database (given, or a private local one) -> migrations -> pool -> HTTP app, then serve
until SIGINT or SIGTERM. Bad configuration and an unreachable database end the process with one
line on stderr and exit status 2 (configuration) or 1 (anything else), never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import sys
import urllib.parse

from aiohttp import web

from storage import database, migrate
from zlh_actors import config, errors, localdb
from zlh_actors.api import app as api_app

log = logging.getLogger("zlh_actors.server")


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


async def serve(settings: config.Settings) -> None:
    if settings.database_url is not None:
        await _serve(settings, settings.database_url)
        return
    local = await asyncio.to_thread(localdb.ensure_running, settings.data_dir / "pg")
    try:
        url = await localdb.ensure_database(local)
        print(f"DATABASE_URL unset: using the private PostgreSQL in {local.data_dir}", flush=True)
        await _serve(settings, url)
    finally:
        if local.started_here:
            await asyncio.to_thread(localdb.stop, local)


async def _serve(settings: config.Settings, url: str) -> None:
    print(f"database: {redact(url)}", flush=True)
    try:
        conn = await database.connect(url, timeout=settings.db_connect_timeout)
    except errors.StorageUnavailable as exc:
        raise errors.ConfigError(f"cannot reach the database at {redact(url)}: {exc.message}") from None
    try:
        for migration in await migrate.migrate(conn):
            log.info("applied migration %04d_%s", migration.version, migration.name)
    finally:
        await conn.close()
    pool = await database.create_pool(
        url, max_size=settings.db_pool_size, timeout=settings.db_connect_timeout
    )
    runner = web.AppRunner(api_app.make_app(pool), access_log=None)
    try:
        await runner.setup()
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise errors.ConfigError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
            ) from None
        print(f"zlh-actors listening on http://{settings.host}:{settings.port}", flush=True)
        await _until_signalled()
        log.info("shutting down")
    finally:
        await runner.cleanup()
        await pool.close()


async def _until_signalled() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    await stop.wait()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="server.py", description="Run the zlh-actors control plane.")
    parser.add_argument("--host", help="address to listen on (default: ZLH_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: ZLH_PORT or 8080)")
    args = parser.parse_args(argv)
    try:
        settings = config.load(os.environ, host=args.host, port=args.port)
    except errors.ConfigError as exc:
        print(f"zlh-actors: configuration error: {exc}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        asyncio.run(serve(settings))
    except errors.ConfigError as exc:
        print(f"zlh-actors: configuration error: {exc}", file=sys.stderr)
        return 2
    except errors.ZlhError as exc:
        print(f"zlh-actors: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
