"""Agent callbacks: an agent reports its state; the report becomes a command for the server's actor.

The agent authenticates with the bearer token it was given at enrollment, issued per server and per
generation and stored hashed. A report can never cause provisioning, a second container or a
deletion: it is recorded (only if newer than the last one: a replayed or reordered sequence number
is acknowledged with 200 and ignored) and handed to the owning actor as a `report` command, which
the chart accepts or refuses like any other.
"""

from __future__ import annotations

import re
import uuid

from aiohttp import web

from storage import agents, commands, database, servers
from zlh_actors import errors
from zlh_actors.agent import wire
from zlh_actors.api import auth, bodies, keys

_SHA256 = re.compile(r"^[0-9a-f]{64}$")
# What the container says ends up in the journal and in `last_error`: keep it to a readable size.
MAX_DETAIL = 1024
MAX_SEQ = 2**63 - 1  # agent_reports.seq is a bigint
NO_NUL = "^[^\x00]*$"  # PostgreSQL text cannot hold a NUL character
_NO_NUL = re.compile(NO_NUL)


async def report_status(request: web.Request) -> web.Response:
    secret = auth.bearer(request)
    if secret is None:
        raise errors.Unauthorized("missing agent token")
    try:
        server_id = uuid.UUID(request.match_info["server_id"])
    except ValueError:
        raise errors.NotFound("no such server") from None
    pool = request.app[keys.POOL]
    # The token is checked before the body is read: a caller without one costs a lookup, not a parse.
    async with database.acquire(pool) as conn:
        token = await agents.find_token(conn, secret)
    if token is None:
        raise errors.Unauthorized("invalid or revoked agent token")
    if token.server_id != server_id:
        raise errors.Forbidden("this token belongs to another server")
    data = await bodies.read_json(request)
    try:
        report = wire.parse_report(data)
    except wire.BadRequest as exc:
        raise errors.BadRequest("invalid report", fields={exc.field: exc.message}) from None
    if report["seq"] > MAX_SEQ:
        raise errors.BadRequest("invalid report", fields={"seq": f"must be at most {MAX_SEQ}"})
    for field, text in (("manifest_sha256", report["manifest_sha256"]), ("detail", report["detail"])):
        if not _NO_NUL.fullmatch(text):
            raise errors.BadRequest("invalid report", fields={field: "must not contain a NUL character"})
    async with database.transaction(pool) as conn:
        server = await servers.get(conn, server_id)
        if report["generation"] != token.generation or token.generation < server.generation:
            raise errors.StaleGeneration(
                "report from an older generation", generation=report["generation"], current=server.generation
            )
        sha = report["manifest_sha256"] if _SHA256.match(report["manifest_sha256"]) else None
        kept = await agents.record_report(
            conn,
            server_id,
            generation=report["generation"],
            seq=report["seq"],
            state=report["state"],
            manifest_sha256=sha,
            detail=report["detail"][:MAX_DETAIL] or None,
        )
        if kept is None:
            request.app[keys.METRICS].inc("zlh_stale_agent_reports_total")
            return web.json_response({"status": "ignored", "reason": "stale_seq"})
        await commands.enqueue(conn, server_id, "report", {**report, "detail": report["detail"][:MAX_DETAIL]})
    return web.json_response({"status": "accepted"}, status=202)
