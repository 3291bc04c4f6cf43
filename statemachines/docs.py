"""Render docs/lifecycle.md from the chart itself, so the committed picture cannot drift from the code.

Two views, both read from `chart.Lifecycle` rather than written by hand:

- a Mermaid `stateDiagram-v2` of the transitions *as declared*: a transition declared on a compound
  state (`fail` from anywhere in `provisioning`) is one arrow from the compound box, which keeps
  the picture readable. Arrows between the same two states are merged into one label. Targetless
  transitions (accepted, no state change) have no arrow to draw, so they become a note.
- tables of the transitions *as they behave*, keyed by persisted value: `lifecycle.transition_table`
  asks the engine for every accepted (state, event) pair, so compound declarations appear expanded
  on each leaf and the "To" column is exactly what `lifecycle.apply` returns.

The output depends only on the chart's declaration order, never on dict or set iteration of
unordered data, so it is byte-for-byte stable. `tests/migration/test_lifecycle_doc.py` fails when the
committed file differs from `render()`.

Usage: `python -m statemachines.docs` prints the document; `--write` replaces docs/lifecycle.md.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from statemachine.state import State

from statemachines import chart, lifecycle

DOC_PATH = Path(__file__).resolve().parent.parent / "docs" / "lifecycle.md"
"""Where the committed document lives."""

REGENERATE = "python -m statemachines.docs --write"
"""The command that rewrites DOC_PATH; quoted in the document and in the drift test's message."""

_HEADER = f"""\
# Server lifecycle

<!-- Generated from statemachines/chart.py by `{REGENERATE}`. Do not edit by hand. -->

Each server follows one chart, declared in `statemachines/chart.py` with python-statemachine and
used through `statemachines/lifecycle.py` (`apply(state, event)`, `allowed_events(state)`).

**Persisted state.** The `servers.state` column holds exactly one leaf of the chart, as a flat
string. Top-level states are stored by name (`running`); sub-states of a compound state are
dotted (`provisioning.installing`, `failed.stopping`, `deleting.destroying`). Compound states
(`provisioning`, `failed`, `deleting`) are never stored. A server is restored from that string
without running any entry action.

**Rules.**

- `delete` is accepted in every state but `deleted`, so a server can always be terminated. From
  `requested` nothing exists yet and it goes straight to `deleting.releasing`; from everywhere
  else it enters `deleting.stopping_game`, and steps whose object is already gone complete at once.
- Inside `deleting`, `delete` and `fail` change nothing: a repeated DELETE is harmless, and a
  failed step stays where it is and is retried. Once deleting, a server only moves towards
  `deleted`.
- `fail` records the failed phase in the state: `failed.provisioning`, `failed.starting`,
  `failed.stopping`. `retry` returns to the start of that phase: `provisioning.cloning` (every
  provisioning step is idempotent, so finished ones are re-checked cheaply), `starting` or
  `stopping`. It depends on the persisted string alone.
- `restart` from `running` or `crashed` goes to `starting`: the actor asks the agent to restart the
  game and waits for `ready`, as for any start. `fail` from `crashed` (the crash policy gave up
  restarting the game) leads to `failed.starting`.
- `lost` (the container vanished) is accepted wherever a container should exist, from
  `provisioning.configuring` on. `repaired` leads to `stopped`; `retry` re-provisions from
  `provisioning.cloning` as a new container generation.
- `installed`, `ready`, `stopped` and `crashed` are agent reports; `ready` is sent only once a
  Server List Ping confirmed the game answers.
- Any other (state, event) pair is refused with `InvalidTransition`.
"""


def _walk(states: Iterable[State]) -> Iterator[State]:
    for state in states:
        yield state
        yield from _walk(state.states)


def _label(state: State) -> str:
    return str(state.value).rpartition(".")[2]


def _declare(state: State, indent: str) -> list[str]:
    if state.is_compound:
        lines = [f"{indent}state {state.id} {{"]
        initial = next(child for child in state.states if child.initial)
        lines.append(f"{indent}    [*] --> {initial.id}")
        for child in state.states:
            lines.extend(_declare(child, indent + "    "))
        lines.append(f"{indent}}}")
        return lines
    if _label(state) != state.id:
        return [f'{indent}state "{_label(state)}" as {state.id}']
    return [f"{indent}{state.id}"]


def mermaid() -> str:
    """The `stateDiagram-v2` source of the chart, without the code fence."""
    lines = ["stateDiagram-v2"]
    for state in chart.Lifecycle.states:
        lines.extend(_declare(state, "    "))
    initial = chart.Lifecycle.initial_state
    if initial is not None:
        lines.append(f"    [*] --> {initial.id}")
    arrows: dict[tuple[str, str], list[str]] = {}
    unchanged: dict[str, list[str]] = {}
    for state in _walk(chart.Lifecycle.states):
        for transition in state.transitions:
            if transition.initial:
                continue
            events = [event.id for event in transition.events]
            if transition.target is None:
                unchanged.setdefault(state.id, []).extend(events)
            else:
                arrows.setdefault((state.id, transition.target.id), []).extend(events)
    for (source, target), events in arrows.items():
        lines.append(f"    {source} --> {target}: {', '.join(events)}")
    for state in _walk(chart.Lifecycle.states):
        if state.final:
            lines.append(f"    {state.id} --> [*]")
    for source, events in unchanged.items():
        lines.extend(
            [
                f"    note right of {source}",
                f"        {', '.join(events)}: accepted, no state change",
                "    end note",
            ]
        )
    return "\n".join(lines)


def _states_table() -> list[str]:
    lines = ["| Persisted state | Kind | Accepted events |", "| --- | --- | --- |"]
    for state in lifecycle.STATES:
        if state == lifecycle.INITIAL_STATE:
            kind = "initial"
        elif state in lifecycle.FINAL_STATES:
            kind = "final"
        else:
            kind = ""
        events = ", ".join(f"`{event}`" for event in lifecycle.allowed_events(state)) or "(none)"
        lines.append(f"| `{state}` | {kind} | {events} |")
    return lines


def _transitions_table(table: Sequence[lifecycle.Transition]) -> list[str]:
    lines = ["| From | Event | To |", "| --- | --- | --- |"]
    for row in table:
        lines.append(f"| `{row.state}` | `{row.event}` | `{row.target}` |")
    return lines


def render() -> str:
    """The whole of docs/lifecycle.md, ending with one newline."""
    table = lifecycle.transition_table()
    parts = [
        _HEADER,
        "## Diagram\n",
        "```mermaid",
        mermaid(),
        "```\n",
        f"## Persisted states ({len(lifecycle.STATES)})\n",
        *_states_table(),
        "",
        f"## Events ({len(lifecycle.EVENTS)})\n",
        ", ".join(f"`{event}`" for event in lifecycle.EVENTS),
        "",
        f"## Transitions ({len(table)} allowed (state, event) pairs)\n",
        *_transitions_table(table),
    ]
    return "\n".join(parts) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m statemachines.docs", description="Render docs/lifecycle.md from the lifecycle chart."
    )
    parser.add_argument("--write", action="store_true", help=f"write {DOC_PATH} instead of printing")
    args = parser.parse_args(argv)
    text = render()
    if args.write:
        DOC_PATH.write_text(text, encoding="utf-8")
    else:
        sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
