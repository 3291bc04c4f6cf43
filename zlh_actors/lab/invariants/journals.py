"""Invariant 5: every server's journal replays through the lifecycle chart, with no gap in its seq.

Replay starts from nothing: the first entry (seq 1) must be the create's `request` into the chart's
initial state; each later entry must start where the previous one ended and be what
`lifecycle.apply(from_state, event)` computes (an event the chart refuses there, or one that leads
elsewhere, is a violation); the last entry must end in the state the server's row holds. The schema
already refuses gaps and discontinuities at insert time; replay is what it cannot check. Replay goes
on past a bad entry (from where that entry says it ended), so every bad entry is reported.
"""

from __future__ import annotations

import collections
import uuid

from statemachines import lifecycle
from zlh_actors import errors
from zlh_actors.lab.invariants import model
from zlh_actors.servers import create


def check(database: model.Database) -> list[model.Violation]:
    journals: dict[uuid.UUID, list[model.Entry]] = collections.defaultdict(list)
    for entry in database.journal:
        journals[entry.server_id].append(entry)
    found: list[model.Violation] = []
    servers = database.by_id()
    for server_id in sorted(journals.keys() - servers.keys(), key=str):
        found.append(model.Violation(5, f"journal of server {server_id}, which the database does not know"))
    for server in sorted(servers.values(), key=lambda server: str(server.id)):
        entries = sorted(journals.get(server.id, []), key=lambda entry: entry.seq)
        found.extend(
            model.Violation(5, f"server {server.id}: {why}") for why in replay(server.state, entries)
        )
    return found


def replay(state: str, entries: list[model.Entry]) -> list[str]:
    """What is wrong with one server's journal (sorted by seq) that should end in `state`."""
    if not entries:
        return ["has no journal"]
    problems = []
    expected_seq, at = 1, None
    for entry in entries:
        if entry.seq != expected_seq:
            if entry.seq < expected_seq:
                problems.append(f"seq {entry.seq} appears twice")
            else:
                problems.append(f"seq jumps from {expected_seq - 1} to {entry.seq}")
        expected_seq = entry.seq + 1
        label = f"seq {entry.seq} ({entry.from_state} -{entry.event}-> {entry.to_state})"
        if at is None:
            if (entry.from_state, entry.event, entry.to_state) != (
                None,
                create.REQUEST_EVENT,
                lifecycle.INITIAL_STATE,
            ):
                problems.append(
                    f"{label} does not start the journal with {create.REQUEST_EVENT} into "
                    f"{lifecycle.INITIAL_STATE}"
                )
        elif entry.from_state != at:
            problems.append(f"{label} starts from {entry.from_state}, but the journal was at {at}")
        else:
            problems.extend(f"{label} {why}" for why in _step(entry))
        at = entry.to_state
    if at != state:
        problems.append(f"the journal ends in {at}, but the server is {state}")
    return problems


def _step(entry: model.Entry) -> list[str]:
    assert entry.from_state is not None  # only the first entry has no origin
    try:
        target = lifecycle.apply(entry.from_state, entry.event)
    except errors.InvalidTransition as exc:
        return [f"is an event the chart rejects there (it allows {', '.join(exc.details['allowed'])})"]
    except errors.InvalidData:
        return ["starts from a state the chart does not have"]
    if target != entry.to_state:
        return [f"leads to {target} in the chart, not {entry.to_state}"]
    return []
