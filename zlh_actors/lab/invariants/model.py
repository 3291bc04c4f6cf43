"""The checker's values: what the clients saw, what the database and Proxmox hold, what was found.

Every check is a pure function over these snapshots, so a test can plant a violation by building a
snapshot by hand (where the schema itself refuses the plant) as easily as by writing SQL.
"""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import Mapping
from typing import Any, Final

from zlh_actors.proxmox import marks
from zlh_actors.reconciler import drift

NAMES: Final[Mapping[int, str]] = {
    1: "one server per idempotency key",
    2: "one container per server and VMID",
    3: "database and Proxmox agree",
    4: "allocations unique, none leaked",
    5: "journals replay through the chart",
    6: "commands applied exactly once",
    7: "tenants see only their own",
}
"""The invariants by number, as `Report.table` names them (docs/invariants.md defines each)."""

DETAILS_SHOWN = 5
"""How many violations of each invariant `Report.table` spells out."""


@dataclasses.dataclass(frozen=True)
class CreateAnswer:
    """One answer to `POST /v1/servers`; `status` None when none came (a timeout, a reset)."""

    tenant: str
    key: str
    status: int | None
    body: Mapping[str, Any] | None

    @property
    def server_id(self) -> str | None:
        """The server a 2xx answer names; None for any other answer."""
        if self.status is None or not 200 <= self.status < 300 or self.body is None:
            return None
        found = self.body.get("id")
        return found if isinstance(found, str) else None

    @property
    def command_id(self) -> str | None:
        """The `create` command a 2xx answer names; None for any other answer."""
        return named_command(self.body) if self.server_id is not None else None


@dataclasses.dataclass(frozen=True)
class CommandAnswer:
    """One answer to a command (start, stop, restart, retry, delete) sent for a server; `status` None
    when none came."""

    tenant: str
    server_id: str
    kind: str
    status: int | None
    body: Mapping[str, Any] | None

    @property
    def acknowledged(self) -> bool:
        """A 2xx answer that should name a command: every one but a delete of a server already
        deleted, which is answered with the server alone (no command is made)."""
        if self.status is None or not 200 <= self.status < 300:
            return False
        return not (self.kind == "delete" and self.body is not None and self.body.get("state") == "deleted")

    @property
    def command_id(self) -> str | None:
        """The command a 2xx answer names; None for any other answer, or when it names none."""
        return named_command(self.body) if self.acknowledged else None


def named_command(body: Mapping[str, Any] | None) -> str | None:
    """The id of the `command` an answer's body names, if any."""
    command = body.get("command") if body is not None else None
    found = command.get("id") if isinstance(command, Mapping) else None
    return found if isinstance(found, str) else None


@dataclasses.dataclass(frozen=True)
class Sighting:
    """A tenant saw a server (in a list, a get, an event, the stream)."""

    tenant: str
    server_id: str
    source: str


@dataclasses.dataclass
class ClientLog:
    """What the clients of a run asked and saw; a scenario driver fills it as it goes.

    Log only what tenants' tokens saw: an admin sees every tenant's servers by design.
    """

    answers: list[CreateAnswer] = dataclasses.field(default_factory=list)
    commands: list[CommandAnswer] = dataclasses.field(default_factory=list)
    sightings: list[Sighting] = dataclasses.field(default_factory=list)

    def created(self, tenant: str, key: str, status: int | None, body: Mapping[str, Any] | None) -> None:
        """One answer to POST /v1/servers with Idempotency-Key `key` (status None: no answer, a timeout)."""
        self.answers.append(CreateAnswer(tenant, key, status, body))

    def commanded(
        self, tenant: str, server_id: str, kind: str, status: int | None, body: Mapping[str, Any] | None
    ) -> None:
        """One answer to command `kind` for server `server_id` (status None: no answer)."""
        self.commands.append(CommandAnswer(tenant, server_id, kind, status, body))

    def saw(self, tenant: str, server_id: str, source: str) -> None:
        """Tenant `tenant` saw server `server_id` in an answer or event; source "list", "get", "stream"..."""
        self.sightings.append(Sighting(tenant, server_id, source))


@dataclasses.dataclass(frozen=True)
class Violation:
    invariant: int  # 1..7
    detail: str  # one line a human can act on (server id, vmid, ...)


