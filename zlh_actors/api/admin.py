"""Admin views (admin tokens only): resident actors cluster-wide, shards and replicas, drift.

Actors live in the memory of whichever replica owns their shard, so `GET /admin/v1/actors` asks
every registered replica for its own (`?scope=local`, with the caller's admin token) and joins what
they say with each server's state and last transition from the database. A replica that does not
answer is listed under `unreachable` rather than failing the whole view.
"""

from __future__ import annotations

import asyncio
import datetime
from typing import Any

import aiohttp
from aiohttp import web

from storage import database, queries
from zlh_actors import errors
from zlh_actors.api import auth, bodies, keys
from zlh_actors.reconciler import reports

PEER_TIMEOUT = aiohttp.ClientTimeout(total=3)
LOCAL = "local"


def _only_local(request: web.Request) -> bool:
    """`?scope=local` (this replica alone, how replicas ask each other); any other scope is a 400."""
    scope = request.query.get("scope")
    if scope not in (None, LOCAL):
        raise errors.BadRequest("unknown scope", fields={"scope": f"must be {LOCAL!r} or absent"})
    return scope == LOCAL


def _local(request: web.Request) -> list[dict[str, Any]]:
    replica = request.app[keys.REPLICA]
    out = []
    for server_id in replica.registry.resident():
        actor = replica.registry.get(server_id)
        if actor is None:
            continue
        shard = replica.shard_of(server_id)
        lease = replica.leases.get(shard)
        out.append(
            {
                "server_id": str(server_id),
                "replica": str(replica.id),
                "shard": shard,
                "epoch": None if lease is None else lease.epoch,
                "mailbox_depth": actor.depth(),
                "restarts": actor.restarts,
            }
        )
    return out


async def _fan_out(request: web.Request, method: str, path: str) -> tuple[list[Any], list[dict[str, str]]]:
    """Ask every other registered replica for `path?scope=local` with the caller's admin token."""
    pool = request.app[keys.POOL]
    me = request.app[keys.REPLICA].id
    async with database.acquire(pool) as conn:
        peers = [
            row for row in await queries.fetch(conn, "list_replicas") if row["id"] != me and row["http_port"]
        ]

    async def ask(session: aiohttp.ClientSession, row: Any) -> Any:
        url = f"http://{row['host']}:{row['http_port']}{path}?scope={LOCAL}"
        headers = {"Authorization": request.headers["Authorization"]}
        async with session.request(method, url, headers=headers) as response:
            response.raise_for_status()
            return await response.json()

    async with aiohttp.ClientSession(timeout=PEER_TIMEOUT) as session:
        answers = await asyncio.gather(*(ask(session, row) for row in peers), return_exceptions=True)
    found, unreachable = [], []
    for row, answer in zip(peers, answers, strict=True):
        if isinstance(answer, BaseException):
            unreachable.append({"replica": str(row["id"]), "error": str(answer) or type(answer).__name__})
        else:
            found.append(answer)
    return found, unreachable


async def actors(request: web.Request) -> web.Response:
    auth.require_admin(request)
    if _only_local(request):
        return bodies.json_response({"actors": _local(request)})
    found = _local(request)
    answers, unreachable = await _fan_out(request, "GET", "/admin/v1/actors")
    for answer in answers:
        found.extend(answer["actors"])
    async with database.acquire(request.app[keys.POOL]) as conn:
        summaries = {
            str(row["id"]): row
            for row in await queries.fetch(conn, "actor_summaries", [item["server_id"] for item in found])
        }
    for item in found:
        summary = summaries.get(item["server_id"])
        if summary is not None:
            item.update(
                tenant=summary["tenant"],
                name=summary["name"],
                state=summary["state"],
                desired_state=summary["desired_state"],
                last_transition={"event": summary["last_event"], "at": summary["last_at"]},
            )
    found.sort(key=lambda item: item["server_id"])
    return bodies.json_response({"actors": found, "unreachable": unreachable})


async def drift(request: web.Request) -> web.Response:
    """The newest reconciliation report of every replica (each covers the shards it owned)."""
    auth.require_admin(request)
    latest = await reports.latest(request.app[keys.POOL])
    return bodies.json_response({"reports": [report.to_wire() for report in latest]})


async def reconcile(request: web.Request) -> web.Response:
    """Run a reconciliation now on every replica (each over its own shards) and return the reports."""
    auth.require_admin(request)
    only_local = _only_local(request)
    local = (await request.app[keys.RECONCILER].run_now()).to_wire()
    if only_local:
        return bodies.json_response(local)
    answers, unreachable = await _fan_out(request, "POST", "/admin/v1/reconcile")
    return bodies.json_response({"reports": [local, *answers], "unreachable": unreachable})


async def shards(request: web.Request) -> web.Response:
    auth.require_admin(request)
    async with database.acquire(request.app[keys.POOL]) as conn:
        leases = await queries.fetch(conn, "list_leases")
        replicas = await queries.fetch(conn, "list_replicas")
    lease_timeout = request.app[keys.REPLICA].settings.lease_timeout
    return bodies.json_response(
        {
            "shards": [
                {
                    "shard": row["shard"],
                    "epoch": row["epoch"],
                    "owner": row["owner"],
                    "acquired_at": row["acquired_at"],
                }
                for row in leases
            ],
            "replicas": [
                {
                    "id": row["id"],
                    "host": row["host"],
                    "pid": row["pid"],
                    "http_port": row["http_port"],
                    "started_at": row["started_at"],
                    "heartbeat_at": row["heartbeat_at"],
                    "live": row["heartbeat_age"] < lease_timeout,
                    "owned_shards": sum(1 for lease in leases if lease["owner"] == row["id"]),
                }
                for row in replicas
            ],
            "at": datetime.datetime.now(datetime.UTC),
        }
    )
