"""The chaos client's probes of another tenant's server: every answer that shows the server exists
is logged as a sighting (which the checker holds against invariant 7); a 404, an overloaded or
failing replica and no answer at all are not."""

from __future__ import annotations

from typing import Any, cast

import pytest

from zlh_actors.lab import invariants
from zlh_actors.lab.chaos import client, tally
from zlh_actors.lab.chaos import fleet as fleet_module

THEIRS = "6f0c2d3e-0000-4000-8000-000000000001"


class _Answering(client.Api):
    """An Api whose every request gets the same answer, without a network."""

    def __init__(self, answer: client.Answer) -> None:
        self.counts = tally.Tally()
        super().__init__(cast(fleet_module.Fleet, None), {"beta": "t"}, invariants.ClientLog(), self.counts)
        self.answer = answer
        self.sent: list[tuple[str, str]] = []

    async def send(self, method: str, path: str, **_: Any) -> client.Answer:
        self.sent.append((method, path))
        return self.answer


@pytest.mark.parametrize("status", [200, 202, 403, 409])
async def test_an_answer_that_shows_the_server_is_a_sighting(status: int) -> None:
    api = _Answering(client.Answer(status, {"id": THEIRS}))
    try:
        await api.probe("beta", THEIRS, route=0)
    finally:
        await api.close()
    assert [method for method, _ in api.sent] == ["GET", "GET", "POST"]
    assert [(seen.tenant, seen.server_id) for seen in api.log.sightings] == [("beta", THEIRS)] * 3
    assert api.counts.operations[client.PROBE, str(status)] == 3


@pytest.mark.parametrize(
    "answer",
    [client.Answer(404, {"status": 404}), client.Answer(503, None), client.Answer(None, None, tally.TIMEOUT)],
)
async def test_a_404_or_no_answer_shows_nothing(answer: client.Answer) -> None:
    api = _Answering(answer)
    try:
        await api.probe("beta", THEIRS, route=0)
    finally:
        await api.close()
    assert api.log.sightings == []
    assert api.counts.issued(client.PROBE) == 3
