"""What the actor does about each drift: chart events, checked against the chart, and the payload."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from statemachines import lifecycle
from zlh_actors import errors
from zlh_actors.reconciler import drift, repairs

CASES: list[tuple[str, str, str, dict[str, Any], list[str], str | None]] = [
    # kind, state, desired, observed, events, resulting state
    ("missing", "running", "running", {"proxmox": "absent"}, ["lost"], "lost"),
    ("missing", "stopped", "stopped", {"proxmox": "absent"}, ["lost"], "lost"),
    ("missing", "provisioning.booting", "running", {"proxmox": "absent"}, ["lost"], "lost"),
    ("power", "running", "running", {"proxmox": "stopped"}, ["stopped", "start"], "starting"),
    ("power", "running", "stopped", {"proxmox": "stopped"}, ["stopped"], "stopped"),
    ("power", "stopped", "running", {"proxmox": "running"}, ["start"], "starting"),
    ("power", "stopped", "stopped", {"proxmox": "running"}, ["start", "stop"], "stopping"),
    ("power", "running", "running", {"proxmox": "running"}, [], None),
    ("agent", "running", "running", {"agent": "crashed", "game_running": False}, ["crashed"], "crashed"),
    (
        "agent",
        "running",
        "running",
        {"agent": "stopped", "game_running": False},
        ["stopped", "start"],
        "starting",
    ),
    ("agent", "running", "stopped", {"agent": "stopped", "game_running": False}, ["stopped"], "stopped"),
    ("agent", "stopped", "running", {"agent": "crashed", "game_running": False}, [], None),
    ("agent", "running", "running", {"agent": "ready", "game_running": True}, [], None),
]


@pytest.mark.parametrize(("kind", "state", "desired", "observed", "events", "target"), CASES)
def test_events_for_each_drift(
    kind: str, state: str, desired: str, observed: dict[str, Any], events: list[str], target: str | None
) -> None:
    assert repairs.events(kind, state, desired, observed) == events
    reached = state
    for event in events:
        reached = lifecycle.apply(reached, event)  # the chart accepts the whole path
    assert (reached if events else None) == target


def test_a_missing_container_of_a_deleting_server_is_refused_by_the_chart() -> None:
    [event] = repairs.events("missing", "deleting.destroying", "deleted", {"proxmox": "absent"})
    with pytest.raises(errors.InvalidTransition):
        lifecycle.apply("deleting.destroying", event)


def test_payload_round_trip_and_refusals() -> None:
    row = drift.ServerRecord(uuid.uuid4(), "running", "running", "pve1", 10000, "127.20.0.1", 3, 41)
    found = drift.Drift("power", "why", 10000, "pve1", row.id, 3, server=row, observed={"proxmox": "stopped"})
    payload = repairs.payload(found)
    assert repairs.parse(payload) == {
        "kind": "power",
        "reason": "why",
        "observed": {"proxmox": "stopped"},
        "state": "running",
        "version": 41,
        "generation": 3,
    }
    with pytest.raises(ValueError, match="not sent to an actor"):
        repairs.payload(drift.Drift("foreign", "stranger", 10001, "pve2"))
    with pytest.raises(errors.InvalidData):
        repairs.parse({**payload, "kind": "orphan"})
    with pytest.raises(errors.InvalidData):
        repairs.parse({**payload, "version": "41"})
