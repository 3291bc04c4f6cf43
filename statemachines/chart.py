"""The server lifecycle chart: states and transitions only, no callbacks and no I/O.

This class is the single source of truth for which event is allowed in which state. The server actor
never holds an instance of it (one costs some KiB and a fraction of a millisecond to build, and
most servers sit idle); it goes through `statemachines.lifecycle`, which restores a throwaway
instance from the persisted state string, sends one event and reads the new state back.
`statemachines.docs` renders the committed diagram and table from this same class.

Persisted values. A state's `value` is what the `servers.state` column stores and the REST API
shows. Top-level states use their name; children of a compound state carry an explicit value dotted
with their parent's name (`provisioning.cloning`, `failed.stopping`). Compound states themselves
are never persisted: a server is always in exactly one leaf.

Decisions that the chart encodes (the doc header repeats them for readers of docs/lifecycle.md):

- `restart` from `running` (or `crashed`) goes straight to `starting`. The actor's side effect for
  that event is "ask the agent to restart the game", and `starting` already means "the game is on
  its way up, waiting for `ready`". A path through `stopping` would need the chart to remember the
  intent to start again, which a restored instance cannot do unless it is persisted.
- `failed` is compound so that the persisted string says which phase failed: `failed.provisioning`,
  `failed.starting`, `failed.stopping`. `retry` is therefore deterministic given the string alone:
  it re-enters `provisioning.cloning` (every provisioning step is an idempotent "ensure", so
  re-running the finished ones is cheap and safer than trusting a remembered step), `starting` or
  `stopping`. A single flat `failed` would have to guess, and retrying a failed stop must not start
  the game.
- `lost` (the container vanished) is accepted wherever a container should exist: from
  `provisioning.configuring` onwards, `starting`, `running`, `stopping`, `stopped`, `crashed` and
  every `failed.*`. `repaired` (it came back) leads to `stopped`: nothing is assumed to be running.
  `retry` re-provisions it from `provisioning.cloning` as a new container generation.
- `delete` is accepted in every non-final state, so a server can always be terminated. From
  `requested` nothing has been created yet (the actor writes the state before it acts), so it goes
  straight to `deleting.releasing`; from everywhere else it enters `deleting` at its initial step,
  `deleting.stopping_game`, and steps whose object is already gone complete trivially.
- Inside `deleting`, `delete` and `fail` are targetless transitions: accepted, nothing exited or
  entered, the server stays in the current step and the actor retries it. A repeated DELETE is
  harmless, and a failed destroy never lets a server leave the path to `deleted`.
- `stopped` and `crashed` are agent reports. A clean exit seen while `running` (an operator typing
  `/stop` in the console) is a report of `stopped`; `stop` from `starting` lets a user abort a game
  that hangs on its way up.

Library settings. `StateChart` defaults to ignoring events that match no transition and to turning
callback exceptions into `error.execution` events; both are switched off here, and a unit test pins
that an invalid event raises `TransitionNotAllowed`.

Naming trap. The events `stopped`, `crashed` and `lost` share their names with states. They are
declared as `Event(..., id=...)` under other attribute names; after class creation the class
attributes `Lifecycle.stopped`, `.crashed` and `.lost` are the *events*, so code that needs those
states must look them up in `Lifecycle.states_map`.
"""

from __future__ import annotations

from typing import Any

from statemachine import Event, State, StateChart


class Lifecycle(StateChart[Any]):
    """The lifecycle of one Minecraft server, from request to deletion."""

    allow_event_without_transition = False
    catch_errors_as_events = False

    requested = State(initial=True)

    class provisioning(State.Compound):
        cloning = State(value="provisioning.cloning", initial=True)
        configuring = State(value="provisioning.configuring")
        booting = State(value="provisioning.booting")
        enrolling = State(value="provisioning.enrolling")
        installing = State(value="provisioning.installing")

    starting = State()
    running = State()
    stopping = State()
    stopped = State()
    crashed = State()

    class failed(State.Compound):
        failed_provisioning = State(value="failed.provisioning", initial=True)
        failed_starting = State(value="failed.starting")
        failed_stopping = State(value="failed.stopping")

    lost = State()

    class deleting(State.Compound):
        stopping_game = State(value="deleting.stopping_game", initial=True)
        stopping_container = State(value="deleting.stopping_container")
        destroying = State(value="deleting.destroying")
        releasing = State(value="deleting.releasing")

    deleted = State(final=True)

    # Provisioning: one event per completed step; `installed` is the agent's report.
    create = requested.to(provisioning.cloning)
    cloned = provisioning.cloning.to(provisioning.configuring)
    configured = provisioning.configuring.to(provisioning.booting)
    booted = provisioning.booting.to(provisioning.enrolling)
    enrolled = provisioning.enrolling.to(provisioning.installing)
    installed = provisioning.installing.to(starting)

    # `ready` is sent only once the agent reported it and a Server List Ping confirmed it.
    ready = starting.to(running)
    start = stopped.to(starting) | crashed.to(starting)
    stop = running.to(stopping) | starting.to(stopping)
    restart = running.to(starting) | crashed.to(starting)
    agent_stopped = Event(stopping.to(stopped) | running.to(stopped), id="stopped")
    agent_crashed = Event(running.to(crashed) | starting.to(crashed), id="crashed")

    fail = (
        provisioning.to(failed.failed_provisioning)
        | starting.to(failed.failed_starting)
        # The crash policy gave up restarting the game: a start that does not hold is a failed start.
        | crashed.to(failed.failed_starting)
        | stopping.to(failed.failed_stopping)
        # Targetless: stay in the current deletion step. The library's stub for compound states
        # omits the `None` target its runtime accepts.
        | deleting.to(None)  # type: ignore[arg-type]
    )
    retry = (
        failed.failed_provisioning.to(provisioning.cloning)
        | failed.failed_starting.to(starting)
        | failed.failed_stopping.to(stopping)
        | lost.to(provisioning.cloning)
    )
    container_lost = Event(
        provisioning.configuring.to(lost)
        | provisioning.booting.to(lost)
        | provisioning.enrolling.to(lost)
        | provisioning.installing.to(lost)
        | starting.to(lost)
        | running.to(lost)
        | stopping.to(lost)
        | stopped.to(lost)
        | crashed.to(lost)
        | failed.to(lost),
        id="lost",
    )
    repaired = lost.to(stopped)

    delete = (
        requested.to(deleting.releasing)
        | provisioning.to(deleting)
        | starting.to(deleting)
        | running.to(deleting)
        | stopping.to(deleting)
        | stopped.to(deleting)
        | crashed.to(deleting)
        | failed.to(deleting)
        | lost.to(deleting)
        | deleting.to(None)  # type: ignore[arg-type]
    )
    game_stopped = deleting.stopping_game.to(deleting.stopping_container)
    container_stopped = deleting.stopping_container.to(deleting.destroying)
    destroyed = deleting.destroying.to(deleting.releasing)
    released = deleting.releasing.to(deleted)
