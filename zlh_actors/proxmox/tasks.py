"""PVE tasks: parsing UPIDs and waiting for a task to end.

Every slow PVE operation (clone, start, shutdown, destroy) answers at once with a UPID and goes on
in a worker on one node. A UPID names that node
(`UPID:<node>:<pid>:<pstart>:<starttime>:<type>:<id>:<user>:`), and the task's status can only be
read there, so the waiter polls `/nodes/<node>/tasks/<upid>/status` until `status` is `stopped`.

Success is an exit status of `OK` or `WARNINGS: <n>` (PVE's own test). Anything else is the error
message of the task, translated by the same classifier as request errors, with the last lines of
the task log attached so an operator sees why without opening the PVE UI.

A poll that fails transiently (the node's API restarting, a dropped connection) does not end the
wait: a five-minute clone must survive a blip. Only the deadline does, and running out of time is
`TaskWaitTimeout`, which says nothing about the task: it may still be running, or have finished
either way. The caller re-reads the state; it must not assume.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from typing import Any

from zlh_actors.proxmox import client as client_module
from zlh_actors.proxmox import errors, protocol

_UPID = re.compile(
    r"^UPID:(?P<node>[A-Za-z0-9.-]+):(?P<pid>[0-9A-Fa-f]+):(?P<pstart>[0-9A-Fa-f]+):(?P<starttime>[0-9A-Fa-f]+):"
    r"(?P<type>[^:]*):(?P<id>[^:]*):(?P<user>[^:]*):$"
)
_WARNINGS = re.compile(r"^WARNINGS: (?P<count>\d+)$")
# PVE's log endpoint pages; a failed task's log is rarely longer than one page.
_LOG_PAGE = 500
_LOG_PAGES_MAX = 20


@dataclasses.dataclass(frozen=True)
class Upid:
    """The parts of a UPID the driver uses."""

    text: str
    node: str
    type: str
    id: str
    user: str

    @classmethod
    def parse(cls, text: str) -> Upid:
        found = _UPID.match(text)
        if found is None:
            raise errors.Rejected(f"not a PVE task id: {text!r}", upid=text)
        return cls(text, found["node"], found["type"], found["id"], found["user"])


def warnings_of(exitstatus: str) -> int | None:
    """The warning count of a successful exit status, or None for a failure."""
    if exitstatus == "OK":
        return 0
    found = _WARNINGS.match(exitstatus)
    return int(found["count"]) if found else None


async def log_tail(client: client_module.Client, upid: Upid, lines: int) -> list[str]:
    """The task log's last `lines` lines; best effort (an error while reading gives what was read)."""
    tail: list[str] = []
    start = 0
    try:
        for _ in range(_LOG_PAGES_MAX):
            page = await client.get(f"nodes/{upid.node}/tasks/{upid.text}/log", start=start, limit=_LOG_PAGE)
            if not isinstance(page, list):
                break
            tail.extend(str(entry.get("t", "")) for entry in page if isinstance(entry, dict))
            tail = tail[-lines:]
            if len(page) < _LOG_PAGE:
                break
            start += len(page)
    except errors.ProxmoxError:
        pass
    return tail


def _status_of(answer: Any) -> tuple[str, str | None]:
    if not isinstance(answer, dict):
        raise errors.ProxmoxUnavailable("task status is not an object", cause="unexpected-response")
    exitstatus = answer.get("exitstatus")
    return str(answer.get("status", "")), None if exitstatus is None else str(exitstatus)


async def wait(client: client_module.Client, upid_text: str, deadline: float) -> protocol.TaskResult:
    """Poll the task's node until the task ends or `deadline` (`time.monotonic()`) passes."""
    upid = Upid.parse(upid_text)
    settings = client.settings
    interval = settings.task_poll_initial
    last_status: str | None = None
    last_error: errors.ProxmoxError | None = None
    while True:
        try:
            # One try per poll: this loop is the retry.
            answer = await client.get(f"nodes/{upid.node}/tasks/{upid.text}/status", attempts=1)
        except errors.ProxmoxUnavailable as exc:
            last_error = exc
        else:
            last_status, exitstatus = _status_of(answer)
            if last_status == "stopped":
                exitstatus = exitstatus or ""
                warnings = warnings_of(exitstatus)
                if warnings is not None:
                    return protocol.TaskResult(upid.text, upid.node, exitstatus, warnings)
                lines = await log_tail(client, upid, settings.task_log_lines)
                raise errors.from_task(upid.text, exitstatus, lines)
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise errors.TaskWaitTimeout(
                f"stopped waiting for task {upid.text}; its outcome is unknown",
                upid=upid.text,
                last_status=last_status,
                last_error=str(last_error) if last_error else None,
            )
        await asyncio.sleep(min(interval, remaining))
        interval = min(settings.task_poll_max, interval * 1.5)
