"""Where the world disagrees with the database: a pure function from three observations to drifts.

`diff(servers, guests, agents)` compares what the database says (one `ServerRecord` per server),
what Proxmox holds (one `Guest` per guest of the cluster) and what the agents say (their
`/v1/status`, polled at the container's IP) and names every disagreement. It does no I/O and
decides nothing about repairs: the loop acts on the result, and the owning actor decides through the
chart. Keeping it pure is what lets a table of cases pin every kind, and every case that is *not*
drift, without a database or a cluster.

The kinds:

- `orphan`: a guest tagged `zlh` whose server is unknown, deleted, or has moved on to another
  generation or VMID (a container the database no longer accounts for). The loop passes an untagged
  container whose VMID none of our servers holds as tagged with the marks of its description, when
  it has them (a clone that landed after its server was gone, before any step could tag it: `loop`).
- `missing`: the database says the server's container exists (a state in which the chart accepts
  `lost`), and no guest carries its marks at its VMID. `failed.provisioning` is left out: the
  failure may have come before the clone, and re-provisioning a failed server is the user's retry.
- `power`: `running` in the database and stopped in Proxmox, or `stopped` and running. Other states
  are transitions in progress whose steps look at the power state themselves; a guest on an offline
  node (power UNKNOWN) says nothing.
- `agent`: `running` in the database, the container running, and the agent of the server's
  generation says its game is not (it crashed, or stopped). An agent that does not answer, or
  serves another generation, says nothing reliable about this server and is not drift.
- `foreign`: a guest in the VMID range without the `zlh` tag (nor our marks in its description)
  whose VMID no live allocation holds (ours in progress, or already marked foreign). Its VMID must
  never be handed out.

Order of observation matters, and the loop keeps it: the database is read first, then Proxmox, then
the agents. So a server-side drift (missing, power, agent) was seen *after* the row it was compared
with, and the actor can apply it only if the row is still the one that was read (its `version`).
Container-side drifts (orphan, foreign) can be false for a moment the other way round (a server
created after the read); the orphan grace period and a re-check before destroying cover that, and
marking a VMID foreign is refused by the database if anyone holds it.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterable, Mapping
from typing import Any, Final, Literal

from statemachines import lifecycle

Kind = Literal["orphan", "missing", "power", "agent", "foreign"]
KINDS: Final[tuple[Kind, ...]] = ("orphan", "missing", "power", "agent", "foreign")

# States in which the server's container must exist: the chart accepts `lost` there. A server that
# failed while provisioning may have failed before its clone; its retry re-runs the idempotent clone.
EXPECTS_CONTAINER: Final[frozenset[str]] = frozenset(
    state for state in lifecycle.STATES if "lost" in lifecycle.allowed_events(state)
) - {"failed.provisioning"}

# Agent states in which its game is not running and will not be without a command.
GAME_DOWN: Final[frozenset[str]] = frozenset({"crashed", "stopped", "installed"})

RUNNING, STOPPED = "running", "stopped"


@dataclasses.dataclass(frozen=True)
class ServerRecord:
    """A server as the database has it (the columns the reconciler compares)."""

    id: uuid.UUID
    state: str
    desired_state: str
    node: str | None
    vmid: int | None
    ip: str | None
    generation: int
    version: int


@dataclasses.dataclass(frozen=True)
class Guest:
    """A guest of the cluster as Proxmox lists it (tags, not descriptions: see proxmox/marks.py).

    Attributes:
        power: "running", "stopped" or "unknown" (its node is offline).
        tagged: it carries the `zlh` tag.
        server_id, generation: from its tags; None when untagged or the tags are incomplete.
    """

    vmid: int
    node: str
    power: str
    kind: str = "lxc"
    template: bool = False
    tagged: bool = False
    server_id: uuid.UUID | None = None
    generation: int | None = None


@dataclasses.dataclass(frozen=True)
class AgentView:
    """What an agent's `/v1/status` said."""

    generation: int | None
    state: str
    game_running: bool


