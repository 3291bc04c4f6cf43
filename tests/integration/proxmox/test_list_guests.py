"""`list_guests`: every guest of the cluster in one read, so the reconciler can find strangers."""

from __future__ import annotations

from tests.integration.proxmox import fakecluster
from zlh_actors.proxmox import driver, protocol

PowerState = protocol.PowerState


async def test_list_guests_reports_ours_strangers_vms_and_templates(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    ours = fakecluster.spec(40, node="pve2", generation=3)
    await pve.ensure_container(ours)
    await pve.start(ours.ref)
    cluster.call(lambda: cluster.pve.add_ct(1200, "stranger", node="pve1", config={"tags": "prod"}))
    cluster.call(lambda: cluster.pve.add_ct(1201, "hand-made", node="pve2", config={"tags": "zlh;other"}))
    cluster.call(lambda: cluster.pve.add_vm(1202, "a-vm", node="pve1", status="running"))
    requests_before = len(cluster.requests())

    guests = await pve.list_guests()

    assert guests == [
        protocol.GuestSummary("pve2", ours.vmid, "lxc", PowerState.RUNNING, False, True, ours.server_id, 3),
        protocol.GuestSummary(
            "pve1", protocol.Vmid(1200), "lxc", PowerState.STOPPED, False, False, None, None
        ),
        protocol.GuestSummary(
            "pve2", protocol.Vmid(1201), "lxc", PowerState.STOPPED, False, True, None, None
        ),
        protocol.GuestSummary(
            "pve1", protocol.Vmid(1202), "qemu", PowerState.RUNNING, False, False, None, None
        ),
        protocol.GuestSummary(
            "pve1", fakecluster.TEMPLATE, "lxc", PowerState.STOPPED, True, False, None, None
        ),
    ]
    # One read, nothing written.
    made = cluster.requests()[requests_before:]
    assert [(method, path) for method, path, _ in made] == [("GET", "/api2/json/cluster/resources")]
