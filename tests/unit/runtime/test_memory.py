"""Idle actors stay cheap: a few KiB each, and no lifecycle chart kept between messages.

A regression guard, not a benchmark: it counts bytes and objects, never time. bench/actors.py
measures the same at 10,000 actors against baselines; this keeps 2,000 so the suite stays fast.
The handler has the server actor's shape without the database: every message goes through
`statemachines.lifecycle`, which may build a chart while the message is handled but must not leave
one behind.
"""

from __future__ import annotations

import gc
import tracemalloc
import uuid
from collections.abc import Iterator

import pytest

from statemachines import chart, lifecycle
from tests import helpers
from zlh_actors.runtime import actors

ACTORS = 2_000
LIMIT_BYTES = 10 * 1024

# Long enough that no actor passivates while the test looks at it.
RESIDENT = actors.Policy(idle_timeout=3600.0)


class ChartHandler:
    """Applies one lifecycle event per message; with `borrow`, also builds a throwaway chart."""

    def __init__(self, *, borrow: bool = False) -> None:
        self.borrow = borrow
        self.handled = 0

    async def __call__(self, key: uuid.UUID, message: str) -> str:
        state = lifecycle.apply("running", message)
        if self.borrow:
            # What the issue allows: a chart built while handling one message, dropped afterwards.
            state = lifecycle.persisted(lifecycle.restore(state))
        self.handled += 1
        return state


def registry(handler: ChartHandler) -> actors.Registry[uuid.UUID, str]:
    return actors.Registry("servers", handler, restart_message=lambda key: "stop", policy=RESIDENT)


def charts_alive() -> int:
    gc.collect()
    return sum(1 for obj in gc.get_objects() if isinstance(obj, chart.Lifecycle))


async def spawn_idle(
    reg: actors.Registry[uuid.UUID, str], handler: ChartHandler, keys: list[uuid.UUID]
) -> None:
    """Tell every key one message and wait until each actor has handled it and parked."""
    expected = handler.handled + len(keys)
    for key in keys:
        reg.tell(key, "stop")

    async def parked() -> bool:
        if handler.handled < expected:
            return False
        return all((actor := reg.get(key)) is not None and actor.waiter is not None for key in keys)

    await helpers.assert_eventually(parked, timeout=30, message="actors handled their message and parked")


@pytest.fixture
def tracing() -> Iterator[None]:
    started = not tracemalloc.is_tracing()
    if started:
        tracemalloc.start()
    try:
        yield
    finally:
        if started:
            tracemalloc.stop()


@pytest.mark.usefixtures("tracing")
async def test_an_idle_actor_costs_at_most_10_kib() -> None:
    handler = ChartHandler()
    reg = registry(handler)
    await reg.ask(
        uuid.uuid4(), "stop"
    )  # first-use allocations (chart cache, loop internals) are not per actor
    keys = [uuid.uuid4() for _ in range(ACTORS)]
    gc.collect()
    before = tracemalloc.take_snapshot()

    await spawn_idle(reg, handler, keys)

    gc.collect()
    stats = tracemalloc.take_snapshot().compare_to(before, "lineno")
    per_actor = sum(stat.size_diff for stat in stats) / ACTORS
    top = "\n".join(str(stat) for stat in stats[:5])
    assert len(reg) == ACTORS + 1
    assert per_actor <= LIMIT_BYTES, f"{per_actor:.0f} B per idle actor; biggest sites:\n{top}"
    await reg.shutdown(timeout=10)


async def test_no_idle_actor_holds_a_lifecycle_chart() -> None:
    already = charts_alive()  # charts other tests' kept tracebacks may hold; none of ours
    handler = ChartHandler(borrow=True)
    reg = registry(handler)

    await spawn_idle(reg, handler, [uuid.uuid4() for _ in range(ACTORS)])

    assert len(reg) == ACTORS
    assert charts_alive() == already
    await reg.shutdown(timeout=10)


def test_the_chart_count_sees_a_chart_that_is_kept() -> None:
    already = charts_alive()
    kept = [lifecycle.restore("running") for _ in range(3)]
    assert charts_alive() == already + len(kept)


async def test_an_idle_actor_keeps_nothing_from_its_last_message() -> None:
    already = charts_alive()

    async def returns_a_chart(key: uuid.UUID, message: str) -> chart.Lifecycle:
        handler.handled += 1
        return lifecycle.restore(lifecycle.apply("running", message))

    handler = ChartHandler()
    reg = actors.Registry("servers", returns_a_chart, restart_message=lambda key: "stop", policy=RESIDENT)

    await spawn_idle(reg, handler, [uuid.uuid4() for _ in range(200)])

    try:
        assert charts_alive() == already
    finally:
        await reg.shutdown(timeout=10)