@dataclasses.dataclass(frozen=True)
class Drift:
    """One disagreement.

    Attributes:
        kind: see the module docstring.
        reason: one line for humans (the journal's `detail`, the report).
        vmid, node: the guest concerned (for `missing`, where the database says it should be).
        server_id, generation: the server concerned; for an orphan, the marks its tags carry (None
            when unreadable); for a foreign guest, None.
        server: the database row the drift was found against (server-side kinds), so the actor
            can tell whether the row is still the one observed.
        observed: what was seen (`proxmox`: a power state or "absent"; `agent`, `game_running`).
    """

    kind: Kind
    reason: str
    vmid: int | None
    node: str | None
    server_id: uuid.UUID | None = None
    generation: int | None = None
    server: ServerRecord | None = None
    observed: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def diff(
    servers: Iterable[ServerRecord],
    guests: Iterable[Guest],
    agents: Mapping[uuid.UUID, AgentView | None],
    *,
    vmid_range: tuple[int, int],
    allocated_vmids: Iterable[int] = (),
    others: Iterable[ServerRecord] = (),
) -> list[Drift]:
    """Every drift between the database and the world; empty when they agree.

    Args:
        servers: the servers to check (read before the guests were listed).
        guests: every guest whose fate is being decided (tagged ones of these servers, and the
            untagged ones of the VMIDs under consideration).
        agents: the status of each server's agent, by server id; None for no answer. Servers
            missing from the mapping were not polled.
        vmid_range: the VMIDs the control plane allocates (foreign guests outside it do not matter).
        allocated_vmids: VMIDs with a live allocation of any status (ours, or already foreign).
        others: servers read after the guests were listed, used only to tell an orphan's server
            from an unknown one (never checked for missing, power or agent drift).
    """
    checked = {server.id: server for server in servers}
    known = {**{server.id: server for server in others}, **checked}
    allocated = frozenset(allocated_vmids)
    low, high = vmid_range
    found: list[Drift] = []
    present: dict[uuid.UUID, Guest] = {}
    for guest in sorted(guests, key=lambda guest: guest.vmid):
        if guest.tagged and guest.kind == "lxc" and not guest.template:
            orphan = _orphan(guest, known)
            if orphan is None:
                assert guest.server_id is not None  # _orphan found its server by it
                present[guest.server_id] = guest
            else:
                found.append(orphan)
        elif low <= guest.vmid <= high and guest.vmid not in allocated:
            found.append(
                Drift(
                    "foreign",
                    f"{guest.kind} {guest.vmid} on {guest.node} is in the VMID range without our marks",
                    guest.vmid,
                    guest.node,
                )
            )
    for server in sorted(checked.values(), key=lambda server: str(server.id)):
        found.extend(_server_drifts(server, present.get(server.id), agents.get(server.id)))
    return found


def _orphan(guest: Guest, known: Mapping[uuid.UUID, ServerRecord]) -> Drift | None:
    def drift(reason: str) -> Drift:
        return Drift(
            "orphan",
            f"container {guest.vmid} on {guest.node}: {reason}",
            guest.vmid,
            guest.node,
            guest.server_id,
            guest.generation,
        )

    if guest.server_id is None or guest.generation is None:
        return drift("tagged zlh, but its server and generation tags are missing or ambiguous")
    server = known.get(guest.server_id)
    if server is None:
        return drift(f"its server {guest.server_id} is unknown")
    if server.state == "deleted":
        return drift(f"its server {server.id} is deleted")
    if guest.generation != server.generation or guest.vmid != server.vmid:
        return drift(
            f"generation {guest.generation} of server {server.id}, which is now generation "
            f"{server.generation} at VMID {server.vmid}"
        )
    return None


def _server_drifts(server: ServerRecord, guest: Guest | None, agent: AgentView | None) -> list[Drift]:
    def drift(kind: Kind, reason: str, **observed: Any) -> Drift:
        return Drift(
            kind,
            reason,
            server.vmid,
            server.node,
            server.id,
            server.generation,
            server=server,
            observed=observed,
        )

    if guest is None:
        if server.state in EXPECTS_CONTAINER and server.vmid is not None:
            return [
                drift(
                    "missing",
                    f"{server.state} in the database, but Proxmox has no container {server.vmid} "
                    f"of generation {server.generation}",
                    proxmox="absent",
                )
            ]
        return []
    if guest.power not in (RUNNING, STOPPED):
        return []
    if server.state in (RUNNING, STOPPED) and guest.power != server.state:
        return [
            drift(
                "power",
                f"{server.state} in the database, but container {guest.vmid} is {guest.power} in Proxmox",
                proxmox=guest.power,
            )
        ]
    if (
        server.state == RUNNING
        and agent is not None
        and agent.generation == server.generation
        and not agent.game_running
        and agent.state in GAME_DOWN
    ):
        return [
            drift(
                "agent",
                f"running in the database, but the agent at {server.ip} says its game is {agent.state}",
                agent=agent.state,
                game_running=False,
            )
        ]
    return []
