"""API tokens: only a SHA-256 of each token is stored, with its tenant and role.

Tokens are random (32 bytes, URL-safe), so a plain SHA-256 is enough: there is nothing to brute
force, and a lookup by hash needs no per-token salt. A token is only ever revoked through `revoke`,
whose notification lets replicas cache lookups without missing a revocation.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import secrets
import uuid

from storage import database, queries
from zlh_actors import errors

ROLES = ("user", "admin")
# Revoking a token NOTIFYs this channel with the token's hash in hex, delivered at commit: replicas
# that cache lookups (zlh_actors/api/auth.py) drop what they know when they hear it.
REVOKED_CHANNEL = "zlh_tokens"


@dataclasses.dataclass(frozen=True)
class Token:
    id: uuid.UUID
    token_hash: bytes
    tenant: str
    role: str
    label: str
    created_at: datetime.datetime
    revoked_at: datetime.datetime | None


def digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


async def create(conn: database.Conn, tenant: str, role: str, label: str = "") -> tuple[Token, str]:
    """A new token for the tenant; returns the record and the secret (shown once, never stored)."""
    if role not in ROLES:
        raise errors.InvalidData(f"role must be one of {', '.join(ROLES)}", role=role)
    secret = "zlh_" + secrets.token_urlsafe(32)
    record = await queries.fetchrow(conn, "insert_token", uuid.uuid4(), digest(secret), tenant, role, label)
    return database.row(Token, record), secret


async def authenticate(conn: database.Conn, secret: str) -> Token | None:
    """The live token matching the secret, or None."""
    record = await queries.fetchrow(conn, "get_token_by_hash", digest(secret))
    return None if record is None else database.row(Token, record)


async def live(conn: database.Conn) -> list[Token]:
    """Every token not revoked, oldest first."""
    return [database.row(Token, record) for record in await queries.fetch(conn, "live_tokens")]


async def revoke(conn: database.Conn, token_id: uuid.UUID) -> Token:
    """Revoke a live token; every replica's cache of it is told on `REVOKED_CHANNEL` at commit."""
    record = await queries.fetchrow(conn, "revoke_token", token_id, REVOKED_CHANNEL)
    if record is None:
        raise errors.NotFound("no live token with this id", token_id=str(token_id))
    return database.row(Token, record)
