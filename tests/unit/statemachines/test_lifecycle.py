"""Every (state, event) pair against a table written out by hand.

`EXPECTED` is deliberately not derived from the chart: it is the specification the chart is checked
against, so a wrong arrow in `statemachines/chart.py` fails here. Each entry maps a persisted state to
the events it accepts, in `EVENTS` order, and where each one leads; every pair not listed must raise.
"""

from __future__ import annotations

import pytest

from statemachines import lifecycle
from zlh_actors import errors

EVENTS_BY_HAND = (
    "create",
    "cloned",
    "configured",
    "booted",
    "enrolled",
    "installed",
    "ready",
    "start",
    "stop",
    "restart",
    "stopped",
    "crashed",
    "fail",
    "retry",
    "lost",
    "repaired",
    "delete",
    "game_stopped",
    "container_stopped",
    "destroyed",
    "released",
)

DELETE = "deleting.stopping_game"

EXPECTED: dict[str, dict[str, str]] = {
    "requested": {"create": "provisioning.cloning", "delete": "deleting.releasing"},
    "provisioning.cloning": {
        "cloned": "provisioning.configuring",
        "fail": "failed.provisioning",
        "delete": DELETE,
    },
    "provisioning.configuring": {
        "configured": "provisioning.booting",
        "fail": "failed.provisioning",
        "lost": "lost",
        "delete": DELETE,
    },
    "provisioning.booting": {
        "booted": "provisioning.enrolling",
        "fail": "failed.provisioning",
        "lost": "lost",
        "delete": DELETE,
    },
    "provisioning.enrolling": {
        "enrolled": "provisioning.installing",
        "fail": "failed.provisioning",
        "lost": "lost",
        "delete": DELETE,
    },
    "provisioning.installing": {
        "installed": "starting",
        "fail": "failed.provisioning",
        "lost": "lost",
        "delete": DELETE,
    },
    "starting": {
        "ready": "running",
        "stop": "stopping",
        "crashed": "crashed",
        "fail": "failed.starting",
        "lost": "lost",
        "delete": DELETE,
    },
    "running": {
        "stop": "stopping",
        "restart": "starting",
        "stopped": "stopped",
        "crashed": "crashed",
        "lost": "lost",
        "delete": DELETE,
    },
    "stopping": {"stopped": "stopped", "fail": "failed.stopping", "lost": "lost", "delete": DELETE},
    "stopped": {"start": "starting", "lost": "lost", "delete": DELETE},
    "crashed": {
        "start": "starting",
        "restart": "starting",
        "fail": "failed.starting",
        "lost": "lost",
        "delete": DELETE,
    },
    "failed.provisioning": {"retry": "provisioning.cloning", "lost": "lost", "delete": DELETE},
    "failed.starting": {"retry": "starting", "lost": "lost", "delete": DELETE},
    "failed.stopping": {"retry": "stopping", "lost": "lost", "delete": DELETE},
    "lost": {"retry": "provisioning.cloning", "repaired": "stopped", "delete": DELETE},
    "deleting.stopping_game": {
        "fail": "deleting.stopping_game",
        "delete": "deleting.stopping_game",
        "game_stopped": "deleting.stopping_container",
    },
    "deleting.stopping_container": {
        "fail": "deleting.stopping_container",
        "delete": "deleting.stopping_container",
        "container_stopped": "deleting.destroying",
    },
    "deleting.destroying": {
        "fail": "deleting.destroying",
        "delete": "deleting.destroying",
        "destroyed": "deleting.releasing",
    },
    "deleting.releasing": {
        "fail": "deleting.releasing",
        "delete": "deleting.releasing",
        "released": "deleted",
    },
    "deleted": {},
}


def test_states_and_events_are_the_published_lists() -> None:
    assert tuple(EXPECTED) == lifecycle.STATES
    assert EVENTS_BY_HAND == lifecycle.EVENTS
    assert lifecycle.INITIAL_STATE == "requested"
    assert {"deleted"} == lifecycle.FINAL_STATES


