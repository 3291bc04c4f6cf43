"""What the control plane asks of Proxmox: an async protocol and the values it exchanges.

The server actor and the reconciler depend on `ProxmoxDriver`, not on proxmoxer: the implementation
(`driver.ProxmoxerDriver`) is the only code that talks to PVE, and a test or a lab can substitute
anything that satisfies the protocol.

Every operation is idempotent and level-based: it reads what Proxmox holds now, does only what is
missing, and treats "already in the wanted state" as success. A caller that crashed half-way, or
lost a response, repeats the call and gets the same end state, never a duplicate. The inputs carry
everything the database allocated (node, VMID, IP), so the driver never picks one itself.

Ownership: a container is ours when its description carries our server id and generation (set in
the same request that creates it, so there is no moment when our container is unmarked). Tags carry
the same marks for cheap cluster-wide listing. The driver never changes a guest that is not ours.
"""

from __future__ import annotations

import dataclasses
import enum
import ipaddress
import uuid
from typing import NewType, Protocol

Vmid = NewType("Vmid", int)

VMID_MIN = 100
VMID_MAX = 999_999_999


@dataclasses.dataclass(frozen=True)
class ContainerRef:
    """Which container a server owns: enough to find it and to check that it is ours.

    Attributes:
        server_id: the server's id (the ownership mark).
        generation: the server's generation; a container of an older generation is not this one.
        node: the node the database allocated.
        vmid: the VMID the database allocated.
    """

    server_id: uuid.UUID
    generation: int
    node: str
    vmid: Vmid


@dataclasses.dataclass(frozen=True)
class ContainerSpec:
    """Everything `ensure_container` needs, built by the caller from the database row.

    Attributes:
        server_id, generation, node, vmid: as in `ContainerRef`.
        name: the container's hostname (a DNS label; PVE rejects anything else with `BadParameters`).
        ip: the static address with its prefix length, e.g. "10.0.0.5/24".
        gateway: the default gateway, or None for none.
        memory_mb: memory in MiB.
        cores: CPU cores.
        template_vmid: the LXC template to clone (full clone).
        bridge: the host bridge of net0.
    """

    server_id: uuid.UUID
    generation: int
    name: str
    node: str
    vmid: Vmid
    ip: str
    gateway: str | None
    memory_mb: int
    cores: int
    template_vmid: Vmid
    bridge: str = "vmbr0"

    def __post_init__(self) -> None:
        # Programming errors of the caller: the database's CHECK rules make these impossible for
        # well-formed rows, so they are ValueErrors and never reach Proxmox.
        for label, vmid in (("vmid", self.vmid), ("template_vmid", self.template_vmid)):
            if not VMID_MIN <= vmid <= VMID_MAX:
                raise ValueError(f"{label} {vmid} outside [{VMID_MIN}, {VMID_MAX}]")
        if self.vmid == self.template_vmid:
            raise ValueError("vmid is the template's")
        if self.generation < 1 or self.memory_mb < 1 or self.cores < 1:
            raise ValueError("generation, memory_mb and cores must be positive")
        if not self.node or not self.name:
            raise ValueError("node and name are required")
        interface = ipaddress.ip_interface(self.ip)
        if "/" not in self.ip:
            raise ValueError(f"ip {self.ip!r} needs a prefix length, e.g. {interface.ip}/24")
        if self.gateway is not None:
            ipaddress.ip_address(self.gateway)

    @property
    def ref(self) -> ContainerRef:
        return ContainerRef(self.server_id, self.generation, self.node, self.vmid)


@dataclasses.dataclass(frozen=True)
class NodeInfo:
    """A cluster node as placement sees it.

    Attributes:
        name: the node's name.
        online: whether PVE reports it online.
        free_memory_mb: its total minus used memory, in MiB (0 when offline).
    """

    name: str
    online: bool
    free_memory_mb: int


class PowerState(enum.StrEnum):
    """A container's power state as PVE reports it, plus ABSENT (no such guest in the cluster) and
    UNKNOWN (its node is offline, so nobody knows)."""

    RUNNING = "running"
    STOPPED = "stopped"
    UNKNOWN = "unknown"
    ABSENT = "absent"


@dataclasses.dataclass(frozen=True)
class ContainerStatus:
    """What `status` found.

    Attributes:
        vmid: the VMID asked about.
        node: where the container lives (None when ABSENT).
        power: its power state.
        lock: its config lock (create, backup, migrate...), or None.
    """

    vmid: Vmid
    node: str | None
    power: PowerState
    lock: str | None


