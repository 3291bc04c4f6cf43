"""zlh-actors service: the composition root.

config -> database (given, or a private local one) -> Proxmox (given, or the lab in-process) ->
one replica (`zlh_actors.service`) serving HTTP, until SIGINT or SIGTERM. Bad configuration and an
unreachable database end the process with one line on stderr and exit status 2 (configuration) or 1
(anything else), never a traceback.

Without `ZLH_PVE_HOST` the lab starts in-process (`zlh_actors.lab`: a fake Proxmox, a real agent in
every running container on a loopback IP, a file server for mods and launchers), its launchers are
pinned, and a development admin token is printed: a newcomer sees servers go from requested to
running with nothing else installed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import pathlib
import signal
import sys
import urllib.parse
from collections.abc import AsyncIterator

from storage import database, migrate, tokens
from zlh_actors import config, errors, gcpolicy, localdb, logs, operator_cli, service

log = logging.getLogger("zlh_actors.server")

DEV_TENANT = "dev"


def redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urllib.parse.urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urllib.parse.urlunsplit(parts._replace(netloc=netloc))


@contextlib.asynccontextmanager
async def database_url(settings: config.Settings) -> AsyncIterator[str]:
    """The configured database, or a private one under the data directory for as long as needed."""
    async with contextlib.AsyncExitStack() as stack:
        url = settings.database_url
        if url is None:
            local = await asyncio.to_thread(localdb.ensure_running, settings.data_dir / "pg")
            if local.started_here:
                stack.push_async_callback(asyncio.to_thread, localdb.stop, local)
            url = await localdb.ensure_database(local)
            print(f"DATABASE_URL unset: using the private PostgreSQL in {local.data_dir}", flush=True)
        print(f"database: {redact(url)}", flush=True)
        try:
            conn = await database.connect(url, timeout=settings.db_connect_timeout)
        except errors.StorageUnavailable as exc:
            raise errors.ConfigError(f"cannot reach the database at {redact(url)}: {exc.message}") from None
        await conn.close()
        yield url


@contextlib.asynccontextmanager
async def world(settings: config.Settings, url: str) -> AsyncIterator[config.Settings]:
    """Settings that reach a Proxmox: the configured one, or a lab started here."""
    if settings.pve_host is not None:
        yield settings
        return
    from zlh_actors.lab import settings as lab_settings  # the lab (and fakepve) only when asked for
    from zlh_actors.lab import world as lab_world

    # The fake Proxmox logs every request it serves; the service's own log is what a reader wants.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    async with lab_world.Lab(settings.data_dir / "lab", warmup=settings.lab_warmup) as lab:
        found = lab.settings
        print(f"ZLH_PVE_HOST unset: running the lab in-process (settings in {lab.env_file})", flush=True)
        await _pin_lab_launchers(url, lab.directory / lab_settings.LAUNCHERS_FILE)
        yield lab_settings.applied(found, settings)


async def _pin_lab_launchers(url: str, launchers_file: os.PathLike[str]) -> None:
    conn = await database.connect(url)
    try:
        await migrate.migrate(conn)
        async with conn.transaction():
            pins = json.loads(await asyncio.to_thread(pathlib.Path(launchers_file).read_text))
            await operator_cli.pin_all(conn, pins)
    finally:
        await conn.close()


async def _dev_token(url: str) -> str:
    conn = await database.connect(url)
    try:
        _, secret = await tokens.create(conn, DEV_TENANT, "admin", "development token printed at start-up")
    finally:
        await conn.close()
    return secret


async def serve(settings: config.Settings) -> None:
    # Signals first: a SIGTERM that arrives while the service is still starting must still end in
    # an orderly shutdown, not in the default handler's immediate exit.
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    async with (
        database_url(settings) as url,
        world(settings, url) as effective,
        service.running(effective, url),
    ):
        gcpolicy.freeze_startup()
        print(f"zlh-actors listening on http://{effective.host}:{effective.port}", flush=True)
        if settings.pve_host is None:
            print(f"development admin token (tenant {DEV_TENANT}): {await _dev_token(url)}", flush=True)
        await stop.wait()
        log.info("shutting down: handing shards off")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="server.py", description="Run a zlh-actors control plane replica.")
    parser.add_argument("--host", help="address to listen on (default: ZLH_HOST or 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port to listen on (default: ZLH_PORT or 8080)")
    args = parser.parse_args(argv)
    try:
        settings = config.load(os.environ, host=args.host, port=args.port)
    except errors.ConfigError as exc:
        print(f"zlh-actors: configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_format)
    gcpolicy.configure()
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
