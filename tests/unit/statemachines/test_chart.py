"""Pins the python-statemachine behaviour the lifecycle relies on.

These tests talk to the library directly (not through `lifecycle.apply`), so an upgrade that changes
a default or the restore semantics fails here with a clear name rather than somewhere in an actor.
"""

from __future__ import annotations

from typing import Any

import pytest
from statemachine.exceptions import TransitionNotAllowed

from statemachines import chart, lifecycle


class _Counter:
    """A listener that records every entry and exit callback the engine runs."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def on_enter_state(self, state: Any) -> None:
        self.calls.append(f"enter {state.id}")

    def on_exit_state(self, state: Any) -> None:
        self.calls.append(f"exit {state.id}")


def test_invalid_events_raise_instead_of_being_ignored() -> None:
    assert chart.Lifecycle.allow_event_without_transition is False
    assert chart.Lifecycle.catch_errors_as_events is False
    machine = lifecycle.restore("stopped")
    with pytest.raises(TransitionNotAllowed):
        machine.send("stop")
    with pytest.raises(TransitionNotAllowed):
        machine.send("no_such_event")
    assert lifecycle.persisted(machine) == "stopped"


def test_a_final_state_refuses_every_event() -> None:
    machine = lifecycle.restore("deleted")
    for event in lifecycle.EVENTS:
        with pytest.raises(TransitionNotAllowed):
            machine.send(event)


@pytest.mark.parametrize("state", lifecycle.STATES)
def test_restoring_runs_no_entry_action(state: str) -> None:
    counter = _Counter()
    machine = lifecycle.restore(state, listeners=[counter])
    assert counter.calls == []
    assert lifecycle.persisted(machine) == state


def test_the_counting_listener_does_see_callbacks_after_a_restore() -> None:
    counter = _Counter()
    machine = lifecycle.restore("provisioning.installing", listeners=[counter])
    machine.send("installed")
    assert counter.calls == ["exit installing", "exit provisioning", "enter starting"]


def test_start_value_is_not_a_restore_it_runs_entry_actions() -> None:
    counter = _Counter()
    chart.Lifecycle(start_value="provisioning.installing", listeners=[counter])
    assert counter.calls == ["enter provisioning", "enter installing"]


def test_a_new_chart_starts_in_requested() -> None:
    assert lifecycle.persisted(chart.Lifecycle()) == lifecycle.INITIAL_STATE


def test_targetless_transitions_exit_and_enter_nothing() -> None:
    counter = _Counter()
    machine = lifecycle.restore("deleting.destroying", listeners=[counter])
    machine.send("delete")
    machine.send("fail")
    assert counter.calls == []
    assert lifecycle.persisted(machine) == "deleting.destroying"


def test_sub_state_values_are_dotted_with_their_parent() -> None:
    for state in chart.Lifecycle.states_map.values():
        if state.parent is None:
            assert state.value == state.id
        else:
            assert state.value.startswith(f"{state.parent.value}.")
            assert "." not in state.parent.value


def test_events_named_like_states_still_leave_the_states_reachable() -> None:
    for name in ("stopped", "crashed", "lost"):
        assert name in lifecycle.EVENTS
        assert chart.Lifecycle.states_map[name].is_atomic
