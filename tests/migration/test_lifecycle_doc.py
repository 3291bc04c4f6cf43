"""The committed docs/lifecycle.md is exactly what the chart renders today."""

from __future__ import annotations

from statemachines import docs


def test_committed_lifecycle_doc_matches_the_chart() -> None:
    regenerate = f"regenerate it with `{docs.REGENERATE}` from the repository root"
    assert docs.DOC_PATH.is_file(), f"{docs.DOC_PATH} is missing: {regenerate}"
    committed = docs.DOC_PATH.read_text(encoding="utf-8")
    assert committed == docs.render(), (
        f"docs/lifecycle.md no longer matches statemachines/chart.py: {regenerate}"
    )
