"""Creating a server: one request -> one record, with everything allocated in the same transaction.

One transaction inserts the idempotency record, the server row, its VMID, its IP, its node and game
port, its first journal entry and its `create` command, and stores the answer under the key. Either
all of it exists or none of it does.

Concurrent requests with one key: the first claims the key; the others block on the key's primary
key until the first commits (or hit `lock_timeout` and try again), then read its stored answer and
replay it. A request whose transaction
fails (a taken name, an unpinned launcher) stores nothing, so retrying it re-runs the checks. A key
reused with a different request is refused (422); a key past its expiry is forgotten and reusable.

Allocation among concurrent creates is serialized by a transaction-scoped advisory lock taken only
for this short transaction, so two creates never pick the same free VMID, IP or port.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
import time
import uuid
from typing import Any

import asyncpg

from storage import allocations, commands, database, idempotency, launchers, queries, servers
from zlh_actors import config, errors
from zlh_actors.proxmox import protocol
from zlh_actors.servers import requests, views

log = logging.getLogger(__name__)

# The first journal entry of every server (from nothing to `requested`).
REQUEST_EVENT = "request"
_ATTEMPTS = 5


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int
    body: dict[str, Any]
    replayed: bool = False


class Placement:
    """Chooses a node by free memory among online nodes, with the answer cached for a moment so a
    burst of creates does not query Proxmox once per request."""

    def __init__(self, driver: protocol.ProxmoxDriver, *, ttl: float = 2.0) -> None:
        self._driver = driver
        self._ttl = ttl
        self._cached: tuple[float, list[protocol.NodeInfo]] | None = None

    async def nodes(self) -> list[protocol.NodeInfo]:
        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self._ttl:
            self._cached = (now, await self._driver.nodes())
        return self._cached[1]

    async def choose(self, conn: database.Conn, memory_mb: int, nodes: list[protocol.NodeInfo]) -> str:
        """The online node with the most free memory once our pending servers are counted.

        `nodes` is read from Proxmox *before* the create's transaction: a slow Proxmox must never
        hold the allocation lock or an open transaction."""
        pending = {
            row["node"]: row["memory_mb"] for row in await queries.fetch(conn, "pending_memory_by_node")
        }
        best: tuple[int, str] | None = None
        for node in nodes:
            if not node.online:
                continue
            free = node.free_memory_mb - int(pending.get(node.name, 0))
            if best is None or free > best[0]:
                best = (free, node.name)
        if best is None or best[0] < memory_mb:
            raise errors.CapacityExhausted("no online node has enough free memory", memory_mb=memory_mb)
        return best[1]


async def _replay(conn: database.Conn, tenant: str, key: str, fingerprint: bytes) -> Answer | None:
    """The answer for a key that is already taken, or None if the key is free (or expired and freed)."""
    record = await idempotency.get(conn, tenant, key)
    if record is None:
        return None
    if record.expires_at <= datetime.datetime.now(datetime.UTC):
        await queries.fetchval(conn, "forget_idempotency_key", tenant, key)
        return None
    if record.fingerprint != fingerprint:
        raise errors.IdempotencyMismatch("this Idempotency-Key was used with a different request", key=key)
    if not record.completed:
        raise errors.InProgress("a request with this Idempotency-Key is still in progress", key=key)
    assert record.response_status is not None
    return Answer(record.response_status, record.response_body, replayed=True)


async def create(
    pool: asyncpg.Pool,
    settings: config.Settings,
    placement: Placement,
    *,
    tenant: str,
    key: str,
    fingerprint: bytes,
    request: requests.CreateRequest,
) -> Answer:
    for attempt in range(1, _ATTEMPTS + 1):
        try:
            return await _create_once(pool, settings, placement, tenant, key, fingerprint, request)
        except errors.IdempotencyKeyTaken:
            continue  # another request with this key committed first: replay its answer
        except errors.CapacityExhausted:
            raise
        except errors.Transient:
            # A lock wait that hit lock_timeout (a burst of creates): nothing was written; try again.
            if attempt == _ATTEMPTS:
                raise
            await asyncio.sleep(0.05 * attempt)
    raise errors.InProgress("a request with this Idempotency-Key is still in progress", key=key)


async def _create_once(
    pool: asyncpg.Pool,
    settings: config.Settings,
    placement: Placement,
    tenant: str,
    key: str,
    fingerprint: bytes,
    request: requests.CreateRequest,
) -> Answer:
    expires = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=settings.idempotency_ttl)
    nodes = await placement.nodes()
    async with database.transaction(pool) as conn:
        replay = await _replay(conn, tenant, key, fingerprint)
        if replay is not None:
            return replay
        await idempotency.claim(conn, tenant, key, fingerprint, expires)
        launcher = await launchers.get(
            conn, request.minecraft_version, request.loader_version, request.installer_version
        )
        if launcher is None:
            raise errors.BadRequest(
                "no Fabric launcher is pinned for this Minecraft, loader and installer version",
                fields={
                    "fabric": "unpinned triple; an operator pins launchers with "
                    "`python -m zlh_actors launchers pin`"
                },
            )
        await allocations.lock(conn)
        node = await placement.choose(conn, request.memory_mb, nodes)
        server_id = servers.ServerId(uuid.uuid4())
        try:
            server = await servers.insert(
                conn,
                tenant=tenant,
                name=request.name,
                spec=request.spec(),
                state="requested",
                event=REQUEST_EVENT,
                server_id=server_id,
            )
        except errors.NameTaken:
            raise errors.NameTaken(
                f"a live server named {request.name!r} already exists", fields={"name": "taken"}
            ) from None
        low, high = settings.vmid_range
        vmid = await allocations.allocate_vmid(conn, server_id, low, high)
        gateway = [settings.ip_gateway] if settings.ip_gateway else []
        ip = await allocations.allocate_ip(conn, server_id, settings.ip_subnet, gateway)
        port = await allocations.allocate_port(conn, server_id, node, *settings.game_ports)
        server = await servers.set_placement(
            conn, server, node=node, vmid=vmid.vmid, ip=str(ip.ip), game_port=port.port, generation=1
        )
        command = await commands.enqueue(conn, server_id, "create")
        body = views.server(server)
        body["command"] = views.command(command)
        await idempotency.complete(conn, tenant, key, server_id, 202, body)
    log.info(
        "server %s (%s/%s) requested: vmid %s on %s, %s:%s",
        server_id,
        tenant,
        request.name,
        vmid.vmid,
        node,
        ip.ip,
        port.port,
    )
    return Answer(202, body)
