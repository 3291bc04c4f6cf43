"""Invariant 6: every accepted command has its effect in the journal, and none was applied twice.

A command's effect is the journal entries that cite its id, and the server actor writes them in
the transaction that accepts it, so they are consecutive entries of its own server. What a
command must have left, by kind (zlh_actors/servers/actor.py):

- a user command (`actor.COMMAND_EVENTS`: create, start, stop, ...), accepted or done: exactly one
  entry, of its event;
- an agent `report`: none (a report that is only news) or one (`crashed`, `stopped`);
- a reconciler `drift`: at least one (the repair's events), all consecutive; while it is still
  `accepted`, exactly the events its result lists; once `done` (its result then holds only the
  state), one of the repairs `repairs.events` gives for its payload from the state it started in;
- a rejected command: none. A command still `queued` once the system is quiescent was never applied:
  that is a violation too (the API answered 202 for it).

And from the clients' side: every 2xx answer to a command names one (but a delete of a server
already deleted, which makes none), and the command a 2xx answer names, to a command or a create,
exists, of that server and of that kind (a create answer names its `create`). A command acknowledged
and then lost would otherwise leave nothing in the database to find; a command acknowledged and not
yet applied is a `queued` row, above. Assumes no settled command was forgotten during the run
(`ZLH_COMMAND_RETENTION`, a week by default): a forgotten one "does not exist".
"""

from __future__ import annotations

import collections
import uuid

from zlh_actors.lab.invariants import model
from zlh_actors.reconciler import drift, repairs
from zlh_actors.servers import actor

REPORT_KIND = "report"


def check(database: model.Database, log: model.ClientLog | None) -> list[model.Violation]:
    found: list[model.Violation] = []
    cited: dict[uuid.UUID, list[model.Entry]] = collections.defaultdict(list)
    for entry in database.journal:
        if entry.command_id is not None:
            cited[entry.command_id].append(entry)
    known = {command.id: command for command in database.commands}
    for command_id in sorted(cited.keys() - known.keys(), key=str):
        entry = cited[command_id][0]
        found.append(
            model.Violation(
                6,
                f"journal of server {entry.server_id} (seq {entry.seq}) cites command {command_id}, "
                "which does not exist",
            )
        )
    for command in sorted(known.values(), key=lambda command: str(command.id)):
        entries = sorted(cited.get(command.id, []), key=lambda entry: (str(entry.server_id), entry.seq))
        name = f"command {command.id} ({command.kind}, {command.status}) of server {command.server_id}"
        found.extend(model.Violation(6, f"{name} {why}") for why in _effect(command, entries))
    if log is not None:
        found.extend(_answered(database, log))
    return found


def _effect(command: model.Command, entries: list[model.Entry]) -> list[str]:
    problems = []
    if any(entry.server_id != command.server_id for entry in entries):
        problems.append("is cited by another server's journal")
    seqs = [entry.seq for entry in entries]
    if seqs and seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        problems.append(f"was applied more than once: journal entries {seqs} are not consecutive")
    events = [entry.event for entry in entries]
    if command.status == "queued":
        problems.append("was never applied (still queued)")
    elif command.status == "rejected":
        if entries:
            problems.append(f"was rejected, yet the journal records it ({', '.join(events)})")
    elif command.kind in actor.COMMAND_EVENTS:
        expected = actor.COMMAND_EVENTS[command.kind]
        if not entries:
            problems.append("has no effect in the journal")
        elif events != [expected]:
            problems.append(f"should be one {expected} in the journal, found {events}")
    elif command.kind == REPORT_KIND:
        if len(entries) > 1:
            problems.append(f"was applied {len(entries)} times ({', '.join(events)})")
        elif events and events[0] not in {event for event, _ in actor.REPORT_EVENTS.values()}:
            problems.append(f"recorded {events[0]}, which no agent report leads to")
    elif command.kind == repairs.COMMAND_KIND:
        problems.extend(_repair(command, entries))
    return problems


def _repair(command: model.Command, entries: list[model.Entry]) -> list[str]:
    """A drift command's entries against the repair it stands for.

    Its result lists the events applied while it is `accepted`. Once `done` the result holds only the
    state (settling it `done` overwrites it, in the apply transaction or in `actor._finish_commands`),
    so the repair is recomputed instead: the events `repairs.events` gives for the payload's kind and
    observation from the state the first entry starts in, for either desired state (the journal does
    not keep it). A repair applied twice back to back is consecutive, and only this comparison
    catches it.
    """
    if not entries:
        return ["has no effect in the journal"]
    events = [entry.event for entry in entries]
    result = model.decoded(command.result)
    listed = result.get("events") if isinstance(result, dict) else None
    if isinstance(listed, list):
        return [] if events == listed else [f"lists the repair {listed}, the journal has {events}"]
    payload = model.decoded(command.payload)
    start = entries[0].from_state
    if not isinstance(payload, dict) or start is None:
        return []
    observed = payload.get("observed")
    kind = str(payload.get("kind"))
    possible = sorted(
        {
            tuple(repairs.events(kind, start, desired, observed if isinstance(observed, dict) else {}))
            for desired in (drift.RUNNING, drift.STOPPED)
        }
        - {()}
    )
    if tuple(events) in possible:
        return []
    which = " or ".join(str(list(repair)) for repair in possible) or "nothing"
    return [f"should repair its {kind} drift in {start} with {which}, the journal has {events}"]


def _answered(database: model.Database, log: model.ClientLog) -> list[model.Violation]:
    """Every command a 2xx answer named (or should have), against the database's."""
    named: list[tuple[str | None, str, str | None]] = [
        (answer.server_id, "create", answer.command_id) for answer in log.answers if answer.command_id
    ]
    named += [
        (answer.server_id, answer.kind, answer.command_id) for answer in log.commands if answer.acknowledged
    ]
    known = {str(command.id): command for command in database.commands}
    found = []
    for server_id, kind, command_id in sorted(set(named), key=str):  # a replay or a retry: once
        command = known.get(command_id) if command_id is not None else None
        if command_id is None:
            found.append(f"the {kind} of server {server_id} was answered 2xx without naming a command")
        elif command is None:
            found.append(
                f"the {kind} of server {server_id} answered command {command_id}, which does not exist"
            )
        elif (str(command.server_id), command.kind) != (server_id, kind):
            found.append(
                f"the {kind} of server {server_id} answered command {command_id}, which is a "
                f"{command.kind} of server {command.server_id}"
            )
    return [model.Violation(6, detail) for detail in found]


def checked(database: model.Database) -> int:
    return len(database.commands)