@dataclasses.dataclass
class Report:
    """Every violation found, and how many things each invariant looked at (zero checked is a smell)."""

    violations: list[Violation]
    checked: dict[int, int]

    @property
    def ok(self) -> bool:
        return not self.violations

    def of(self, invariant: int) -> list[Violation]:
        """The violations of one invariant."""
        return [found for found in self.violations if found.invariant == invariant]

    def table(self) -> str:
        """invariant | checked | violations, then the first few details of each violated invariant."""
        width = max(len(name) for name in NAMES.values())
        lines = [f"{'invariant':<{width + 3}}  {'checked':>8}  {'violations':>10}"]
        for number, name in NAMES.items():
            count = len(self.of(number))
            lines.append(f"{number}. {name:<{width}}  {self.checked.get(number, 0):>8}  {count:>10}")
        for number in NAMES:
            found = self.of(number)
            for violation in found[:DETAILS_SHOWN]:
                lines.append(f"  [{number}] {violation.detail}")
            if len(found) > DETAILS_SHOWN:
                lines.append(f"  [{number}] ... and {len(found) - DETAILS_SHOWN} more")
        return "\n".join(lines)


@dataclasses.dataclass(frozen=True)
class Container:
    """One guest as Proxmox has it.

    Attributes:
        marks: parsed from the description's owner line (None: no owner line, or an unreadable one).
        tagged: it carries our `zlh` tag.
        tags: PVE's raw tag string; None when the guest has no tags (or a caller did not read them).
            A guest without the `zlh` tag is held only to the tag rule of invariant 3, never to
            the check that its id and generation tags agree with its owner line.
    """

    vmid: int
    node: str
    status: str  # "running" | "stopped" | ...
    marks: marks.Marks | None
    tagged: bool
    tags: str | None = None

    @property
    def ours(self) -> bool:
        """It claims to be ours, by its tag or by its owner line."""
        return self.tagged or self.marks is not None


@dataclasses.dataclass(frozen=True)
class Record:
    """A server as some control plane's database records it (ours, or a peer's).

    `vmid` and `node`, when known, are where the database places its container, and `power` the
    state the container must be in at rest ("running" or "stopped"); None: not checked.
    """

    server_id: uuid.UUID
    generation: int
    live: bool  # not deleted
    needs_container: bool  # its state says a container must exist
    vmid: int | None = None
    node: str | None = None
    power: str | None = None


# --- the database, as read in one snapshot ------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Server:
    id: uuid.UUID
    tenant: str
    name: str
    state: str
    generation: int
    node: str | None
    vmid: int | None
    ip: str | None
    game_port: int | None

    @property
    def live(self) -> bool:
        return self.state != "deleted"

    @property
    def needs_container(self) -> bool:
        """Its state says its container exists: the reconciler's own notion (`drift.EXPECTS_CONTAINER`)."""
        return self.state in drift.EXPECTS_CONTAINER

    @property
    def power(self) -> str | None:
        """The container's power state its server's state calls for at rest: the reconciler's `power`
        drift (`running` and `stopped` only; every other state is a step that looks for itself)."""
        return self.state if self.state in (drift.RUNNING, drift.STOPPED) else None

    def record(self) -> Record:
        return Record(
            self.id, self.generation, self.live, self.needs_container, self.vmid, self.node, self.power
        )


@dataclasses.dataclass(frozen=True)
class Entry:
    """A journal entry (the columns replay needs)."""

    server_id: uuid.UUID
    seq: int
    from_state: str | None
    to_state: str
    event: str
    command_id: uuid.UUID | None


def decoded(value: Any) -> Any:
    """jsonb as a Python value (the service's pool decodes it; a bare asyncpg pool hands out text)."""
    return json.loads(value) if isinstance(value, str) else value


@dataclasses.dataclass(frozen=True)
class Command:
    """A command's row; `payload` and `result` are jsonb, decoded or not (see `decoded`)."""

    id: uuid.UUID
    server_id: uuid.UUID
    kind: str
    status: str
    result: Any
    payload: Any = None


@dataclasses.dataclass(frozen=True)
class Key:
    """An idempotency key's record."""

    tenant: str
    key: str
    server_id: uuid.UUID | None
    response_status: int | None
    response_body: Any


@dataclasses.dataclass(frozen=True)
class Allocation:
    """One allocation row that is not `released`.

    Attributes:
        kind: "vmid", "ip" or "port".
        resource: what is allocated, as text: "10000", "127.20.0.2", "pve1:25565".
    """

    kind: str
    resource: str
    server_id: uuid.UUID | None
    status: str


@dataclasses.dataclass(frozen=True)
class Database:
    """What the checker reads from PostgreSQL, in one repeatable-read transaction."""

    servers: tuple[Server, ...] = ()
    journal: tuple[Entry, ...] = ()
    commands: tuple[Command, ...] = ()
    keys: tuple[Key, ...] = ()
    allocations: tuple[Allocation, ...] = ()

    def by_id(self) -> dict[uuid.UUID, Server]:
        return {server.id: server for server in self.servers}
