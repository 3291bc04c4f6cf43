"""The driver never changes a guest that does not carry this server's marks."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from tests.integration.proxmox import fakecluster
from zlh_actors.proxmox import driver, errors, marks, protocol


def _writes_to(cluster: fakecluster.FakeCluster, vmid: int) -> list[tuple[str, str, bytes]]:
    """Every write that names the VMID, in its path or (clone's newid) in its body."""
    return [
        (method, path, body)
        for method, path, body in cluster.requests()
        if method != "GET" and (f"/lxc/{vmid}" in path or f"newid={vmid}".encode() in body)
    ]


def _add_ct(cluster: fakecluster.FakeCluster, vmid: int, node: str, **config: Any) -> None:
    cluster.call(lambda: cluster.pve.add_ct(vmid, "stranger", node=node, config=config))


async def test_foreign_container_at_the_vmid_is_vmid_taken_and_untouched(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(30)
    _add_ct(cluster, spec.vmid, "pve2", description="customer database", tags="prod")
    before = cluster.config(spec.vmid)

    with pytest.raises(errors.VmidTaken) as caught:
        await pve.ensure_container(spec)

    assert caught.value.details["node"] == "pve2"
    assert caught.value.details["found_server_id"] is None
    assert cluster.config(spec.vmid) == before
    assert _writes_to(cluster, spec.vmid) == []


@pytest.mark.parametrize(
    ("server_id", "generation", "node"),
    [
        pytest.param(uuid.UUID(int=7), 1, "pve2", id="another-server"),
        pytest.param(None, 1, "pve2", id="older-generation"),
        pytest.param(uuid.UUID(int=7), 1, "pve1", id="another-server-on-another-node"),
    ],
)
async def test_another_owners_container_is_vmid_taken(
    cluster: fakecluster.FakeCluster,
    pve: driver.ProxmoxerDriver,
    server_id: uuid.UUID | None,
    generation: int,
    node: str,
) -> None:
    spec = fakecluster.spec(31, generation=2)
    theirs = marks.Marks(server_id or spec.server_id, generation)
    _add_ct(
        cluster, spec.vmid, node, description=marks.description(theirs, "x"), tags=marks.format_tags(theirs)
    )

    with pytest.raises(errors.VmidTaken) as caught:
        await pve.ensure_container(spec)

    assert caught.value.details["found_server_id"] == str(theirs.server_id)
    assert caught.value.details["found_generation"] == theirs.generation
    assert caught.value.details["node"] == node
    assert _writes_to(cluster, spec.vmid) == []


async def test_a_vm_at_the_vmid_is_vmid_taken(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(32)
    cluster.call(lambda: cluster.pve.add_vm(spec.vmid, "a-qemu-vm", node="pve1"))

    with pytest.raises(errors.VmidTaken) as caught:
        await pve.ensure_container(spec)

    assert caught.value.details["kind"] == "qemu"
    assert _writes_to(cluster, spec.vmid) == []


async def test_the_template_is_never_adopted(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(33, vmid=protocol.Vmid(9001))
    cluster.call(lambda: cluster.pve.add_ct(9001, "second-template", node="pve2", template=True))
    with pytest.raises(errors.VmidTaken):
        await pve.ensure_container(spec)


async def test_destroy_start_and_stop_refuse_a_container_that_is_not_ours(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(34)
    # Ours once: created, then destroyed, and the VMID reused at once by somebody else.
    await pve.ensure_container(spec)
    await pve.destroy(spec.ref)
    _add_ct(cluster, spec.vmid, "pve2", description="not yours")
    cluster.call(lambda: setattr(cluster.pve.ct(spec.vmid), "status", "running"))
    writes = _writes_to(cluster, spec.vmid)

    for operation in (pve.destroy, pve.start, pve.stop, pve.status):
        with pytest.raises(errors.NotOwned):
            await operation(spec.ref)
    with pytest.raises(errors.NotOwned):
        await pve.shutdown(spec.ref, timeout=1)

    assert cluster.where(spec.vmid) == ("pve2", "running")
    assert _writes_to(cluster, spec.vmid) == writes


async def test_list_owned_reports_tagged_containers_across_the_cluster(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    one, two = fakecluster.spec(35, node="pve1"), fakecluster.spec(36, node="pve2")
    for spec in (one, two):
        await pve.ensure_container(spec)
    await pve.start(two.ref)
    _add_ct(cluster, 1100, "pve1", tags="prod")
    _add_ct(cluster, 1101, "pve2", tags="zlh;hand-made")

    owned = await pve.list_owned()

    assert owned == [
        protocol.OwnedContainer("pve1", one.vmid, protocol.PowerState.STOPPED, one.server_id, 1, None),
        protocol.OwnedContainer("pve2", two.vmid, protocol.PowerState.RUNNING, two.server_id, 1, None),
        protocol.OwnedContainer("pve2", protocol.Vmid(1101), protocol.PowerState.STOPPED, None, None, None),
    ]


async def test_our_container_on_another_node_is_misplaced(
    cluster: fakecluster.FakeCluster, pve: driver.ProxmoxerDriver
) -> None:
    spec = fakecluster.spec(37, node="pve2")
    ours = fakecluster.owner(spec)
    _add_ct(cluster, spec.vmid, "pve1", description=marks.description(ours, spec.name))

    with pytest.raises(errors.Misplaced) as caught:
        await pve.ensure_container(spec)

    assert (caught.value.details["expected_node"], caught.value.details["node"]) == ("pve2", "pve1")
    assert _writes_to(cluster, spec.vmid) == []
    # Power operations follow the container to where it is: it is ours wherever it lives.
    await pve.start(spec.ref)
    assert cluster.where(spec.vmid) == ("pve1", "running")
