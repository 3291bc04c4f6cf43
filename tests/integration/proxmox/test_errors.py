"""Each class of PVE failure reaches the caller as the right typed error, retried when it should be."""

from __future__ import annotations

import time

import pytest

from tests.integration.proxmox import fakecluster
from zlh_actors import errors as zlh_errors
from zlh_actors.proxmox import driver, errors, protocol


async def _running(pve: driver.ProxmoxerDriver, index: int) -> protocol.ContainerSpec:
    spec = fakecluster.spec(index)
    await pve.ensure_container(spec)
    await pve.start(spec.ref)
    return spec


async def test_task_error_is_task_failed_with_the_log(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(40)
    await pve.ensure_container(spec)
    path = f"/nodes/pve2/lxc/{spec.vmid}/status/start"
    cluster.call(lambda: cluster.pve.fail("POST", path, error="missing_rootfs_configuration"))

    with pytest.raises(errors.TaskFailed) as caught:
        await pve.start(spec.ref)

    details = caught.value.details
    assert details["exitstatus"] == "missing 'rootfs' configuration"
    assert details["log"][-1] == "TASK ERROR: missing 'rootfs' configuration"
    assert details["upid"].startswith("UPID:pve2:")
    assert isinstance(caught.value, zlh_errors.Permanent)
    assert len(cluster.requests("POST", "/status/start")) == 1, "a failed task is not retried"


async def test_held_config_lock_is_retried_until_released(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(41)
    await pve.ensure_container(spec)
    # Held for 30 PVE seconds; PVE's own wait for the file lock is 10, so the first update fails
    # with "can't lock file ... got timeout".
    cluster.run(cluster.pve.hold_config_lock(spec.vmid, 30))

    await pve.ensure_container(fakecluster.spec(41, memory_mb=3072))

    config = cluster.config(spec.vmid)
    assert config is not None
    assert int(config["memory"]) == 3072
    assert len(cluster.requests("PUT", f"/lxc/{spec.vmid}/config")) >= 3, "retried after a lock timeout"


async def test_config_lock_held_too_long_is_lock_timeout(cluster: fakecluster.FakeCluster) -> None:
    spec = fakecluster.spec(42)
    pve = driver.ProxmoxerDriver(cluster.settings(lock_wait=0.5))
    try:
        await pve.ensure_container(spec)
        cluster.run(cluster.pve.hold_config_lock(spec.vmid, None))
        with pytest.raises(errors.LockTimeout) as caught:
            await pve.ensure_container(fakecluster.spec(42, cores=8))
        assert caught.value.details["lock_file"] == f"/run/lock/lxc/pve-config-{spec.vmid}.lock"
        assert isinstance(caught.value, zlh_errors.Transient)

        cluster.call(lambda: cluster.pve.release_config_lock(spec.vmid))
        await pve.ensure_container(fakecluster.spec(42, cores=8))
        assert int((cluster.config(spec.vmid) or {})["cores"]) == 8
    finally:
        await pve.close()


async def test_start_waits_out_a_backup_lock(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(43)
    await pve.ensure_container(spec)
    cluster.run(cluster.pve.backup(spec.vmid, secs=30))
    assert (cluster.config(spec.vmid) or {}).get("lock") == "backup"

    await pve.start(spec.ref)

    assert cluster.where(spec.vmid) == ("pve2", "running")


async def test_stale_lock_is_locked_with_its_kind_until_unlocked(cluster: fakecluster.FakeCluster) -> None:
    spec = fakecluster.spec(44)
    pve = driver.ProxmoxerDriver(cluster.settings(lock_wait=0.3))
    try:
        await pve.ensure_container(spec)
        cluster.call(lambda: cluster.pve.snapshot_lock(spec.vmid, "snapshot"))  # a crashed snapshot
        started = time.monotonic()
        with pytest.raises(errors.Locked) as caught:
            await pve.start(spec.ref)
        assert caught.value.details["lock"] == "snapshot"
        assert 0.2 < time.monotonic() - started < 3, "retried for lock_wait, then gave up"

        cluster.call(lambda: cluster.pve.unlock(spec.vmid))  # the operator's `pct unlock`
        await pve.start(spec.ref)
        assert cluster.where(spec.vmid) == ("pve2", "running")
    finally:
        await pve.close()


async def test_flaky_network_is_survived(cluster: fakecluster.FakeCluster) -> None:
    pve = driver.ProxmoxerDriver(cluster.settings(operation_attempts=10, read_attempts=5))
    cluster.call(lambda: cluster.pve.flaky_network(drop_rate=0.2, seed=42))
    try:
        spec = fakecluster.spec(45)
        await pve.ensure_container(spec)
        await pve.ensure_container(spec)
        await pve.start(spec.ref)
        await pve.shutdown(spec.ref, timeout=5)
        await pve.destroy(spec.ref)
        assert cluster.servers() == {}
        assert len(cluster.requests("POST", "/clone")) >= 1
    finally:
        await pve.close()


async def test_dead_network_is_proxmox_unavailable(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    cluster.call(lambda: cluster.pve.flaky_network(drop_rate=1.0))
    with pytest.raises(errors.ProxmoxUnavailable) as caught:
        await pve.ensure_container(fakecluster.spec(46))
    assert caught.value.details["cause"] == "connection"
    assert isinstance(caught.value, zlh_errors.Transient)
    assert cluster.servers() == {}


async def test_unanswered_request_is_a_read_timeout(cluster: fakecluster.FakeCluster) -> None:
    # Every answer comes after 1 s of real time; the driver waits 0.2 s.
    cluster.call(lambda: cluster.pve.flaky_network(hang_rate=1.0, hang_secs=100))
    pve = driver.ProxmoxerDriver(cluster.settings(read_timeout=0.2, read_attempts=1, operation_attempts=1))
    try:
        with pytest.raises(errors.ProxmoxUnavailable) as caught:
            await pve.list_owned()
        assert caught.value.details["cause"] == "read-timeout"
    finally:
        await pve.close()


async def test_offline_node_is_node_unreachable(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = await _running(pve, 47)
    cluster.call(lambda: cluster.pve.set_node_offline("pve2"))

    with pytest.raises(errors.NodeUnreachable) as caught:
        await pve.status(spec.ref)
    assert caught.value.details["status"] == 595
    with pytest.raises(errors.NodeUnreachable):
        await pve.ensure_container(fakecluster.spec(48))
    [owned] = await pve.list_owned()
    assert owned.status is protocol.PowerState.UNKNOWN

    cluster.call(lambda: cluster.pve.set_node_offline("pve2", offline=False))
    assert (await pve.status(spec.ref)).power is protocol.PowerState.RUNNING


async def test_wrong_token_is_authentication_failed_without_retry(cluster: fakecluster.FakeCluster) -> None:
    pve = driver.ProxmoxerDriver(cluster.settings(token_value="wrong"))
    try:
        with pytest.raises(errors.AuthenticationFailed) as caught:
            await pve.list_owned()
        assert caught.value.details["status"] == 401
        assert isinstance(caught.value, zlh_errors.Permanent)
        assert len(cluster.requests()) == 1
    finally:
        await pve.close()


async def test_missing_privilege_is_permission_denied(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(49)
    await pve.ensure_container(spec)
    cluster.call(lambda: cluster.pve.apitokens.__setitem__("viewer@pve!ro", "viewer-secret"))
    cluster.call(lambda: cluster.pve.grant("viewer@pve", "/", "VM.Audit"))
    viewer = driver.ProxmoxerDriver(
        cluster.settings(user="viewer@pve", token_name="ro", token_value="viewer-secret")
    )
    try:
        with pytest.raises(errors.PermissionDenied) as caught:
            await viewer.start(spec.ref)
        assert "VM.PowerMgmt" in caught.value.details["pve_message"]
        assert cluster.where(spec.vmid) == ("pve2", "stopped")
    finally:
        await viewer.close()


async def test_invalid_parameter_is_bad_parameters_per_field(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    with pytest.raises(errors.BadParameters) as caught:
        await pve.ensure_container(fakecluster.spec(50, name="not a hostname!"))
    assert set(caught.value.details["errors"]) == {"hostname"}
    assert caught.value.details["status"] == 400
    assert cluster.servers() == {}


async def test_unverifiable_certificate_is_tls_verification_failed(cluster: fakecluster.FakeCluster) -> None:
    # Verification on, against the system store, which does not know the fake's certificate.
    pve = driver.ProxmoxerDriver(cluster.settings(ca_file=None))
    try:
        with pytest.raises(errors.TlsVerificationFailed):
            await pve.list_owned()
        assert cluster.requests() == []
    finally:
        await pve.close()


async def test_server_errors_on_reads_are_retried_then_unavailable(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    cluster.call(lambda: cluster.pve.fail("GET", "/cluster/resources", 503, "Service Unavailable", times=2))
    assert await pve.list_owned() == []
    assert len(cluster.requests("GET", "/cluster/resources")) == 3

    cluster.call(lambda: cluster.pve.fail("GET", "/cluster/resources", 502, "Bad Gateway", html=True))
    with pytest.raises(errors.ProxmoxUnavailable) as caught:
        await pve.list_owned()
    assert caught.value.details["status"] == 502


async def test_lost_quorum_is_no_quorum(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    cluster.call(cluster.pve.lose_quorum)
    with pytest.raises(errors.NoQuorum):
        await pve.ensure_container(fakecluster.spec(51))
    cluster.call(cluster.pve.regain_quorum)
    assert await pve.ensure_container(fakecluster.spec(51)) is protocol.EnsureOutcome.CREATED


async def test_booleans_are_sent_as_0_and_1(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = await _running(pve, 52)
    await pve.stop(spec.ref)
    bodies = [body for method, _, body in cluster.requests() if method != "GET"]
    [(_, _, clone)] = cluster.requests("POST", "/clone")
    assert b"full=1" in clone
    [(_, _, stop)] = cluster.requests("POST", "/status/stop")
    assert b"overrule-shutdown=1" in stop
    assert not [body for body in bodies if b"=True" in body or b"=False" in body]


async def test_lock_error_inside_a_task_is_retried(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(53)
    await pve.ensure_container(spec)
    path = f"/nodes/pve2/lxc/{spec.vmid}/status/start"
    # The first start task ends with "TASK ERROR: CT is locked (backup)": Locked, not TaskFailed.
    cluster.call(lambda: cluster.pve.fail("POST", path, error="locked", times=1))

    await pve.start(spec.ref)

    assert len(cluster.requests("POST", "/status/start")) == 2
    assert cluster.where(spec.vmid) == ("pve2", "running")
