"""What the CLI prints: aligned tables for people, JSON for scripts, progress on stderr.

Results go to stdout and everything about the process of getting them (progress, reconnections)
to stderr, so `zlh ... --json | jq` always reads a clean document. On a terminal the progress is
one line rewritten in place; anywhere else it is one line per change, which a log keeps readably.
"""

from __future__ import annotations

import dataclasses
import datetime
import sys
from collections.abc import Iterable, Sequence
from typing import Any, TextIO

import orjson

ERASE_LINE = "\r\x1b[K"


@dataclasses.dataclass
class Console:
    """Where output goes; `live` means stderr is a terminal, so progress may rewrite its line."""

    out: TextIO
    err: TextIO
    live: bool
    _status: str | None = None

    @classmethod
    def standard(cls) -> Console:
        return cls(out=sys.stdout, err=sys.stderr, live=sys.stderr.isatty())

    def print(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def status(self, text: str) -> None:
        """Progress: rewrites the current line on a terminal, else a line of its own."""
        if self.live:
            self._status = text
            self.err.write(ERASE_LINE + text)
        else:
            self.err.write(text + "\n")
        self.err.flush()

    def end_status(self) -> None:
        if self._status is not None:
            self.err.write("\n")
            self.err.flush()
            self._status = None

    def warn(self, text: str) -> None:
        """A message on stderr that keeps a progress line intact below it."""
        if self._status is not None:
            self.err.write(f"{ERASE_LINE}zlh: {text}\n{self._status}")
        else:
            self.err.write(f"zlh: {text}\n")
        self.err.flush()


def json_text(data: Any, *, compact: bool = False) -> str:
    return orjson.dumps(data, option=0 if compact else orjson.OPT_INDENT_2).decode()


def cell(value: Any) -> str:
    if value is None or value == "":
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    return str(value)


def table(header: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    """Columns padded to their widest cell, two spaces apart; the last one is not padded."""
    lines = [list(header), *([cell(value) for value in row] for row in rows)]
    widths = [max(len(line[n]) for line in lines) for n in range(len(header))]
    return "\n".join(
        "  ".join(text.ljust(width) for text, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def pairs(items: Iterable[tuple[str, Any]]) -> str:
    """`key  value` lines, keys aligned: one record, read top to bottom."""
    listed = [(key, cell(value)) for key, value in items]
    width = max((len(key) for key, _ in listed), default=0)
    return "\n".join(f"{key.ljust(width)}  {value}" for key, value in listed)


def when(text: str | None) -> str | None:
    """An API timestamp as `YYYY-MM-DD HH:MM:SSZ` (UTC), the form every table uses."""
    if not text:
        return None
    moment = datetime.datetime.fromisoformat(text)
    if moment.tzinfo is not None:
        moment = moment.astimezone(datetime.UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%SZ")


def address(server: dict[str, Any]) -> str | None:
    return f"{server['ip']}:{server['game_port']}" if server.get("ip") and server.get("game_port") else None


def servers(items: list[dict[str, Any]]) -> str:
    if not items:
        return "no servers"
    return table(
        ("ID", "NAME", "STATE", "ADDRESS", "MINECRAFT", "CREATED"),
        (
            (
                s["id"],
                s["name"],
                s["state"],
                address(s),
                s.get("minecraft_version"),
                when(s.get("created_at")),
            )
            for s in items
        ),
    )


def _resources(r: dict[str, Any]) -> str | None:
    return f"{r.get('memory_mb')} MiB, {r.get('cores')} cores, {r.get('disk_gb')} GiB" if r else None


def server(s: dict[str, Any]) -> str:
    fabric = s.get("fabric") or {}
    return pairs(
        [
            ("id", s["id"]),
            ("name", s["name"]),
            ("state", s["state"]),
            ("desired", s.get("desired_state")),
            ("address", address(s)),
            ("node", s.get("node")),
            ("vmid", s.get("vmid")),
            ("generation", s.get("generation")),
            ("minecraft", s.get("minecraft_version")),
            (
                "fabric",
                f"loader {fabric.get('loader')}, installer {fabric.get('installer')}" if fabric else None,
            ),
            ("resources", _resources(s.get("resources") or {})),
            ("mods", ", ".join(s.get("mods") or [])),
            ("last error", s.get("last_error")),
            ("created", when(s.get("created_at"))),
            ("updated", when(s.get("updated_at"))),
            ("deleted", when(s.get("deleted_at"))),
        ]
    )


def event(e: dict[str, Any]) -> str:
    """One transition: `at  server  from -> to  (event: detail)`."""
    at = datetime.datetime.fromisoformat(e["at"]).astimezone(datetime.UTC).strftime("%H:%M:%S.%f")[:-3]
    why = e.get("event") or ""
    if e.get("detail"):
        why += f": {e['detail']}"
    line = f"{at}Z  {e['server_id']}  {e.get('from') or '(new)'} -> {e['to']}"
    return f"{line}  ({' '.join(why.split())})" if why else line


def actors(body: dict[str, Any]) -> str:
    found = body.get("actors") or []
    text = (
        table(
            ("SERVER", "NAME", "TENANT", "STATE", "REPLICA", "SHARD", "EPOCH", "MAILBOX", "RESTARTS"),
            (
                (
                    a["server_id"],
                    a.get("name"),
                    a.get("tenant"),
                    a.get("state"),
                    a.get("replica"),
                    a.get("shard"),
                    a.get("epoch"),
                    a.get("mailbox_depth"),
                    a.get("restarts"),
                )
                for a in found
            ),
        )
        if found
        else "no resident actors"
    )
    return text + "".join(
        f"\nunreachable replica {u['replica']}: {u['error']}" for u in body.get("unreachable", [])
    )


def shards(body: dict[str, Any]) -> str:
    leases = table(
        ("SHARD", "OWNER", "EPOCH", "ACQUIRED"),
        (
            (s["shard"], s.get("owner"), s.get("epoch"), when(s.get("acquired_at")))
            for s in body.get("shards", [])
        ),
    )
    replicas = table(
        ("REPLICA", "HOST", "PORT", "PID", "LIVE", "SHARDS", "STARTED", "HEARTBEAT"),
        (
            (
                r["id"],
                r.get("host"),
                r.get("http_port"),
                r.get("pid"),
                r.get("live"),
                r.get("owned_shards"),
                when(r.get("started_at")),
                when(r.get("heartbeat_at")),
            )
            for r in body.get("replicas", [])
        ),
    )
    return f"{leases}\n\n{replicas}"


def drift(body: dict[str, Any]) -> str:
    reports = body.get("reports") or []
    if not reports:
        return "no reconciliation reports yet"
    blocks = []
    for report in reports:
        found = report.get("drifts") or []
        counts = ", ".join(f"{kind} {n}" for kind, n in (report.get("by_kind") or {}).items() if n)
        finished = when(report.get("finished_at"))
        head = f"replica {report['replica']}  {report.get('trigger')} pass finished {finished}"
        head += f"  shards {len(report.get('shards') or [])}  drifts {len(found)}"
        if counts:
            head += f" ({counts})"
        if report.get("error"):
            head += f"\n  error: {report['error']}"
        if found:
            head += "\n" + table(
                ("KIND", "SERVER", "VMID", "NODE", "REASON", "ACTION"),
                (
                    (
                        d["kind"],
                        d.get("server_id"),
                        d.get("vmid"),
                        d.get("node"),
                        d.get("reason"),
                        d.get("action"),
                    )
                    for d in found
                ),
            )
        blocks.append(head)
    return "\n\n".join(blocks)
