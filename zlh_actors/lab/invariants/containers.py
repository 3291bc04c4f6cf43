"""Invariants 2 and 3: Proxmox holds exactly the containers the database accounts for.

2. At most one container claims each server id, and at most one container holds each VMID.
3. Every live server whose state needs a container (`drift.EXPECTS_CONTAINER`, the reconciler's own
   notion) has one at its VMID, marked with its id and generation (the owner line in the
   description, and the tags); a deleted server has none; every container that claims to be ours
   (the `zlh` tag, or an owner line) is accounted for: a known live server, of that generation, at
   that VMID, with tags that agree with the owner line. A container that is where its server needs it
   is also on the server's node, and, for a server at rest in `running` or `stopped`, in that power
   state (the reconciler's `power` drift, left unrepaired).

A live server whose state does not need a container (requested, cloning, `failed.provisioning`,
`lost`, the deleting steps) may have one or not, but if it does the container must carry the
server's current owner line; its tags may still be missing (they are set by a second request after
the clone, and a step that failed in between leaves them to the retry). Containers that do not
claim to be ours are somebody else's and are not checked. This part knows nothing of our database:
the job-queue peer (bench/peer/) feeds it its own records.
"""

from __future__ import annotations

import collections
import uuid
from collections.abc import Iterable

from zlh_actors.lab.invariants import model
from zlh_actors.proxmox import marks


def _owner(container: model.Container) -> uuid.UUID | None:
    """The server a container claims: its owner line's, else its tags' (a container that lost its line)."""
    if container.marks is not None:
        return container.marks.server_id
    from_tags = marks.from_tags(container.tags)
    return None if from_tags is None else from_tags.server_id


def _where(container: model.Container) -> str:
    return f"container {container.vmid} on {container.node}"


def check_containers(
    records: Iterable[model.Record], containers: Iterable[model.Container]
) -> list[model.Violation]:
    """Invariants 2 and 3 alone: the pure part, reused by the job-queue peer benchmark (bench/peer/)."""
    by_id = {record.server_id: record for record in records}
    guests = sorted(containers, key=lambda container: (container.vmid, container.node))
    return _duplicates(guests) + _claims(guests, by_id) + _missing(guests, by_id)


def _duplicates(guests: list[model.Container]) -> list[model.Violation]:
    found = []
    by_vmid: dict[int, list[model.Container]] = collections.defaultdict(list)
    by_owner: dict[uuid.UUID, list[model.Container]] = collections.defaultdict(list)
    for guest in guests:
        by_vmid[guest.vmid].append(guest)
        owner = _owner(guest)
        if owner is not None:
            by_owner[owner].append(guest)
    for vmid, holders in by_vmid.items():
        if len(holders) > 1:
            nodes = ", ".join(holder.node for holder in holders)
            found.append(model.Violation(2, f"VMID {vmid} is held by {len(holders)} containers (on {nodes})"))
    for owner, holders in sorted(by_owner.items(), key=lambda item: str(item[0])):
        if len(holders) > 1:
            where = ", ".join(_where(holder) for holder in holders)
            found.append(model.Violation(2, f"server {owner} has {len(holders)} containers: {where}"))
    return found


def _claims(guests: list[model.Container], by_id: dict[uuid.UUID, model.Record]) -> list[model.Violation]:
    found = []
    for guest in guests:
        if not guest.ours:
            continue

        def violation(why: str, guest: model.Container = guest) -> None:
            found.append(model.Violation(3, f"{_where(guest)}: {why}"))

        if guest.marks is None:
            violation("tagged zlh but has no owner line (unaccounted for)")
            continue
        server_id, generation = guest.marks.server_id, guest.marks.generation
        record = by_id.get(server_id)
        if record is None:
            violation(f"claims server {server_id}, which the database does not know (unaccounted for)")
            continue
        if not record.live:
            violation(f"belongs to server {server_id}, which is deleted")
            continue
        if generation != record.generation:
            violation(
                f"is generation {generation} of server {server_id}, now at generation {record.generation}"
            )
        if record.vmid is not None and guest.vmid != record.vmid:
            violation(f"claims server {server_id}, which the database places at VMID {record.vmid}")
        elif generation == record.generation:
            if record.node is not None and guest.node != record.node:
                violation(f"claims server {server_id}, which the database places on {record.node}")
            if record.power is not None and guest.status != record.power:
                violation(f"is {guest.status}, and its server {server_id} is {record.power}")
        if not guest.tagged:
            # Tags follow the clone in a second request; a server that failed in between needs no
            # container, and its retry tags (or its delete destroys) the clone by its owner line.
            if record.needs_container:
                violation(f"owned by server {server_id} but lacks the zlh tag")
        elif guest.tags is not None and marks.from_tags(guest.tags) != guest.marks:
            violation(
                f"its tags {guest.tags!r} disagree with its owner line ({marks.owner_line(guest.marks)})"
            )
    return found


def _missing(guests: list[model.Container], by_id: dict[uuid.UUID, model.Record]) -> list[model.Violation]:
    found = []
    for record in sorted(by_id.values(), key=lambda record: str(record.server_id)):
        if not (record.live and record.needs_container):
            continue
        wanted = marks.Marks(record.server_id, record.generation)
        if not any(guest.marks == wanted and record.vmid in (None, guest.vmid) for guest in guests):
            at = "" if record.vmid is None else f" at VMID {record.vmid}"
            found.append(
                model.Violation(
                    3,
                    f"server {record.server_id} needs its container of generation {record.generation}{at}, "
                    "and Proxmox has none",
                )
            )
    return found
