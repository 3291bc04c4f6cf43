"""The generated lifecycle document: complete, stable, and written only where asked."""

from __future__ import annotations

from pathlib import Path

import pytest

from statemachines import chart, docs, lifecycle


def test_render_is_deterministic_and_ends_with_one_newline() -> None:
    text = docs.render()
    assert text == docs.render()
    assert text.endswith("\n")
    assert not text.endswith("\n\n")


def test_the_diagram_declares_every_state_once() -> None:
    source = docs.mermaid()
    assert source.startswith("stateDiagram-v2\n")
    for state in chart.Lifecycle.states_map.values():
        declarations = [
            line
            for line in source.splitlines()
            if line.strip() in (state.id, f"state {state.id} {{") or line.strip().endswith(f" as {state.id}")
        ]
        assert len(declarations) == 1, state.id
    assert "    [*] --> requested" in source
    assert "    deleted --> [*]" in source


def test_the_diagram_draws_compound_declarations_once_and_notes_targetless_ones() -> None:
    source = docs.mermaid()
    assert "    provisioning --> failed_provisioning: fail" in source
    assert "    crashed --> starting: start, restart" in source
    assert "    note right of deleting" in source
    assert "deleting --> deleting" not in source


def test_the_tables_list_every_state_and_every_allowed_pair() -> None:
    text = docs.render()
    for state in lifecycle.STATES:
        assert f"| `{state}` |" in text
    for row in lifecycle.transition_table():
        assert f"| `{row.state}` | `{row.event}` | `{row.target}` |" in text


def test_main_prints_the_document(capsys: pytest.CaptureFixture[str]) -> None:
    assert docs.main([]) == 0
    assert capsys.readouterr().out == docs.render()


def test_main_write_replaces_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    target = tmp_path / "lifecycle.md"
    target.write_text("stale\n", encoding="utf-8")
    monkeypatch.setattr(docs, "DOC_PATH", target)
    assert docs.main(["--write"]) == 0
    assert target.read_text(encoding="utf-8") == docs.render()
