"""Reading the world: the guest at a VMID, where it lives, whose it is, its power state.

A guest is looked for where it should be first, the node the database allocated
(`GET /nodes/<node>/lxc/<vmid>/config`: the common case, one request). If PVE answers that the
config file does not exist there, `/cluster/resources`, which knows every guest of the cluster,
says where it is, if anywhere: a clone in progress lives on the template's node until its task
moves it to the target, and an operator may have migrated a container, so "not on the expected
node" is not "absent". A VMID held by a QEMU VM is found the same way, and is never ours.

Nothing here writes; the driver decides what to do with what was found.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from zlh_actors.proxmox import client as client_module
from zlh_actors.proxmox import errors, marks, protocol

PowerState = protocol.PowerState


@dataclasses.dataclass(frozen=True)
class Guest:
    """A guest found at a VMID.

    Attributes:
        vmid, node: where it is.
        kind: "lxc" or "qemu".
        template: whether it is a template.
        lock: its config lock, or None.
        config: its LXC config (empty when not read: a VM, or found only in the resource list).
        owner: the marks of its description, or None.
    """

    vmid: protocol.Vmid
    node: str
    kind: str
    template: bool
    lock: str | None
    config: Mapping[str, Any]
    owner: marks.Marks | None

    def owned_by(self, ref: protocol.ContainerRef) -> bool:
        return (
            self.kind == "lxc"
            and not self.template
            and self.owner == marks.Marks(ref.server_id, ref.generation)
        )

    def describe(self) -> dict[str, Any]:
        """Details for an error about this guest."""
        return {
            "vmid": self.vmid,
            "node": self.node,
            "kind": self.kind,
            "found_server_id": str(self.owner.server_id) if self.owner else None,
            "found_generation": self.owner.generation if self.owner else None,
        }

    def path(self, suffix: str = "") -> str:
        """The API path of the container, or of one of its sub-resources."""
        base = f"nodes/{self.node}/lxc/{self.vmid}"
        return f"{base}/{suffix}" if suffix else base


def flag(value: object) -> bool:
    """PVE's boolean, which arrives as 1/0 or as a string."""
    return str(value).lower() in ("1", "true")


def power(value: object) -> PowerState:
    """A status string of PVE as a PowerState (anything but running/stopped is UNKNOWN)."""
    text = str(value)
    return PowerState(text) if text in (PowerState.RUNNING, PowerState.STOPPED) else PowerState.UNKNOWN


async def resources(client: client_module.Client) -> list[dict[str, Any]]:
    """Every guest of the cluster, from `/cluster/resources`."""
    answer = await client.get("cluster/resources", type="vm")
    if not isinstance(answer, list):
        raise errors.ProxmoxUnavailable("cluster resources is not a list", cause="unexpected-response")
    return [entry for entry in answer if isinstance(entry, dict)]


async def locate(client: client_module.Client, vmid: protocol.Vmid) -> Guest | None:
    """The guest with this VMID anywhere in the cluster (without its config), or None."""
    for entry in await resources(client):
        if str(entry.get("vmid")) == str(vmid):
            return Guest(
                vmid=vmid,
                node=str(entry.get("node")),
                kind=str(entry.get("type")),
                template=flag(entry.get("template")),
                lock=entry.get("lock") or None,
                config={},
                owner=None,
            )
    return None


async def read_config(client: client_module.Client, vmid: protocol.Vmid, node: str) -> Guest:
    """The container at (node, vmid) with its config; `DoesNotExist` if it is not there."""
    answer = await client.get(f"nodes/{node}/lxc/{vmid}/config")
    if not isinstance(answer, dict):
        raise errors.ProxmoxUnavailable("container config is not an object", cause="unexpected-response")
    return Guest(
        vmid=vmid,
        node=node,
        kind="lxc",
        template=flag(answer.get("template")),
        lock=answer.get("lock") or None,
        config=answer,
        owner=marks.from_description(answer.get("description")),
    )


async def inspect(client: client_module.Client, vmid: protocol.Vmid, node: str) -> Guest | None:
    """The guest at the VMID with its config and marks, looked for at `node` first; None if none."""
    try:
        return await read_config(client, vmid, node)
    except errors.DoesNotExist:
        pass
    located = await locate(client, vmid)
    if located is None or located.kind != "lxc":
        return located
    try:
        return await read_config(client, vmid, located.node)
    except errors.DoesNotExist as exc:
        # It moved between the two reads (a clone reaching its target, a migration): read again.
        raise errors.ProxmoxUnavailable(
            f"guest {vmid} moved while being read", cause="moved", vmid=vmid
        ) from exc


async def power_of(client: client_module.Client, guest: Guest) -> PowerState:
    answer = await client.get(guest.path("status/current"))
    if not isinstance(answer, dict):
        raise errors.ProxmoxUnavailable("container status is not an object", cause="unexpected-response")
    return power(answer.get("status"))


def require_owned(guest: Guest, ref: protocol.ContainerRef) -> None:
    """`NotOwned` unless the guest carries the ref's exact marks."""
    if not guest.owned_by(ref):
        raise errors.NotOwned(
            f"guest {guest.vmid} does not carry the marks of server {ref.server_id}; not touching it",
            **guest.describe(),
        )


def raise_if_locked(guest: Guest) -> None:
    """`Locked` (with the kind) if the guest carries a config lock."""
    if guest.lock is not None:
        raise errors.Locked(f"CT is locked ({guest.lock})", lock=guest.lock, vmid=guest.vmid, node=guest.node)
