"""What the owning actor does about a drift it is sent, and the command that carries it there.

The reconciler writes no server state. For a drift of one server (missing, power, agent) it puts a
`drift` command in that server's inbox; the commit NOTIFYs the owner, whose actor applies it like any
other command: in a fenced transaction under its lease epoch, through the chart, with the journal
entries carrying the command id and the reason in `detail`.

The observation is only trusted while it is still about the row that was observed. The reconciler
read the row before it looked at the world, so the command carries the row's `version`; if the
server changed since (a stop, a delete, a report, anything that bumps the version), the command is
rejected as stale and the next pass looks again. That is a compare-and-set on the observation,
the same rule as every other write to a server.

`events()` is the decision, pure: the chart events that bring the server to its desired state from
what was observed. The chart has the last word (`lifecycle.apply` refuses anything else), and the
actor applies all of them or none.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, TypedDict

from zlh_actors import errors
from zlh_actors.reconciler import drift

COMMAND_KIND: Final = "drift"
SERVER_KINDS: Final[frozenset[str]] = frozenset({"missing", "power", "agent"})


class Payload(TypedDict):
    """The payload of a `drift` command.

    kind, reason: as in `drift.Drift`. observed: what was seen. state, version, generation: the row
    the drift was found against.
    """

    kind: str
    reason: str
    observed: dict[str, Any]
    state: str
    version: int
    generation: int


def payload(found: drift.Drift) -> dict[str, Any]:
    """The command payload (a `Payload`) for a server-side drift."""
    if found.server is None or found.kind not in SERVER_KINDS:
        raise ValueError(f"a {found.kind} drift is not sent to an actor")
    return {
        "kind": found.kind,
        "reason": found.reason,
        "observed": dict(found.observed),
        "state": found.server.state,
        "version": found.server.version,
        "generation": found.server.generation,
    }


def parse(data: Mapping[str, Any]) -> Payload:
    """A command's payload as a `Payload`; `InvalidData` naming what is wrong."""
    kind = data.get("kind")
    if kind not in SERVER_KINDS:
        raise errors.InvalidData("unknown drift kind", kind=kind)
    for field, kind_of in (("reason", str), ("state", str), ("version", int), ("generation", int)):
        if not isinstance(data.get(field), kind_of):
            raise errors.InvalidData("malformed drift command", field=field)
    observed = data.get("observed")
    return {
        "kind": str(kind),
        "reason": str(data["reason"]),
        "observed": dict(observed) if isinstance(observed, Mapping) else {},
        "state": str(data["state"]),
        "version": int(data["version"]),
        "generation": int(data["generation"]),
    }


def events(kind: str, state: str, desired_state: str, observed: Mapping[str, Any]) -> list[str]:
    """The chart events that repair `kind` for a server in `state` that should be `desired_state`.

    Empty when the drift calls for nothing in this state. The caller checks them against the chart.

    - missing: `lost`. What follows (a new generation, or releasing what the server held) is the
      work of the `lost` state.
    - power, running but the container is stopped: `stopped`, then `start` if it should run.
    - power, stopped but the container runs: `start` if it should run; if it should stay stopped,
      `start` and `stop` in the same transaction, so that the `stopping` step stops the game and
      shuts the container down (the chart has no way from `stopped` to `stopping` of its own, and
      a user's stop of a stopped server stays refused). The `starting` step never runs.
    - agent, running but the game crashed: `crashed` (the crash policy takes it from there); the
      game stopped: as a stopped container.
    """
    should_run = desired_state == drift.RUNNING
    then_start = ["start"] if should_run else []
    if kind == "missing":
        return ["lost"]
    if kind == "power":
        seen = observed.get("proxmox")
        if state == drift.RUNNING and seen == drift.STOPPED:
            return ["stopped", *then_start]
        if state == drift.STOPPED and seen == drift.RUNNING:
            return ["start"] if should_run else ["start", "stop"]
        return []
    if kind == "agent" and state == drift.RUNNING and not observed.get("game_running", True):
        if observed.get("agent") == "crashed":
            return ["crashed"]
        return ["stopped", *then_start]
    return []
