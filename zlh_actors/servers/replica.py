"""Assembly of a replica whose actors are server actors."""

from __future__ import annotations

import uuid

import asyncpg

from storage import queries
from zlh_actors import metrics
from zlh_actors.runtime import actors, ownership, replica
from zlh_actors.servers import actor, effects


def build(
    *,
    url: str,
    pool: asyncpg.Pool,
    work: effects.Effects,
    settings: ownership.LeaseSettings,
    policy: actors.Policy | None = None,
    http_port: int | None = None,
    http_host: str | None = None,
    sweep_interval: float = 5.0,
    replica_id: uuid.UUID | None = None,
    counters: metrics.Metrics | None = None,
    announce: actor.Announce | None = None,
) -> replica.Replica[actor.Wake]:
    handler = actor.ServerHandler(pool, work, counters, announce=announce)
    registry: actors.Registry[uuid.UUID, actor.Wake] = actors.Registry(
        "server",
        handler,
        restart_message=actor.Wake,
        on_give_up=handler.give_up,
        policy=policy or actors.Policy(),
        key_field="server_id",
    )

    async def find_pending(shards: list[int]) -> list[uuid.UUID]:
        async with pool.acquire() as conn:
            # At rest is `zlh_at_rest()` in SQL, the same states as `actor.REST_STATES` (a test checks).
            rows = await queries.fetch(conn, "servers_needing_attention", settings.shard_count, shards)
        return [row["id"] for row in rows]

    built = replica.Replica(
        url=url,
        pool=pool,
        registry=registry,
        wake=actor.Wake,
        find_pending=find_pending,
        settings=settings,
        http_port=http_port,
        http_host=http_host,
        sweep_interval=sweep_interval,
        replica_id=replica_id,
    )
    handler.bind(built)
    return built
