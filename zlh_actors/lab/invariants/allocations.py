"""Invariant 4: no VMID, IP or (node, port) is allocated twice, and nothing is leaked.

Allocated twice: two allocation rows that are not `released` for one resource (the schema's unique
indexes refuse this, so it is checked on snapshots), one server holding two of a kind at once (also
refused), or two servers whose state needs a container naming the same VMID, IP or (node, port) in
their rows (nothing in the schema refuses that).

Leaked: an allocation row held (`reserved`, `in_use` or `releasing`) by a server that is deleted
or unknown, or that is not the server's current VMID, IP or (node, port) (a previous generation's).
`foreign` rows have no owner by design (a stranger's VMID, never handed out) and are not leaks.

Unprotected: a server whose state needs a container must hold (`reserved` or `in_use`) the
allocations of the VMID, IP and (node, port) its row names; otherwise a create could be handed the
address its container is using.
"""

from __future__ import annotations

import collections
import uuid

from zlh_actors.lab.invariants import model

HELD = ("reserved", "in_use")
KINDS = {"vmid": "VMID", "ip": "IP", "port": "port"}


def resources(server: model.Server) -> dict[str, str | None]:
    """What the server's row names, by allocation kind, as `model.Allocation.resource` spells it."""
    return {
        "vmid": None if server.vmid is None else str(server.vmid),
        "ip": server.ip,
        "port": None
        if server.node is None or server.game_port is None
        else f"{server.node}:{server.game_port}",
    }


def check(database: model.Database) -> list[model.Violation]:
    servers = database.by_id()
    found: list[model.Violation] = []

    def violation(detail: str) -> None:
        found.append(model.Violation(4, detail))

    rows: dict[tuple[str, str], list[model.Allocation]] = collections.defaultdict(list)
    held: dict[tuple[str, uuid.UUID], list[model.Allocation]] = collections.defaultdict(list)
    for row in database.allocations:
        rows[row.kind, row.resource].append(row)
        if row.server_id is not None and row.status in HELD:
            held[row.kind, row.server_id].append(row)
    for (kind, allocated), holders in sorted(rows.items()):
        if len(holders) > 1:
            who = ", ".join(f"{row.server_id or 'foreign'} ({row.status})" for row in holders)
            violation(f"{KINDS[kind]} {allocated} is allocated {len(holders)} times: {who}")
    for (kind, server_id), holding in sorted(held.items(), key=lambda item: (item[0][0], str(item[0][1]))):
        if len(holding) > 1:
            what = ", ".join(row.resource for row in holding)
            violation(f"server {server_id} holds {len(holding)} {KINDS[kind]}s at once: {what}")

    for row in sorted(database.allocations, key=lambda row: (row.kind, row.resource)):
        if row.status == "foreign" or row.server_id is None:
            continue
        what = f"{KINDS[row.kind]} {row.resource} ({row.status})"
        owner = servers.get(row.server_id)
        if owner is None:
            violation(f"{what} is leaked: held by server {row.server_id}, which the database does not know")
        elif not owner.live:
            violation(f"{what} is leaked: held by server {owner.id}, which is deleted")
        elif resources(owner)[row.kind] != row.resource:
            violation(
                f"{what} is leaked: held by server {owner.id}, whose {KINDS[row.kind]} is now "
                f"{resources(owner)[row.kind]}"
            )

    needing = sorted(
        (server for server in servers.values() if server.live and server.needs_container),
        key=lambda server: str(server.id),
    )
    named: dict[tuple[str, str], list[uuid.UUID]] = collections.defaultdict(list)
    for server in needing:
        for kind, resource in resources(server).items():
            if resource is None:
                violation(f"server {server.id} is {server.state} but its row names no {KINDS[kind]}")
                continue
            named[kind, resource].append(server.id)
            if not any(row.resource == resource for row in held.get((kind, server.id), [])):
                violation(
                    f"server {server.id} is {server.state} at {KINDS[kind]} {resource}, but does not hold "
                    "its allocation"
                )
    for (kind, shared), owners in sorted(named.items()):
        if len(owners) > 1:
            violation(
                f"{KINDS[kind]} {shared} is in use by {len(owners)} servers: {', '.join(map(str, owners))}"
            )
    return found


def checked(database: model.Database) -> int:
    """Allocation rows, plus servers whose holdings were checked."""
    return len(database.allocations) + sum(1 for s in database.servers if s.live and s.needs_container)
