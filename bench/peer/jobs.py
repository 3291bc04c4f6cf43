"""The peer's provisioning: what its BullMQ worker runs for a `create` and a `delete` job.

This is the design zlh-actors replaces, written as a careful engineer would write it on BullMQ, not
as a strawman. BullMQ runs a job at least once (a job whose worker died or stalled runs again), so
each job follows the docs' idempotent-jobs advice as far as a row and a VMID allow:

create (job id `create-<idempotency key>`):
1. load the row; a server already running, deleting or deleted is left alone (a re-run is a no-op);
2. if the row names a VMID and Proxmox has a container there, resume with it (an earlier run
   cloned it); otherwise take a VMID from `/cluster/nextid`, clone the Fabric template to it (the
   owner marks in the description, as ours does, so the checker can attribute the container) and
   record node and VMID in the row as soon as Proxmox accepted the clone;
3. set net0 (a static IP derived from the VMID: `subnet + vmid`, as such platforms do) and the
   `zlh` tags, start the container unless it already runs;
4. ready: the container's agent accepts a TCP connection on its IP, then a fixed wait for the game to
   boot (`settle`, the lab's warm-up). The old platform declared a server ready on DNS timing; this
   is a stricter stand-in. Ours instead waits for the agent's `ready` report and a Server List Ping,
   after installing the launcher and mods: it does more per server;
5. state `running`.

delete (job id `delete-<server id>`): state `deleting`, stop and destroy the row's VMID (a container
already stopped or gone counts as done), state `deleted`.

Calls go through `zlh_actors.proxmox.client.Client` (proxmoxer on a thread pool; writes retried while
PVE reports a held lock, as every proxmoxer user ends up writing: clones serialise on the template's
lock). Any other failure raises, and BullMQ's `attempts` and backoff retry the job.

What it does not do, like the platform it stands for: keep a VMID reservation (`/cluster/nextid`
reserves nothing, and PVE hands out the lowest free id again as soon as a container is destroyed),
check the owner marks before stopping or destroying the row's VMID, or fence a worker that lost its
job's lock. Those are the gaps the benchmark measures.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import logging
import time
import uuid
from typing import Any

import asyncpg

from bench.peer import records
from zlh_actors.proxmox import client as client_module
from zlh_actors.proxmox import errors, marks

log = logging.getLogger(__name__)

GENERATION = 1  # the peer never re-provisions a server under a new identity
TASK_POLL = 0.1
TASK_TIMEOUT = 120.0
READY_TIMEOUT = 60.0
CONNECT_TIMEOUT = 1.0


@dataclasses.dataclass(frozen=True)
class Context:
    """What a worker process gives its jobs.

    Attributes:
        pool: the peer's database.
        pve: the Proxmox client.
        template_vmid, template_node: the Fabric template and where it lives.
        nodes: the nodes to spread containers over.
        subnet: containers' addresses; a container's IP is `subnet[vmid]`.
        agent_port: the port every container's agent listens on.
        settle: seconds to wait after the agent answers, for the game to boot.
        lock_wait: seconds a write keeps retrying a held lock (the template's clone lock).
    """

    pool: asyncpg.Pool
    pve: client_module.Client
    template_vmid: int
    template_node: str
    nodes: tuple[str, ...]
    subnet: ipaddress.IPv4Network
    agent_port: int
    settle: float
    lock_wait: float

    def ip(self, vmid: int) -> str:
        return str(self.subnet.network_address + vmid)

    def node_for(self, vmid: int) -> str:
        return self.nodes[vmid % len(self.nodes)]

    def lock_deadline(self) -> float:
        return time.monotonic() + self.lock_wait


async def wait_task(ctx: Context, upid: str) -> None:
    """Poll the task until it stops; raise if it did not end OK."""
    node = upid.split(":")[1]
    deadline = time.monotonic() + TASK_TIMEOUT
    while True:
        status = await ctx.pve.get(f"nodes/{node}/tasks/{upid}/status")
        if status.get("status") == "stopped":
            exit_status = str(status.get("exitstatus", ""))
            if exit_status != "OK" and not exit_status.startswith("WARNINGS"):
                raise RuntimeError(f"task {upid} failed: {exit_status}")
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"task {upid} still running after {TASK_TIMEOUT}s")
        await asyncio.sleep(TASK_POLL)


async def _status(ctx: Context, node: str, vmid: int) -> str | None:
    """The container's power state, or None if Proxmox has no such container."""
    try:
        current = await ctx.pve.get(f"nodes/{node}/lxc/{vmid}/status/current")
    except errors.DoesNotExist:
        return None
    return str(current.get("status"))


async def _wait_listening(ip: str, port: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT
    while True:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(ip, port), CONNECT_TIMEOUT)
        except (OSError, TimeoutError):
            if time.monotonic() > deadline:
                raise TimeoutError(f"nothing listens on {ip}:{port} after {READY_TIMEOUT}s") from None
            await asyncio.sleep(0.1)
            continue
        writer.close()
        await writer.wait_closed()
        return


async def create(ctx: Context, data: dict[str, Any]) -> str:
    server_id = uuid.UUID(data["server_id"])
    row = await records.load(ctx.pool, server_id)
    if row is None or row.state in (records.RUNNING, records.DELETING, records.DELETED):
        return "nothing to do"
    owner = marks.Marks(server_id, GENERATION)
    node, vmid = row.node, row.vmid
    if node is None or vmid is None or await _status(ctx, node, vmid) is None:
        vmid = int(await ctx.pve.get("cluster/nextid"))
        node = ctx.node_for(vmid)
        log.info("create %s: cloning to %s on %s", server_id, vmid, node)
        upid = await ctx.pve.post(
            f"nodes/{ctx.template_node}/lxc/{ctx.template_vmid}/clone",
            lock_deadline=ctx.lock_deadline(),
            newid=vmid,
            hostname=row.name,
            description=marks.description(owner, row.name),
            full=True,
            target=node if node != ctx.template_node else None,
        )
        await records.record_container(ctx.pool, server_id, node, vmid)
        await wait_task(ctx, str(upid))
    else:
        log.info("create %s: resuming with %s on %s", server_id, vmid, node)
    ip = ctx.ip(vmid)
    await ctx.pve.put(
        f"nodes/{node}/lxc/{vmid}/config",
        lock_deadline=ctx.lock_deadline(),
        net0=f"name=eth0,bridge=vmbr0,ip={ip}/{ctx.subnet.prefixlen}",
        tags=marks.format_tags(owner),
    )
    if await _status(ctx, node, vmid) != "running":
        upid = await ctx.pve.post(f"nodes/{node}/lxc/{vmid}/status/start", lock_deadline=ctx.lock_deadline())
        await wait_task(ctx, str(upid))
    await _wait_listening(ip, ctx.agent_port)
    await asyncio.sleep(ctx.settle)
    await records.set_state(ctx.pool, server_id, records.RUNNING)
    log.info("create %s: running at %s", server_id, vmid)
    return f"running at {vmid}"


async def delete(ctx: Context, data: dict[str, Any]) -> str:
    server_id = uuid.UUID(data["server_id"])
    row = await records.load(ctx.pool, server_id)
    if row is None or row.state == records.DELETED:
        return "nothing to do"
    await records.set_state(ctx.pool, server_id, records.DELETING)
    if row.node is not None and row.vmid is not None:
        log.info("delete %s: stopping and destroying %s on %s", server_id, row.vmid, row.node)
        path = f"nodes/{row.node}/lxc/{row.vmid}"
        try:
            upid = await ctx.pve.post(f"{path}/status/stop", lock_deadline=ctx.lock_deadline())
            await wait_task(ctx, str(upid))
        except (errors.NotRunning, errors.DoesNotExist):
            pass
        try:
            upid = await ctx.pve.delete(path, lock_deadline=ctx.lock_deadline(), purge=True)
            await wait_task(ctx, str(upid))
        except errors.DoesNotExist:
            pass
    await records.set_state(ctx.pool, server_id, records.DELETED)
    log.info("delete %s: deleted", server_id)
    return "deleted"


HANDLERS = {"create": create, "delete": delete}
