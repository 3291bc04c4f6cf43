"""The per-key actor registry: ordering, request/reply, bounds, passivation and supervision."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from tests import helpers
from zlh_actors import errors
from zlh_actors.runtime import actors

FAST = actors.Policy(mailbox_size=8, idle_timeout=0.05, max_restarts=2, restart_window=10, backoff_base=0.001)


class Recorder:
    """A handler that records what it saw and can be told to fail or block."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, object]] = []
        self.active: dict[str, int] = {}
        self.max_active = 0
        self.fail_on: set[object] = set()
        self.gate: asyncio.Event | None = None

    async def __call__(self, key: str, message: object) -> object:
        self.active[key] = self.active.get(key, 0) + 1
        self.max_active = max(self.max_active, self.active[key])
        try:
            if self.gate is not None:
                await self.gate.wait()
            await asyncio.sleep(0)
            self.seen.append((key, message))
            if message in self.fail_on:
                raise RuntimeError(f"boom on {message}")
            return f"{key}:{message}"
        finally:
            self.active[key] -= 1


def registry(
    handler: Recorder, policy: actors.Policy = FAST, on_give_up: Callable[..., object] | None = None
) -> actors.Registry[str, object]:
    async def give_up(key: str, exc: BaseException) -> None:
        if on_give_up is not None:
            on_give_up(key, exc)

    return actors.Registry(
        "test", handler, restart_message=lambda key: "restart", on_give_up=give_up, policy=policy
    )


async def test_messages_of_one_key_are_handled_in_order_one_at_a_time() -> None:
    handler = Recorder()
    reg = registry(handler, actors.Policy(mailbox_size=100, idle_timeout=1))
    for n in range(50):
        reg.tell("a", n)
        reg.tell("b", n)
    assert await reg.ask("a", "last") == "a:last"
    assert await reg.ask("b", "last") == "b:last"
    assert [m for k, m in handler.seen if k == "a"] == [*range(50), "last"]
    assert [m for k, m in handler.seen if k == "b"] == [*range(50), "last"]
    assert handler.max_active == 1
    await reg.shutdown(timeout=1)


async def test_ask_returns_the_handlers_exception() -> None:
    handler = Recorder()
    handler.fail_on = {"bad"}
    reg = registry(handler)
    with pytest.raises(RuntimeError, match="boom on bad"):
        await reg.ask("a", "bad")
    await reg.shutdown(timeout=1)


async def test_full_mailbox_is_an_overload_error() -> None:
    handler = Recorder()
    handler.gate = asyncio.Event()
    reg = registry(handler, actors.Policy(mailbox_size=3, idle_timeout=1))
    reg.tell("a", 0)
    await helpers.assert_eventually(lambda: _true(handler.active.get("a") == 1), timeout=2)
    for n in range(1, 4):
        reg.tell("a", n)
    with pytest.raises(errors.Overloaded):
        reg.tell("a", 4)
    handler.gate.set()
    await reg.shutdown(timeout=1)
    assert [m for _, m in handler.seen] == [0, 1, 2, 3]


async def _true(value: bool) -> bool:
    return value


async def test_idle_actor_passivates_and_respawns() -> None:
    handler = Recorder()
    reg = registry(handler)
    await reg.ask("a", 1)
    first = reg.get("a")
    assert first is not None
    await helpers.assert_eventually(
        lambda: _true(reg.get("a") is None), timeout=2, message="never passivated"
    )
    assert len(reg) == 0
    assert await reg.ask("a", 2) == "a:2"
    assert reg.get("a") is not first
    await reg.shutdown(timeout=1)


async def test_no_message_is_lost_to_passivation() -> None:
    handler = Recorder()
    reg = registry(handler, actors.Policy(mailbox_size=100, idle_timeout=0.001))
    sent = 0
    for _ in range(200):
        reg.tell("a", sent)
        sent += 1
        await asyncio.sleep(0.001 if sent % 3 else 0)
    await helpers.assert_eventually(lambda: _true(len(handler.seen) == sent), timeout=5)
    assert [m for _, m in handler.seen] == list(range(sent))


async def test_crash_restarts_with_the_restart_message() -> None:
    handler = Recorder()
    handler.fail_on = {"bad"}
    reg = registry(handler)
    reg.tell("a", "bad")
    await helpers.assert_eventually(lambda: _true(("a", "restart") in handler.seen), timeout=2)
    assert handler.seen[:2] == [("a", "bad"), ("a", "restart")]
    await reg.shutdown(timeout=1)


async def test_supervisor_gives_up_after_too_many_crashes() -> None:
    handler = Recorder()
    handler.fail_on = {"bad", "restart"}
    gave_up: list[tuple[str, BaseException]] = []
    reg = registry(handler, on_give_up=lambda key, exc: gave_up.append((key, exc)))
    reg.tell("a", "bad")
    await helpers.assert_eventually(lambda: _true(bool(gave_up)), timeout=2, message="never gave up")
    assert gave_up[0][0] == "a"
    # max_restarts=2: the original crash plus two restarts, then the third crash gives up.
    assert [m for _, m in handler.seen] == ["bad", "restart", "restart"]
    await helpers.assert_eventually(lambda: _true(reg.get("a") is None), timeout=2)


async def test_ownership_lost_stops_without_restart() -> None:
    seen: list[object] = []

    async def handler(key: str, message: object) -> None:
        seen.append(message)
        raise errors.OwnershipLost("gone")

    reg: actors.Registry[str, object] = actors.Registry(
        "test", handler, restart_message=lambda k: "restart", policy=FAST
    )
    reg.tell("a", "work")
    await helpers.assert_eventually(lambda: _true(reg.get("a") is None), timeout=2)
    assert seen == ["work"]


async def test_drain_finishes_queued_work_and_kill_does_not() -> None:
    handler = Recorder()
    handler.gate = asyncio.Event()
    reg = registry(handler, actors.Policy(mailbox_size=10, idle_timeout=5))
    for n in range(3):
        reg.tell("a", n)
        reg.tell("b", n)
    await reg.kill(["b"])
    handler.gate.set()
    await reg.drain(["a"], timeout=2)
    assert [m for k, m in handler.seen if k == "a"] == [0, 1, 2]
    assert [m for k, m in handler.seen if k == "b"] == []
    assert len(reg) == 0


async def test_shutdown_refuses_new_messages() -> None:
    reg = registry(Recorder())
    await reg.shutdown(timeout=1)
    with pytest.raises(errors.OwnershipLost):
        reg.tell("a", 1)
    await reg.shutdown(timeout=1)  # idempotent


async def test_transient_errors_are_retried_and_never_given_up() -> None:
    calls: list[object] = []

    async def flaky(key: str, message: object) -> None:
        calls.append(message)
        if len(calls) <= 6:
            raise errors.StorageUnavailable("database away")

    gave_up: list[str] = []

    async def give_up(key: str, exc: BaseException) -> None:
        gave_up.append(key)

    reg: actors.Registry[str, object] = actors.Registry(
        "test", flaky, restart_message=lambda k: "restart", on_give_up=give_up, policy=FAST
    )
    reg.tell("a", "work")
    await helpers.assert_eventually(lambda: _true(len(calls) == 7), timeout=5)
    assert gave_up == []
    assert calls == ["work", *["restart"] * 6]
    await reg.shutdown(timeout=1)
