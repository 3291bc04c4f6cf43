"""The pure diff: every drift kind, and the look-alike cases that are not drift."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from typing import Any

import pytest

from zlh_actors.reconciler import drift

RANGE = (10000, 19999)
A = uuid.UUID("00000000-0000-0000-0000-00000000000a")
B = uuid.UUID("00000000-0000-0000-0000-00000000000b")


def server(
    state: str = "running",
    *,
    id: uuid.UUID = A,
    vmid: int = 10000,
    generation: int = 1,
    desired: str = "running",
) -> drift.ServerRecord:
    return drift.ServerRecord(
        id=id,
        state=state,
        desired_state=desired,
        node="pve1",
        vmid=vmid,
        ip="127.20.0.1",
        generation=generation,
        version=7,
    )


def ours(
    power: str = "running", *, id: uuid.UUID | None = A, vmid: int = 10000, generation: int | None = 1
) -> drift.Guest:
    return drift.Guest(vmid=vmid, node="pve1", power=power, tagged=True, server_id=id, generation=generation)


def stranger(vmid: int, *, kind: str = "lxc", template: bool = False) -> drift.Guest:
    return drift.Guest(vmid=vmid, node="pve2", power="running", kind=kind, template=template)


def agent(state: str = "ready", *, running: bool = True, generation: int | None = 1) -> drift.AgentView:
    return drift.AgentView(generation=generation, state=state, game_running=running)


@dataclasses.dataclass(frozen=True)
class Case:
    servers: tuple[drift.ServerRecord, ...] = ()
    guests: tuple[drift.Guest, ...] = ()
    agents: Mapping[uuid.UUID, drift.AgentView | None] = dataclasses.field(default_factory=dict)
    allocated: tuple[int, ...] = (10000, 10001)
    others: tuple[drift.ServerRecord, ...] = ()
    # (kind, server id or None, vmid, observed) for every expected drift, in the order diff returns them
    expected: tuple[tuple[str, uuid.UUID | None, int | None, Mapping[str, Any]], ...] = ()


CASES = {
    # --- no drift ------------------------------------------------------------------------------
    "nothing at all": Case(),
    "running, container running, game running": Case(
        servers=(server(),), guests=(ours(),), agents={A: agent()}
    ),
    "stopped, container stopped": Case(servers=(server("stopped"),), guests=(ours("stopped"),)),
    "requested: no container yet": Case(servers=(server("requested"),)),
    "cloning: no container yet": Case(servers=(server("provisioning.cloning"),)),
    "failed while provisioning, perhaps before the clone": Case(servers=(server("failed.provisioning"),)),
    "deleting: the container is being destroyed": Case(servers=(server("deleting.destroying"),)),
    "deleted, nothing left": Case(servers=(server("deleted"),)),
    "starting with a stopped container: the step boots it": Case(
        servers=(server("starting"),), guests=(ours("stopped"),)
    ),
    "stopping with a running container: the step stops it": Case(
        servers=(server("stopping"),), guests=(ours("running"),)
    ),
    "node offline: power unknown says nothing": Case(servers=(server(),), guests=(ours("unknown"),)),
    "agent does not answer": Case(servers=(server(),), guests=(ours(),), agents={A: None}),
    "agent not polled": Case(servers=(server(),), guests=(ours(),)),
    "agent of another generation": Case(
        servers=(server(),), guests=(ours(),), agents={A: agent("crashed", running=False, generation=2)}
    ),
    "agent starting its game": Case(
        servers=(server(),), guests=(ours(),), agents={A: agent("starting", running=False)}
    ),
    "crashed server, agent says crashed": Case(
        servers=(server("crashed"),), guests=(ours(),), agents={A: agent("crashed", running=False)}
    ),
    "untagged guest outside the range": Case(guests=(stranger(500),)),
    "untagged guest at an allocated VMID (a clone not yet tagged, or already foreign)": Case(
        servers=(server("provisioning.cloning"),), guests=(stranger(10000),)
    ),
    "server read after the listing accounts for its container": Case(
        guests=(ours(id=B, vmid=10001),), others=(server(id=B, vmid=10001),)
    ),
    "server read after the listing is never checked for missing": Case(others=(server(id=B),)),
    # --- orphan --------------------------------------------------------------------------------
    "orphan: unknown server": Case(guests=(ours(id=B, vmid=10005),), expected=(("orphan", B, 10005, {}),)),
    "orphan: deleted server": Case(
        servers=(server("deleted"),), guests=(ours(),), expected=(("orphan", A, 10000, {}),)
    ),
    "orphan: deleted server read after the listing": Case(
        guests=(ours(),), others=(server("deleted"),), expected=(("orphan", A, 10000, {}),)
    ),
    "orphan: an older generation, and the current one missing": Case(
        servers=(server(generation=2),),
        guests=(ours(generation=1),),
        expected=(("orphan", A, 10000, {}), ("missing", A, 10000, {"proxmox": "absent"})),
    ),
    "orphan: the same generation at another VMID": Case(
        servers=(server("stopped"),),
        guests=(ours("stopped"), ours("stopped", vmid=10007)),
        expected=(("orphan", A, 10007, {}),),
    ),
    "orphan: tagged zlh without readable marks": Case(
        guests=(ours(id=None, generation=None, vmid=10009),), expected=(("orphan", None, 10009, {}),)
    ),
    # --- missing -------------------------------------------------------------------------------
    "missing: running": Case(servers=(server(),), expected=(("missing", A, 10000, {"proxmox": "absent"}),)),
    "missing: stopped": Case(
        servers=(server("stopped"),), expected=(("missing", A, 10000, {"proxmox": "absent"}),)
    ),
    "missing: installing": Case(
        servers=(server("provisioning.installing"),), expected=(("missing", A, 10000, {"proxmox": "absent"}),)
    ),
    "missing: failed while starting": Case(
        servers=(server("failed.starting"),), expected=(("missing", A, 10000, {"proxmox": "absent"}),)
    ),
    # --- power ---------------------------------------------------------------------------------
    "power: running, container stopped": Case(
        servers=(server(),),
        guests=(ours("stopped"),),
        expected=(("power", A, 10000, {"proxmox": "stopped"}),),
    ),
    "power: stopped, container running": Case(
        servers=(server("stopped"),),
        guests=(ours("running"),),
        expected=(("power", A, 10000, {"proxmox": "running"}),),
    ),
    # --- agent ---------------------------------------------------------------------------------
    "agent: game crashed": Case(
        servers=(server(),),
        guests=(ours(),),
        agents={A: agent("crashed", running=False)},
        expected=(("agent", A, 10000, {"agent": "crashed", "game_running": False}),),
    ),
    "agent: game stopped": Case(
        servers=(server(),),
        guests=(ours(),),
        agents={A: agent("stopped", running=False)},
        expected=(("agent", A, 10000, {"agent": "stopped", "game_running": False}),),
    ),
    # --- foreign -------------------------------------------------------------------------------
    "foreign: a stranger's container in the range": Case(
        guests=(stranger(10003),), expected=(("foreign", None, 10003, {}),)
    ),
    "foreign: a VM in the range": Case(
        guests=(stranger(19999, kind="qemu"),), expected=(("foreign", None, 19999, {}),)
    ),
    "foreign: a template in the range": Case(
        guests=(stranger(10004, template=True),), expected=(("foreign", None, 10004, {}),)
    ),
    "a template tagged zlh is not judged as one of our containers": Case(
        guests=(dataclasses.replace(ours(id=B, vmid=10001), template=True),)
    ),
}


@pytest.mark.parametrize("name", list(CASES))
def test_diff(name: str) -> None:
    case = CASES[name]
    found = drift.diff(
        case.servers,
        case.guests,
        case.agents,
        vmid_range=RANGE,
        allocated_vmids=case.allocated,
        others=case.others,
    )
    assert [(d.kind, d.server_id, d.vmid, dict(d.observed)) for d in found] == [
        (kind, server_id, vmid, dict(observed)) for kind, server_id, vmid, observed in case.expected
    ]
    for item in found:
        assert item.reason
        # Server-side drifts carry the row they were found against, for the actor's compare-and-set.
        assert (item.server is not None) == (item.kind in ("missing", "power", "agent"))


def test_every_kind_is_covered_by_a_case() -> None:
    kinds = {expected[0] for case in CASES.values() for expected in case.expected}
    assert kinds == set(drift.KINDS)


def test_the_states_that_expect_a_container_come_from_the_chart() -> None:
    assert sorted(drift.EXPECTS_CONTAINER) == sorted(
        [
            "provisioning.configuring",
            "provisioning.booting",
            "provisioning.enrolling",
            "provisioning.installing",
            "starting",
            "running",
            "stopping",
            "stopped",
            "crashed",
            "failed.starting",
            "failed.stopping",
        ]
    )


def test_a_drift_names_the_row_it_was_found_against() -> None:
    [found] = drift.diff([server("stopped")], [ours("running")], {}, vmid_range=RANGE)
    assert found.server == server("stopped")
    assert "stopped in the database" in found.reason
    assert "running in Proxmox" in found.reason
