"""Guarded writes: a replica that lost a server sends nothing more to Proxmox for it."""

from __future__ import annotations

import pytest

from tests.integration.proxmox import fakecluster
from zlh_actors import errors as zlh_errors
from zlh_actors.proxmox import client, driver


async def test_a_guarded_write_checks_before_each_try_and_sends_no_retry_once_the_check_fails(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(44)
    await pve.ensure_container(spec)
    cluster.run(cluster.pve.hold_config_lock(spec.vmid, None))  # held until released
    updates = f"/lxc/{spec.vmid}/config"
    before = len(cluster.requests("PUT", updates))
    checks = 0

    async def still_owner() -> None:
        nonlocal checks
        checks += 1
        if checks > 1:  # the server changed owner while the first try waited out the lock
            raise zlh_errors.OwnershipLost("another replica owns the server now")

    with client.guarded(still_owner), pytest.raises(zlh_errors.OwnershipLost):
        await pve.ensure_container(fakecluster.spec(44, cores=8))
    assert checks == 2
    assert len(cluster.requests("PUT", updates)) == before + 1, "the retry was not sent"

    cluster.call(lambda: cluster.pve.release_config_lock(spec.vmid))
    await pve.ensure_container(fakecluster.spec(44, cores=8))  # outside the block: not checked
    assert checks == 2
    assert int((cluster.config(spec.vmid) or {})["cores"]) == 8


async def test_a_write_whose_check_fails_is_never_sent(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    async def lost() -> None:
        raise zlh_errors.OwnershipLost("another replica owns the server now")

    spec = fakecluster.spec(45)
    with client.guarded(lost), pytest.raises(zlh_errors.OwnershipLost):
        await pve.ensure_container(spec)
    assert cluster.requests("POST", "/clone") == []
    assert cluster.config(spec.vmid) is None
