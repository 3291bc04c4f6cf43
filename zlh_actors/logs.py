"""Structured logs: one line per event, carrying the server, command, replica, shard and epoch.

The context travels in context variables, not in every call's arguments: an actor binds its server
id, shard and epoch once per wake-up (`bind`), a command handler binds the command id, and every log
line written inside (by our code, asyncpg or proxmoxer, and in `asyncio.to_thread` calls, which copy
the context) carries them. A call can add fields of its own with `extra={...}`.

Two formats, chosen by `ZLH_LOG_FORMAT`:
- `json` (the default, for journald and log shippers): one JSON object per line with `ts` (UTC,
  ISO 8601), `level`, `logger`, `msg`, the bound context, the call's extra fields and, for an
  exception, `exc` (the formatted traceback, inside the one line);
- `text`, for people at a terminal: the classic line with the context appended as `key=value`.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime
import logging
import sys
from collections.abc import Iterator
from typing import Any, TextIO

import orjson

FORMATS = ("json", "text")
# The context fields, in the order they are printed.
FIELDS = ("replica", "server_id", "command_id", "shard", "epoch")

_context: contextvars.ContextVar[dict[str, Any] | None] = contextvars.ContextVar(
    "zlh_log_context", default=None
)
_replica: contextvars.ContextVar[str | None] = contextvars.ContextVar("zlh_log_replica", default=None)
# What every LogRecord has of its own; anything else on a record came from `extra=`.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


@contextlib.contextmanager
def replica(replica_id: object) -> Iterator[None]:
    """Name the replica in every line logged inside, and by every task and thread started inside.

    A context variable rather than a global: tests run several replicas in one process.
    """
    token = _replica.set(str(replica_id))
    try:
        yield
    finally:
        _replica.reset(token)


@contextlib.contextmanager
def bind(**fields: Any) -> Iterator[None]:
    """Add `fields` (server_id, command_id, shard, epoch, ...) to every line logged inside."""
    merged = {**(_context.get() or {}), **{k: v for k, v in fields.items() if v is not None}}
    token = _context.set(merged)
    try:
        yield
    finally:
        _context.reset(token)


def context(record: logging.LogRecord) -> dict[str, Any]:
    """The fields of one line: the replica, the bound context, then the call's `extra`."""
    fields: dict[str, Any] = {}
    named = _replica.get()
    if named is not None:
        fields["replica"] = named
    fields.update(_context.get() or {})
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            fields[key] = value
    return fields


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "ts": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in context(record).items():
            line.setdefault(key, value)
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        elif record.exc_text:
            line["exc"] = record.exc_text
        return orjson.dumps(line, default=str).decode()


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:
        text = super().formatMessage(record)
        fields = context(record)
        if not fields:
            return text
        ordered = sorted(fields.items(), key=lambda item: _rank(item[0]))
        return text + " [" + " ".join(f"{key}={value}" for key, value in ordered) + "]"


def _rank(key: str) -> tuple[int, str]:
    return (FIELDS.index(key) if key in FIELDS else len(FIELDS), key)


def configure(level: str, fmt: str = "json", stream: TextIO | None = None) -> None:
    """Send every log record at `level` or above to `stream` (stderr) in `fmt`, replacing other handlers."""
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