@dataclasses.dataclass(frozen=True)
class OwnedContainer:
    """A container carrying the `zlh` tag, as `list_owned` reports it.

    Attributes:
        node, vmid: where it is.
        status: its power state (UNKNOWN when its node is offline).
        server_id, generation: parsed from its tags; None when the tags are incomplete (someone
            tagged it `zlh` by hand, or a crash came between the clone and the tagging).
        lock: its config lock, or None.
    """

    node: str
    vmid: Vmid
    status: PowerState
    server_id: uuid.UUID | None
    generation: int | None
    lock: str | None


@dataclasses.dataclass(frozen=True)
class GuestSummary:
    """Any guest of the cluster (ours or not, container or VM), as `list_guests` reports it.

    Attributes:
        node, vmid: where it is.
        kind: "lxc" or "qemu".
        status: its power state (UNKNOWN when its node is offline).
        template: whether it is a template.
        tagged: whether it carries the `zlh` tag (a claim to be ours, to be checked against the
            description before anything is changed).
        server_id, generation: parsed from its tags; None when untagged or the tags are incomplete.
    """

    node: str
    vmid: Vmid
    kind: str
    status: PowerState
    template: bool
    tagged: bool
    server_id: uuid.UUID | None
    generation: int | None


@dataclasses.dataclass(frozen=True)
class TaskResult:
    """A task that ended well.

    Attributes:
        upid: the task's id.
        node: the node it ran on.
        exitstatus: "OK" or "WARNINGS: n".
        warnings: n (0 for OK).
    """

    upid: str
    node: str
    exitstatus: str
    warnings: int


class EnsureOutcome(enum.StrEnum):
    CREATED = "created"  # this call cloned the container
    ADOPTED = "adopted"  # it existed already, marked as ours; this call only converged its config


class ShutdownOutcome(enum.StrEnum):
    CLEAN = "clean"  # the container shut down within the timeout
    FORCED = "forced"  # it did not, and was stopped
    ALREADY_STOPPED = "already-stopped"


class DestroyOutcome(enum.StrEnum):
    DESTROYED = "destroyed"
    ALREADY_ABSENT = "already-absent"


class ProxmoxDriver(Protocol):
    """The only way the control plane changes Proxmox. Every error is a `ProxmoxError`."""

    async def ensure_container(self, spec: ContainerSpec) -> EnsureOutcome:
        """Make the container exist at (spec.node, spec.vmid), marked as ours, with spec's config.

        Raises `VmidTaken` (untouched) if the VMID holds anybody else's guest.
        """
        ...

    async def start(self, ref: ContainerRef) -> None:
        """Make the container run (already running is success). `NotOwned` if it is not ours."""
        ...

    async def shutdown(self, ref: ContainerRef, timeout: float) -> ShutdownOutcome:
        """Ask the container to shut down within `timeout` seconds, then stop it if it did not."""
        ...

    async def stop(self, ref: ContainerRef) -> None:
        """Stop the container at once (already stopped is success)."""
        ...

    async def status(self, ref: ContainerRef) -> ContainerStatus:
        """The container's power state and lock; ABSENT if the VMID is free. `NotOwned` if the
        VMID holds a guest that is not ours."""
        ...

    async def destroy(self, ref: ContainerRef) -> DestroyOutcome:
        """Stop and delete the container with its disks. Absent is success; `NotOwned` if the
        guest at the VMID is not ours (it is never touched)."""
        ...

    async def nodes(self) -> list[NodeInfo]:
        """Every node of the cluster with its state and free memory."""
        ...

    async def list_owned(self) -> list[OwnedContainer]:
        """Every container carrying the `zlh` tag, across the cluster."""
        ...

    async def list_guests(self) -> list[GuestSummary]:
        """Every guest of the cluster, tagged or not, templates included (read-only: the reconciler
        looks for strangers in the VMID range)."""
        ...

    async def marks_of(self, vmid: Vmid, node: str) -> tuple[uuid.UUID, int] | None:
        """The (server id, generation) marks in the description of the guest at `vmid` (looked for
        at `node` first), or None when it has none or there is no such guest. Read-only."""
        ...

    async def wait_task(self, upid: str, deadline: float) -> TaskResult:
        """Wait for a task until `deadline` (a `time.monotonic()` value).

        `TaskFailed` (or the specific class of PVE's wording) if it failed; `TaskWaitTimeout` if
        the deadline came first, which says nothing about the task's outcome.
        """
        ...

    async def close(self) -> None:
        """Release threads and connections; idempotent."""
        ...
