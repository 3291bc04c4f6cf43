"""Idempotency keys: the record that lets a retried create replay its first answer.

A request claims (tenant, key) with a fingerprint of what it asked (a SHA-256 of method, path and
canonical body). The primary key makes a second claim impossible, so of two concurrent requests
with one key exactly one proceeds; the other reads the record and either replays the stored answer,
reports "in progress" (no answer yet), or refuses a different request under the same key.

The batched forms (`get_many`, `forget`, `claim_many`, `complete_many`) do the same for a batch of
creates in one statement each; `claim_many` skips a key someone else holds instead of failing, so
one taken key does not fail the batch.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import uuid
from typing import Any

import orjson

from storage import database, queries
from zlh_actors import errors


@dataclasses.dataclass(frozen=True)
class Record:
    tenant: str
    key: str
    fingerprint: bytes
    server_id: uuid.UUID | None
    response_status: int | None
    response_body: Any
    created_at: datetime.datetime
    expires_at: datetime.datetime

    @property
    def completed(self) -> bool:
        return self.response_status is not None


def fingerprint(method: str, path: str, body: Any) -> bytes:
    """SHA-256 of the request in canonical form (sorted keys, no insignificant white space)."""
    canonical = orjson.dumps(body, option=orjson.OPT_SORT_KEYS)
    return hashlib.sha256(method.upper().encode() + b" " + path.encode() + b"\n" + canonical).digest()


async def claim(
    conn: database.Conn, tenant: str, key: str, print_: bytes, expires_at: datetime.datetime
) -> Record:
    """Claim the key for a new request; `IdempotencyKeyTaken` when someone holds it already."""
    return database.row(
        Record, await queries.fetchrow(conn, "insert_idempotency_key", tenant, key, print_, expires_at)
    )


async def get(conn: database.Conn, tenant: str, key: str) -> Record | None:
    record = await queries.fetchrow(conn, "get_idempotency_key", tenant, key)
    return None if record is None else database.row(Record, record)


Pair = tuple[str, str]  # (tenant, key)


async def get_many(conn: database.Conn, pairs: list[Pair]) -> dict[Pair, Record]:
    """The records of the pairs that have one, expired or not."""
    tenants, keys = [p[0] for p in pairs], [p[1] for p in pairs]
    records = await queries.fetch(conn, "get_idempotency_keys", tenants, keys)
    return {(r["tenant"], r["key"]): database.row(Record, r) for r in records}


async def forget(conn: database.Conn, pairs: list[Pair]) -> set[Pair]:
    """Delete those of the pairs whose key has expired (by the database's clock); return them."""
    tenants, keys = [p[0] for p in pairs], [p[1] for p in pairs]
    return {
        (r["tenant"], r["key"]) for r in await queries.fetch(conn, "forget_idempotency_keys", tenants, keys)
    }


async def claim_many(
    conn: database.Conn, claims: list[tuple[Pair, bytes]], expires_at: datetime.datetime
) -> set[Pair]:
    """Claim the keys for new requests; return those claimed. A key someone else holds is skipped
    (once its holder's transaction ends), never an error: its request is answered by that holder."""
    rows = await queries.fetch(
        conn,
        "claim_idempotency_keys",
        [pair[0] for pair, _ in claims],
        [pair[1] for pair, _ in claims],
        [print_ for _, print_ in claims],
        [expires_at] * len(claims),
    )
    return {(r["tenant"], r["key"]) for r in rows}


async def complete_many(conn: database.Conn, answers: list[tuple[Pair, uuid.UUID | None, int, Any]]) -> None:
    """Store the first answers of claimed keys (pair, server id, status, body); `Conflict` if any of
    them already has one or does not exist (a key keeps its first answer)."""
    records = await queries.fetch(
        conn,
        "complete_idempotency_keys",
        [pair[0] for pair, *_ in answers],
        [pair[1] for pair, *_ in answers],
        [server_id for _, server_id, _, _ in answers],
        [status for _, _, status, _ in answers],
        [body for *_, body in answers],
    )
    if len(records) != len(answers):
        raise errors.Conflict("idempotency key already has an answer, or does not exist")


async def forget_expired(conn: database.Conn, now: datetime.datetime) -> int:
    """Delete keys whose expiry has passed; return how many."""
    count: int = await queries.fetchval(conn, "delete_expired_idempotency_keys", now)
    return count
