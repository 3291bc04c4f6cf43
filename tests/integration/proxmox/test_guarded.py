"""Guarded writes: a replica that lost a server's lease sends nothing more to Proxmox for it (`guard`)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import ipaddress
import threading
from collections.abc import AsyncIterator

import pytest

from storage import database, servers
from tests.integration.proxmox import fakecluster
from zlh_actors import config, guard
from zlh_actors import errors as zlh_errors
from zlh_actors.proxmox import client, driver
from zlh_actors.servers import provisioning


def lost() -> None:
    raise zlh_errors.OwnershipLost("another replica owns the server now")


async def test_a_guarded_write_checks_before_each_try_and_sends_no_retry_once_the_check_fails(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(44)
    await pve.ensure_container(spec)
    cluster.run(cluster.pve.hold_config_lock(spec.vmid, None))  # held until released
    updates = f"/lxc/{spec.vmid}/config"
    before = len(cluster.requests("PUT", updates))
    checks = 0

    def still_owner() -> None:
        nonlocal checks
        checks += 1
        if checks > 1:  # the replica froze while the first try waited out the lock
            lost()

    with guard.guarded(still_owner), pytest.raises(zlh_errors.OwnershipLost):
        await pve.ensure_container(fakecluster.spec(44, cores=8))
    assert checks == 2
    assert len(cluster.requests("PUT", updates)) == before + 1, "the retry was sent"

    cluster.call(lambda: cluster.pve.release_config_lock(spec.vmid))
    await pve.ensure_container(fakecluster.spec(44, cores=8))  # outside the block: not checked
    assert checks == 2
    assert int((cluster.config(spec.vmid) or {})["cores"]) == 8


async def test_a_write_whose_check_fails_is_never_sent(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(45)
    with guard.guarded(lost), pytest.raises(zlh_errors.OwnershipLost):
        await pve.ensure_container(spec)
    assert cluster.requests("POST", "/clone") == []
    assert cluster.config(spec.vmid) is None


async def test_a_write_that_waited_for_a_worker_thread_is_checked_when_it_is_sent(
    cluster: fakecluster.FakeCluster,
) -> None:
    # The lease check runs on the thread that sends the request: a clone queued behind busy
    # threads while its replica still held the lease, and sent after it lost it, is refused.
    pve = client.Client(cluster.settings(pool_size=1))
    gate = threading.Event()
    held = True

    def check() -> None:
        if not held:
            lost()

    try:
        busy = pve._executor.submit(gate.wait)  # the only worker thread is taken until the gate opens
        with guard.guarded(check):
            clone = asyncio.ensure_future(
                pve.post(f"nodes/{fakecluster.NODES[0]}/lxc/{fakecluster.TEMPLATE}/clone", newid=47)
            )
        await fakecluster.eventually(lambda: pve._executor._work_queue.qsize() == 1)  # queued
        held = False
        gate.set()
        with pytest.raises(zlh_errors.OwnershipLost):
            await clone
        assert busy.result(5) is True
        assert cluster.requests("POST", "/clone") == []
        assert cluster.config(47) is None
    finally:
        gate.set()
        await pve.close()


class LostLease:
    """An actor's `Writes` once its replica no longer holds the server's lease."""

    def __init__(self) -> None:
        self.checks = 0

    def ensure_lease_held(self) -> None:
        self.checks += 1
        lost()

    @contextlib.asynccontextmanager
    async def transaction(self) -> AsyncIterator[database.Conn]:
        raise AssertionError("the step wrote to the database without its lease")
        yield  # pragma: no cover (an async generator needs a yield)


async def test_a_step_sends_no_proxmox_write_once_its_lease_is_lost(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(46)
    await pve.ensure_container(spec)
    await pve.start(spec.ref)
    now = datetime.datetime.now(datetime.UTC)
    server = servers.Server(
        id=servers.ServerId(spec.server_id),
        tenant="acme",
        name=spec.name,
        spec={},
        state="deleting.stopping_container",
        desired_state="deleted",
        node=spec.node,
        vmid=spec.vmid,
        ip=ipaddress.IPv4Address("10.20.46.10"),
        game_port=25565,
        generation=spec.generation,
        version=7,
        last_error=None,
        created_at=now,
        updated_at=now,
        deleted_at=None,
    )
    work = provisioning.Provisioning(
        None,  # type: ignore[arg-type]  # the step reads nothing from the database
        config.Settings(),
        pve,
        None,  # type: ignore[arg-type]  # nor asks the agent
        callback_base="http://127.0.0.1:1",
    )
    writes = LostLease()
    with pytest.raises(zlh_errors.OwnershipLost):
        await work.perform(server, writes)
    assert writes.checks == 1
    assert cluster.requests("POST", f"/lxc/{spec.vmid}/status/shutdown") == []
    assert cluster.requests("POST", f"/lxc/{spec.vmid}/status/stop") == []
    assert (cluster.where(spec.vmid) or ("", ""))[1] == "running"
