"""Servers map to a fixed number of shards; replicas own shards, never single servers.

Locking every server separately does not scale (PostgreSQL's lock table ran out of shared memory
after 12,857 session advisory locks in one session), so ownership is by shard: a replica that holds
a shard's advisory lock acts for every server in it. The mapping must be stable across processes,
releases and languages, so it is the first 32 bits of the MD5 of the server id's text form, modulo
the shard count; SQL's `zlh_shard(id, count)` computes the same (a test keeps them equal).
"""

from __future__ import annotations

import hashlib
import uuid

DEFAULT_COUNT = 64

# Advisory locks of shard leases use PostgreSQL's two-key form (namespace, shard), so they cannot
# collide with the single-key locks (the migration lock) or with anything else using another
# namespace. The value spells "zlhs".
LOCK_NAMESPACE = 0x7A6C6873


def shard_of(server_id: uuid.UUID, count: int) -> int:
    digest = hashlib.md5(str(server_id).encode(), usedforsecurity=False).hexdigest()
    return int(digest[:8], 16) % count


def fair_share(shards: int, live_replicas: int) -> int:
    """How many shards one of `live_replicas` replicas should hold: ceil(shards / replicas)."""
    return -(-shards // max(live_replicas, 1))
