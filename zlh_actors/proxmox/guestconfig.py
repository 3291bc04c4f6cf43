"""The configuration a server's container should have, and what to change to get there (no I/O).

`ensure_container` converges rather than overwrites: it reads the current config, and sends only the
keys that differ. Repeating it is then a read and nothing else, and an adopted container keeps what
is already right, above all its MAC address: PVE makes a new random MAC whenever net0 is written
without one, which would break the DHCP/ARP state of a running server for nothing.

PVE normalises what it stores (tags sorted and joined with semicolons, net0 with `type=veth` and a
`hwaddr` added, numbers possibly as strings), so each comparison is made on parsed values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from zlh_actors.proxmox import marks as marks_module
from zlh_actors.proxmox import protocol

NET = "net0"
INTERFACE = "eth0"


def split_props(text: object) -> dict[str, str]:
    """A PVE property string ("name=eth0,bridge=vmbr0,...") as a dict; bare words are dropped."""
    if not isinstance(text, str):
        return {}
    props = {}
    for part in text.split(","):
        key, eq, value = part.partition("=")
        if eq:
            props[key.strip()] = value.strip()
    return props


def join_props(props: Mapping[str, str]) -> str:
    """The property string, `name` first (PVE's order) and the rest sorted, so it is stable."""
    keys = sorted(props, key=lambda key: (key != "name", key))
    return ",".join(f"{key}={props[key]}" for key in keys)


def wanted_net(spec: protocol.ContainerSpec) -> dict[str, str]:
    """The net0 properties the driver owns. Others (hwaddr, firewall, mtu, a VLAN tag from the
    template) are left as they are."""
    props = {"name": INTERFACE, "bridge": spec.bridge, "ip": spec.ip}
    if spec.gateway is not None:
        props["gw"] = spec.gateway
    return props


def net_value(spec: protocol.ContainerSpec, current: object) -> str | None:
    """The net0 value to send, or None if the current one already has what we want."""
    props = split_props(current)
    wanted = wanted_net(spec)
    stale_gateway = spec.gateway is None and "gw" in props
    if all(props.get(key) == value for key, value in wanted.items()) and not stale_gateway:
        return None
    merged = dict(props)
    merged.update(wanted)
    if spec.gateway is None:
        merged.pop("gw", None)
    return join_props(merged)


def _as_int(value: object) -> int | None:
    try:
        return int(str(value))
    except ValueError:
        return None


def changes(spec: protocol.ContainerSpec, current: Mapping[str, Any]) -> dict[str, str | int]:
    """The config keys to PUT so that the container matches `spec` (empty: nothing to do).

    The tags are set to exactly ours: a clone inherits the template's tags (e.g. `zlh-template`),
    which must not mark a server's container.
    """
    owner = marks_module.Marks(spec.server_id, spec.generation)
    out: dict[str, str | int] = {}
    if current.get("hostname") != spec.name:
        out["hostname"] = spec.name
    wanted_description = marks_module.description(owner, spec.name)
    if str(current.get("description") or "").strip() != wanted_description:
        out["description"] = wanted_description
    if marks_module.split_tags(current.get("tags")) != frozenset(marks_module.tags(owner)):
        out["tags"] = marks_module.format_tags(owner)
    if _as_int(current.get("memory")) != spec.memory_mb:
        out["memory"] = spec.memory_mb
    if _as_int(current.get("cores")) != spec.cores:
        out["cores"] = spec.cores
    net = net_value(spec, current.get(NET))
    if net is not None:
        out[NET] = net
    return out
