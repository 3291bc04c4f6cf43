"""The replica's garbage-collector policy: fewer young collections, rare full ones, startup frozen."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Iterator

import pytest

from zlh_actors import gcpolicy


@pytest.fixture
def restored() -> Iterator[None]:
    """No automatic collection during the test; then the test process's collector as it was (the
    policy is process-wide)."""
    before = gc.get_threshold()
    gc.disable()
    yield
    gc.enable()
    gc.unfreeze()
    gc.set_threshold(*before)


def test_configure_raises_every_threshold_above_the_defaults(restored: None) -> None:
    gcpolicy.configure()
    assert gc.get_threshold() == gcpolicy.THRESHOLDS
    assert all(ours > default for ours, default in zip(gcpolicy.THRESHOLDS, (700, 10, 10), strict=True))


def test_freeze_startup_exempts_what_is_alive_and_collects_first(restored: None) -> None:
    class Node:
        def __init__(self) -> None:
            self.me = self  # a reference cycle: only the collector frees it

    cycle = weakref.ref(Node())  # garbage already, kept only by its own cycle
    alive = [Node() for _ in range(100)]
    assert cycle() is not None
    gcpolicy.freeze_startup()
    assert cycle() is None  # collected before the freeze, not frozen with the rest
    assert gc.get_freeze_count() >= len(alive)
    assert not any(type(obj) is Node for obj in gc.get_objects())  # no collection walks the frozen
