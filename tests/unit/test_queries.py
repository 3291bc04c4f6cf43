"""queries.sql parses into named blocks, each describing every parameter it takes."""

from __future__ import annotations

import re

import pytest

from storage import queries


def test_every_query_lists_its_parameters() -> None:
    found = queries.all_queries()
    assert len(found) >= 20
    for query in found.values():
        used = {int(n) for n in re.findall(r"\$(\d+)", query.sql)}
        described = {int(n) for n in re.findall(r"\$(\d+)", query.description)}
        assert used == described, f"{query.name}: uses {sorted(used)}, describes {sorted(described)}"
        if used:
            assert used == set(range(1, max(used) + 1)), f"{query.name} skips a parameter"


def test_malformed_blocks_are_refused() -> None:
    with pytest.raises(ValueError, match="no one-line description"):
        queries.parse("-- a --\nSELECT 1;\n")
    with pytest.raises(ValueError, match="defined twice"):
        queries.parse("-- a --\n-- one\nSELECT 1;\n-- a --\n-- two\nSELECT 2;\n")
    with pytest.raises(ValueError, match="no statement"):
        queries.parse("-- a --\n-- empty\n")
