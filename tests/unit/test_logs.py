"""Structured logs: every line one JSON object carrying the bound context; text lines carry it too."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import uuid
from collections.abc import Iterator

import pytest

from zlh_actors import logs
from zlh_actors.runtime import actors


@pytest.fixture
def captured() -> Iterator[tuple[io.StringIO, logging.Logger]]:
    """A logger writing through `logs.configure`'s JSON handler into a buffer; the root restored after."""
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    stream = io.StringIO()
    logs.configure("DEBUG", "json", stream)
    try:
        yield stream, logging.getLogger("zlh_actors.test")
    finally:
        root.handlers[:], root.level = saved


def lines(stream: io.StringIO) -> list[dict[str, object]]:
    """This test's lines (asyncio's own debug lines left out)."""
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    return [line for line in parsed if line["logger"] == "zlh_actors.test"]


def test_a_line_carries_the_bound_context_and_the_calls_extra_fields(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = captured
    server, command = uuid.uuid4(), uuid.uuid4()
    with logs.replica("r-1"):
        with logs.bind(server_id=server, shard=3, epoch=7), logs.bind(command_id=command):
            log.info("moved %s", "on", extra={"vmid": 10001})
        log.warning("outside")
    log.warning("no replica")
    inside, outside, anonymous = lines(stream)
    assert inside["msg"] == "moved on"
    assert inside["level"] == "INFO"
    assert inside["logger"] == "zlh_actors.test"
    assert inside["server_id"] == str(server)
    assert inside["command_id"] == str(command)
    assert (inside["replica"], inside["shard"], inside["epoch"], inside["vmid"]) == ("r-1", 3, 7, 10001)
    assert str(inside["ts"]).endswith("+00:00")
    assert outside == {k: outside[k] for k in ("ts", "level", "logger", "msg", "replica")}
    assert "replica" not in anonymous


def test_an_exception_stays_inside_its_one_line(captured: tuple[io.StringIO, logging.Logger]) -> None:
    stream, log = captured
    try:
        raise ValueError("bad\nworse")
    except ValueError:
        log.exception("it broke")
    assert len(stream.getvalue().splitlines()) == 1
    (line,) = lines(stream)
    assert "ValueError: bad\nworse" in str(line["exc"])


async def test_context_follows_tasks_and_threads_started_inside(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, log = captured
    with logs.bind(server_id="s-1"):
        task = asyncio.create_task(asyncio.to_thread(log.info, "from a thread"))
    with logs.bind(server_id="s-2"):
        await task
        log.info("here")
    assert [(line["msg"], line["server_id"]) for line in lines(stream)] == [
        ("from a thread", "s-1"),
        ("here", "s-2"),
    ]


def test_text_lines_append_the_context_in_a_fixed_order() -> None:
    record = logging.LogRecord("zlh", logging.INFO, __file__, 1, "hello", None, None)
    record.vmid = 5
    with logs.bind(epoch=2, server_id="s", shard=1):
        text = logs.TextFormatter().format(record)
    assert text.endswith("INFO zlh: hello [server_id=s shard=1 epoch=2 vmid=5]")


def test_an_unknown_format_is_refused() -> None:
    with pytest.raises(ValueError, match="json, text"):
        logs.configure("INFO", "xml")


async def test_the_supervisors_lines_name_the_actors_key(
    captured: tuple[io.StringIO, logging.Logger],
) -> None:
    stream, _ = captured
    failed = asyncio.Event()

    async def handler(key: str, message: str) -> None:
        failed.set()
        raise RuntimeError("boom")

    registry: actors.Registry[str, str] = actors.Registry(
        "thing",
        handler,
        restart_message=str,
        policy=actors.Policy(max_restarts=0),
        key_field="server_id",
    )
    with pytest.raises(RuntimeError):
        await registry.ask("k-1", "go", timeout=5)
    await registry.shutdown(timeout=5)
    parsed = [json.loads(line) for line in stream.getvalue().splitlines()]
    supervisor = [line for line in parsed if line["logger"] == "zlh_actors.runtime.actors"]
    assert supervisor, "the supervisor logged nothing"
    assert all(line["server_id"] == "k-1" for line in supervisor)