def test_every_state_event_pair() -> None:
    tested = allowed = 0
    wrong: list[str] = []
    for state in lifecycle.STATES:
        accepted = [event for event in EVENTS_BY_HAND if event in EXPECTED[state]]
        for event in lifecycle.EVENTS:
            tested += 1
            expected = EXPECTED[state].get(event)
            if expected is not None:
                allowed += 1
                got = lifecycle.apply(state, event)
                if got != expected:
                    wrong.append(f"{state} --{event}--> {got}, expected {expected}")
                continue
            try:
                got = lifecycle.apply(state, event)
            except errors.InvalidTransition as exc:
                if exc.details != {"state": state, "event": event, "allowed": accepted}:
                    wrong.append(f"{state} --{event}--> refused with details {exc.details!r}")
            else:
                wrong.append(f"{state} --{event}--> {got}, expected InvalidTransition")
    assert wrong == []
    assert tested == len(lifecycle.STATES) * len(lifecycle.EVENTS) == 20 * 21 == 420
    assert allowed == sum(len(events) for events in EXPECTED.values()) == 69


@pytest.mark.parametrize("state", list(EXPECTED))
def test_allowed_events_match_the_hand_table(state: str) -> None:
    assert lifecycle.allowed_events(state) == [event for event in EVENTS_BY_HAND if event in EXPECTED[state]]


def test_transition_table_lists_exactly_the_allowed_pairs() -> None:
    rows = {(row.state, row.event): row.target for row in lifecycle.transition_table()}
    assert rows == {
        (state, event): target for state, targets in EXPECTED.items() for event, target in targets.items()
    }


def test_delete_is_accepted_in_every_non_final_state() -> None:
    for state in lifecycle.STATES:
        if state in lifecycle.FINAL_STATES:
            assert lifecycle.allowed_events(state) == []
        else:
            assert lifecycle.apply(state, "delete").startswith("deleting.")


def test_a_deleting_server_only_moves_towards_deleted() -> None:
    for row in lifecycle.transition_table():
        if row.state.startswith("deleting."):
            assert row.target.startswith("deleting.") or row.target == "deleted"


def test_every_state_is_reachable_and_can_reach_deleted() -> None:
    edges = lifecycle.transition_table()
    reached = {lifecycle.INITIAL_STATE}
    while new := {row.target for row in edges if row.state in reached} - reached:
        reached |= new
    assert reached == set(lifecycle.STATES)
    ends = set(lifecycle.FINAL_STATES)
    while new := {row.state for row in edges if row.target in ends} - ends:
        ends |= new
    assert ends == set(lifecycle.STATES)


def test_a_dotted_event_is_refused_although_the_engine_would_match_it_by_prefix() -> None:
    machine = lifecycle.restore("running")
    machine.send("stop.now")
    assert lifecycle.persisted(machine) == "stopping"
    with pytest.raises(errors.InvalidTransition):
        lifecycle.apply("running", "stop.now")


@pytest.mark.parametrize("state", ["provisioning", "deleting", "failed", "Running", ""])
def test_a_value_that_is_not_a_persisted_state_is_invalid_data(state: str) -> None:
    with pytest.raises(errors.InvalidData):
        lifecycle.apply(state, "delete")
    with pytest.raises(errors.InvalidData):
        lifecycle.allowed_events(state)
    with pytest.raises(errors.InvalidData):
        lifecycle.restore(state)


def test_invalid_transition_is_permanent_and_says_what_was_allowed() -> None:
    with pytest.raises(errors.InvalidTransition) as info:
        lifecycle.apply("stopped", "stop")
    assert isinstance(info.value, errors.Permanent)
    assert info.value.details == {"state": "stopped", "event": "stop", "allowed": ["start", "lost", "delete"]}
