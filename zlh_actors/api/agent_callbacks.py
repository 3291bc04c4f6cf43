"""Agent callbacks: an agent reports its state; the report becomes a command for the server's actor.

The agent authenticates with the bearer token it was given at enrollment, issued per server and per
generation and stored hashed. A report can never cause provisioning, a second container or a
deletion: it is recorded (only if newer than the last one: a replayed or reordered sequence number
is acknowledged with 200 and ignored) and handed to the owning actor as a `report` command, which
the chart accepts or refuses like any other.

A callback costs two statements and no explicit transaction: the token lookup (which reads the
server's generation too) before the body is read, and one statement that records the report and
enqueues its command together. The generation is checked again when the actor applies the report,
under the server's lock, so nothing is lost by not locking it here.

The owner's wake-up. A report's insert NOTIFYs nothing (migration 0006): PostgreSQL serializes
commits that NOTIFY until their WAL flush, and a callback usually lands on the replica that owns
the server (an agent calls back the replica that provisioned it, unless `ZLH_CALLBACK_URL` names
a balancer in front of several). After the commit this handler looks at its replica's leases: if
it owns the server's shard, it wakes the actor directly; otherwise it NOTIFYs `zlh_commands`
itself, for the owner's inbox. Looking after the commit is what makes the direct wake-up enough:
should the shard move on afterwards, its next owner rescans the shard once it holds the lease, and
finds the command. A wake-up lost anyway (the replica dies between the commit and the NOTIFY) is
caught by the owner's sweep, as any lost notification is.
"""

from __future__ import annotations

import logging
import re
import uuid

from aiohttp import web

from storage import agents, commands, database
from zlh_actors import errors
from zlh_actors.agent import wire
from zlh_actors.api import auth, bodies, keys

log = logging.getLogger(__name__)

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
    if report["generation"] != token.generation or token.generation < token.server_generation:
        raise errors.StaleGeneration(
            "report from an older generation",
            generation=report["generation"],
            current=token.server_generation,
        )
    sha = report["manifest_sha256"] if _SHA256.match(report["manifest_sha256"]) else None
    detail = report["detail"][:MAX_DETAIL]
    async with database.acquire(pool) as conn:
        kept = await agents.record_report(
            conn,
            server_id,
            generation=report["generation"],
            seq=report["seq"],
            state=report["state"],
            manifest_sha256=sha,
            detail=detail or None,
            command_id=uuid.uuid4(),
            payload={**report, "detail": detail},
        )
    if kept is None:
        request.app[keys.METRICS].inc("zlh_stale_agent_reports_total")
        return web.json_response({"status": "ignored", "reason": "stale_seq"})
    await _wake_owner(request, kept)
    return web.json_response({"status": "accepted"}, status=202)


async def _wake_owner(request: web.Request, command: commands.Command) -> None:
    """After the commit: wake the actor here if this replica owns the server, else tell the owner."""
    replica = request.app[keys.REPLICA]
    if replica.owns(command.server_id):
        replica.route(command.server_id)
        return
    try:
        async with database.acquire(request.app[keys.POOL]) as conn:
            await commands.announce(conn, command)
    except errors.ZlhError as exc:
        # The report is recorded and its command queued: the owner's sweep will find it.
        log.warning("could not announce report %s to the owner of %s: %s", command.id, command.server_id, exc)
