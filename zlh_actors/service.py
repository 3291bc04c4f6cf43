"""One replica of the service, assembled from its parts (the composition root's body).

database (migrated) -> pool -> Proxmox driver -> agent client -> provisioning effects -> replica
(leases, inbox, actors) -> HTTP app. `running()` starts them in that order and stops them in reverse:
on the way out the replica hands its shards off (draining its actors) before the HTTP server and
the connections go, so a rolling restart loses no command.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import logging
import uuid
from collections.abc import AsyncIterator

from aiohttp import web

from storage import database, migrate
from zlh_actors import config, errors, logs, metrics
from zlh_actors.api import app as api_app
from zlh_actors.api import auth, stream
from zlh_actors.proxmox import driver as pve_driver
from zlh_actors.proxmox import instrumented
from zlh_actors.proxmox import settings as pve_settings
from zlh_actors.reconciler import loop as reconciler_loop
from zlh_actors.runtime import announcer, ownership, replica
from zlh_actors.servers import actor, agent_client, create, provisioning
from zlh_actors.servers import replica as server_replica

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Service:
    settings: config.Settings
    replica: replica.Replica[actor.Wake]
    url: str
    reconciler: reconciler_loop.Reconciler


def proxmox_settings(settings: config.Settings) -> pve_settings.ProxmoxSettings:
    if not (settings.pve_host and settings.pve_token_name and settings.pve_token_value):
        raise errors.ConfigError("ZLH_PVE_HOST, ZLH_PVE_TOKEN_NAME and ZLH_PVE_TOKEN_VALUE must all be set")
    return pve_settings.ProxmoxSettings(
        host=settings.pve_host,
        user=settings.pve_user,
        token_name=settings.pve_token_name,
        token_value=settings.pve_token_value,
        port=settings.pve_port,
        verify_tls=settings.pve_verify_tls,
        ca_file=None if settings.pve_ca_file is None else str(settings.pve_ca_file),
        lock_wait=settings.pve_lock_wait,
    )


def enrollment_key(settings: config.Settings) -> bytes:
    if settings.enrollment_key_file is None:
        raise errors.ConfigError("ZLH_ENROLLMENT_KEY_FILE must name the file holding the agents' HMAC key")
    try:
        key = settings.enrollment_key_file.read_bytes().strip()
    except OSError as exc:
        raise errors.ConfigError(f"cannot read ZLH_ENROLLMENT_KEY_FILE: {exc.strerror}") from None
    if len(key) < 32:
        raise errors.ConfigError("the enrollment key must be at least 32 bytes")
    return key


def lease_settings(settings: config.Settings) -> ownership.LeaseSettings:
    return ownership.LeaseSettings(
        shard_count=settings.shards,
        heartbeat_interval=settings.heartbeat_interval,
        lease_timeout=settings.lease_timeout,
    )


def observe(counters: metrics.Metrics, built: replica.Replica[actor.Wake]) -> None:
    """Gauges read from the replica at scrape time."""
    counters.gauge(
        "zlh_fenced_writes_rejected_total",
        "writes refused by the shard epoch check (this replica had lost the shard)",
        lambda: [((), built.fence.rejected)],
    )
    counters.gauge("zlh_owned_shards", "shards this replica owns", lambda: [((), len(built.leases))])
    counters.gauge("zlh_resident_actors", "server actors in memory", lambda: [((), len(built.registry))])
    counters.gauge(
        "zlh_mailbox_depth",
        "messages waiting in server actors' mailboxes",
        lambda: [((), sum(a.depth() for k in built.registry.resident() if (a := built.registry.get(k))))],
    )
    counters.gauge(
        "zlh_lease_evictions_total",
        "stale replicas this replica evicted",
        lambda: [((), built.leasing.evictions)],
    )


def _drift_by_kind(reconciler: reconciler_loop.Reconciler) -> list[tuple[metrics.Labels, float]]:
    latest = reconciler.latest()
    if latest is None:
        return []
    return [((("kind", kind),), float(count)) for kind, count in sorted(latest.by_kind().items())]


@contextlib.asynccontextmanager
async def running(settings: config.Settings, url: str) -> AsyncIterator[Service]:
    """The replica, serving HTTP on settings.host:settings.port, until the block exits."""
    replica_id = uuid.uuid4()
    conn = await database.connect(url, timeout=settings.db_connect_timeout)
    try:
        for migration in await migrate.migrate(conn):
            log.info("applied migration %04d_%s", migration.version, migration.name)
    finally:
        await conn.close()
    leases = lease_settings(settings)
    key = enrollment_key(settings)
    async with contextlib.AsyncExitStack() as stack:
        stack.enter_context(logs.replica(replica_id))
        pool = await database.create_pool(
            url,
            max_size=settings.db_pool_size,
            timeout=settings.db_connect_timeout,
            server_settings=ownership.session_settings(f"{ownership.POOL_APP}{replica_id}", leases),
        )
        stack.push_async_callback(pool.close)
        announcements = announcer.Announcer(pool, replica_id)
        stack.push_async_callback(announcements.close)
        counters = metrics.Metrics()
        real_driver = pve_driver.ProxmoxerDriver(proxmox_settings(settings))
        stack.push_async_callback(real_driver.close)
        driver = instrumented.Instrumented(real_driver, counters)
        agents = agent_client.AgentClient(key, settings.agent_port)
        stack.push_async_callback(agents.close)
        callback_base = settings.callback_url or f"http://{settings.host}:{settings.port}"
        work = provisioning.Provisioning(pool, settings, driver, agents, callback_base=callback_base)
        built = server_replica.build(
            url=url,
            pool=pool,
            work=work,
            settings=leases,
            http_port=settings.port,
            # Peers reach this replica's admin view at host:port; a wildcard address is not reachable.
            http_host=None if settings.host in ("0.0.0.0", "::") else settings.host,
            replica_id=replica_id,
            counters=counters,
            announce=announcements.announce,
        )
        observe(counters, built)
        reconciler = reconciler_loop.Reconciler(
            pool,
            driver,
            agents,
            built,
            reconciler_loop.Settings(
                interval=settings.reconcile_interval,
                orphan_grace=settings.orphan_grace,
                vmid_range=settings.vmid_range,
                command_retention=datetime.timedelta(seconds=settings.command_retention),
            ),
        )
        counters.gauge(
            "zlh_reconcile_drift",
            "drifts found by this replica's latest reconciliation pass, by kind",
            lambda: _drift_by_kind(reconciler),
        )
        app = api_app.make_app(
            api_app.Deps(
                pool=pool,
                settings=settings,
                placement=create.Placement(driver, starts=built.inbox),
                replica=built,
                metrics=counters,
                reconciler=reconciler,
                stream=stream.Hub(
                    url,
                    pool,
                    server_settings=ownership.session_settings(f"{stream.LISTEN_APP}{replica_id}", leases),
                    announcements=announcements,
                ),
                tokens=auth.Tokens(
                    url, server_settings=ownership.session_settings(f"{auth.LISTEN_APP}{replica_id}", leases)
                ),
            )
        )
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        stack.push_async_callback(runner.cleanup)
        site = web.TCPSite(runner, settings.host, settings.port)
        try:
            await site.start()
        except OSError as exc:
            raise errors.ConfigError(
                f"cannot listen on {settings.host}:{settings.port}: {exc.strerror}"
            ) from None
        await built.start()
        stack.push_async_callback(built.stop)
        reconciler.start()
        stack.push_async_callback(reconciler.stop)
        log.info("replica %s serving on http://%s:%s", replica_id, settings.host, settings.port)
        yield Service(settings=settings, replica=built, url=url, reconciler=reconciler)
