"""The lifecycle as the rest of the system uses it: persisted strings in, persisted strings out.

A server's state lives in one column, `servers.state`, as the value of a leaf of the chart
(`running`, `provisioning.installing`, `deleting.destroying`). The actor's loop is "message -> chart
event -> guarded write -> side effect", so what it needs from the chart is a pure function
`apply(state, event) -> new state` that raises when the event is not allowed. Nothing here keeps a
chart instance alive between calls.

How `apply` works. `restore` builds a `chart.Lifecycle` whose model already holds the configuration
(the leaf and its ancestors, in the order the engine itself writes them). python-statemachine only
activates the initial state when the model's state is empty, so a restored instance runs no entry
action. `start_value=` is not a restore: it *enters* the given state, running its entry callbacks.
The instance then processes one event and the new leaf is read back. The answer, a refusal
included, depends on (state, event) alone, so it is memoised: the domain is a few hundred pairs,
while each restore-and-send builds an instance (about 0.3 ms and 15 KiB here).

Errors. The library's `TransitionNotAllowed` does not leave this package: it becomes
`errors.InvalidTransition` carrying `state`, `event` and `allowed`. Event names are checked against
`EVENTS` before the engine sees them, because the engine matches SCXML-style dotted descriptors by
prefix (`stop.now` would trigger `stop`). A value that is not a persisted state (a compound state
such as `provisioning`, or a typo) is `errors.InvalidData`: the schema's CHECK should have refused it.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import Any, Final

from statemachine.exceptions import TransitionNotAllowed
from statemachine.orderedset import OrderedSet
from statemachine.state import State

from statemachines import chart
from zlh_actors import errors


def _persisted_states() -> tuple[str, ...]:
    return tuple(str(state.value) for state in chart.Lifecycle.states_map.values() if state.is_atomic)


def _event_names() -> tuple[str, ...]:
    # The class keeps its events in a private attribute; an instance lists them publicly.
    return tuple(event.id for event in chart.Lifecycle().events)


def _initial_state() -> str:
    initial = chart.Lifecycle.initial_state
    if initial is None:  # pragma: no cover - only abstract charts have none
        raise RuntimeError("the lifecycle chart has no initial state")
    return str(initial.value)


STATES: Final[tuple[str, ...]] = _persisted_states()
"""Every value `servers.state` may hold: the chart's leaves, in document order."""

EVENTS: Final[tuple[str, ...]] = _event_names()
"""Every event name the chart knows, in declaration order."""

INITIAL_STATE: Final[str] = _initial_state()
"""The state a new server is created in."""

FINAL_STATES: Final[frozenset[str]] = frozenset(
    str(state.value) for state in chart.Lifecycle.states_map.values() if state.final
)
"""States that accept no event at all."""


@dataclasses.dataclass(frozen=True)
class Transition:
    """One allowed move between persisted states: in `state`, `event` leads to `target`."""

    state: str
    event: str
    target: str


@dataclasses.dataclass
class _Model:
    """The object the chart reads its configuration from and writes it back to."""

    state: Any


def _leaf(state: str) -> State:
    found = chart.Lifecycle.states_map.get(state)
    if found is None or not found.is_atomic:
        raise errors.InvalidData("not a persisted lifecycle state", state=state, allowed=list(STATES))
    return found


def restore(state: str, listeners: Sequence[object] = ()) -> chart.Lifecycle:
    """Build a chart instance sitting in the persisted `state`, without running any entry action.

    `listeners` are passed to the instance (tests use them to count callbacks). Raises
    `errors.InvalidData` if `state` is not in `STATES`.
    """
    leaf = _leaf(state)
    path = [*reversed(list(leaf.ancestors())), leaf]
    value: Any = leaf.value if len(path) == 1 else OrderedSet(node.value for node in path)
    return chart.Lifecycle(_Model(value), listeners=list(listeners))


def persisted(machine: chart.Lifecycle) -> str:
    """The persisted value of the one leaf active in `machine`."""
    leaves = [str(node.value) for node in machine.configuration if node.is_atomic]
    if len(leaves) != 1:  # pragma: no cover - the chart has no parallel states
        raise RuntimeError(f"expected one active leaf, found {leaves!r}")
    return leaves[0]


def allowed_events(state: str) -> list[str]:
    """The events `state` accepts, in `EVENTS` order; empty for a final state.

    Read from the chart's structure (the leaf's transitions and its ancestors'), without building
    an instance. Raises `errors.InvalidData` if `state` is not in `STATES`.
    """
    leaf = _leaf(state)
    accepted = {
        event.id
        for node in (leaf, *leaf.ancestors())
        for transition in node.transitions
        if not transition.initial
        for event in transition.events
    }
    return [event for event in EVENTS if event in accepted]


@functools.cache
def _target(state: str, event: str) -> str | None:
    machine = restore(state)
    try:
        machine.send(event)
    except TransitionNotAllowed:
        return None
    return persisted(machine)


def apply(state: str, event: str) -> str:
    """The persisted state after `event` in persisted `state`.

    The engine decides, not `allowed_events`. Raises `errors.InvalidTransition` (details: state,
    event, allowed) if the chart does not accept `event` in `state`, and `errors.InvalidData` if
    `state` is not in `STATES`.
    """
    _leaf(state)
    target = _target(state, event) if event in EVENTS else None
    if target is None:
        raise _invalid(state, event, allowed_events(state))
    return target


def _invalid(state: str, event: str, allowed: list[str]) -> errors.InvalidTransition:
    return errors.InvalidTransition(
        "the lifecycle does not allow this event in this state", state=state, event=event, allowed=allowed
    )


def transition_table() -> list[Transition]:
    """Every allowed (state, event) pair and where it leads, as the engine computes it.

    Ordered by `STATES`, then `EVENTS`. This is what docs/lifecycle.md tabulates.
    """
    return [
        Transition(state, event, apply(state, event)) for state in STATES for event in allowed_events(state)
    ]
