"""Connections to PostgreSQL, and the one place asyncpg errors become the project's typed errors.

Every store catches driver errors at its boundary with `raise database.translate(exc) from exc`, so
nothing above `storage/` ever handles an asyncpg exception. The translation is by constraint name:
the schema names each invariant, and each invariant the callers care about has its own error class.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeAlias, TypeVar

import asyncpg
import orjson

from zlh_actors import errors

T = TypeVar("T")

# What stores accept: a dedicated connection or one borrowed from the pool.
Connection: TypeAlias = "asyncpg.Connection[asyncpg.Record]"
Conn: TypeAlias = "asyncpg.Connection[asyncpg.Record] | asyncpg.pool.PoolConnectionProxy[asyncpg.Record]"

# Constraint (or unique index) name -> the error a caller can act on.
_CONFLICTS: dict[str, type[errors.Conflict]] = {
    "servers_live_name": errors.NameTaken,
    "vmid_allocations_live": errors.VmidAllocated,
    "vmid_allocations_one_per_server": errors.VmidAllocated,
    "ip_allocations_live": errors.IpAllocated,
    "ip_allocations_one_per_server": errors.IpAllocated,
    "port_allocations_live": errors.PortAllocated,
    "port_allocations_one_per_server": errors.PortAllocated,
    "idempotency_keys_pkey": errors.IdempotencyKeyTaken,
    "journal_pkey": errors.JournalConflict,
    "journal_gapless": errors.JournalConflict,
    "journal_continuous": errors.JournalConflict,
}

_UNAVAILABLE = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    # A connection whose session was terminated mid-operation (a replica woken from SIGSTOP after a
    # peer evicted it) can raise this instead of a connection error; it is no more than that.
    asyncpg.InternalClientError,
    asyncpg.CannotConnectNowError,
    asyncpg.TooManyConnectionsError,
    OSError,
    asyncio.TimeoutError,
)

# Everything asyncpg raises for a failed call (`translate` sorts them).
_DRIVER_ERRORS = (
    TimeoutError,
    asyncpg.PostgresError,
    asyncpg.InterfaceError,
    asyncpg.InternalClientError,
    OSError,
)

_RETRYABLE = (
    asyncpg.SerializationError,
    asyncpg.DeadlockDetectedError,
    asyncpg.LockNotAvailableError,
    asyncpg.QueryCanceledError,
)


def translate(exc: BaseException) -> errors.ZlhError:
    """The typed error for a driver exception (call as `raise translate(exc) from exc`)."""
    if isinstance(exc, errors.ZlhError):
        return exc
    constraint = getattr(exc, "constraint_name", None) or ""
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    if isinstance(exc, asyncpg.UniqueViolationError | asyncpg.ExclusionViolationError):
        conflict = _CONFLICTS.get(constraint, errors.Conflict)
        return conflict(message, constraint=constraint)
    if isinstance(exc, asyncpg.CheckViolationError | asyncpg.RaiseError) and constraint in _CONFLICTS:
        return _CONFLICTS[constraint](message, constraint=constraint)
    if isinstance(exc, asyncpg.IntegrityConstraintViolationError | asyncpg.DataError):
        return errors.InvalidData(message, constraint=constraint)
    if isinstance(exc, _RETRYABLE):
        return errors.Transient(message, sqlstate=getattr(exc, "sqlstate", None))
    if isinstance(exc, _UNAVAILABLE):
        return errors.StorageUnavailable(f"database unavailable: {message}")
    if isinstance(exc, asyncpg.InvalidCatalogNameError | asyncpg.InvalidAuthorizationSpecificationError):
        return errors.ConfigError(f"database refused the connection: {message}")
    return errors.Permanent(f"database error: {message}", sqlstate=getattr(exc, "sqlstate", None))


async def guarded(operation: Awaitable[T]) -> T:
    """Await a driver call, translating its errors."""
    try:
        return await operation
    except _DRIVER_ERRORS as exc:
        raise translate(exc) from exc


def _json_text(value: object) -> str:
    # Non-string keys become strings, as the standard library's encoder does.
    return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()


# The array types the stores' batched statements take. asyncpg learns an array type's codec by
# asking the server (one introspection query per statement that brings new ones, ~5-10 ms each) the
# first time a connection meets it: four of them, in the middle of the first batch of creates on
# every new pooled connection. Preparing one statement that names them all at connect asks once, there.
_ARRAY_PARAMETERS = (
    "SELECT $1::uuid[], $2::jsonb[], $3::inet[], $4::bytea[], $5::timestamptz[], $6::int4[], $7::int8[]"
)


async def _init_connection(conn: asyncpg.Connection) -> None:
    # jsonb travels as Python objects; the stores never see JSON text. orjson: several times faster
    # than the standard library in both directions, and every command and report goes through it.
    await conn.set_type_codec("jsonb", encoder=_json_text, decoder=orjson.loads, schema="pg_catalog")


async def _init_pooled(conn: asyncpg.Connection) -> None:
    await _init_connection(conn)
    await conn.prepare(_ARRAY_PARAMETERS)  # dedicated connections run none of the batched statements


async def _keep_session(conn: asyncpg.Connection) -> None:
    """The pool's reset: nothing beyond what asyncpg always does (roll back, drop listeners).

    asyncpg's default reset sends `pg_advisory_unlock_all(); CLOSE ALL; UNLISTEN *; RESET ALL` at
    every release: a round trip per transaction, for session state that no pooled connection ever
    holds here: LISTEN and the shard leases' session advisory locks live on dedicated connections
    (`connect`), transactions take transaction-scoped advisory locks only, nothing SETs a session
    setting or declares a cursor WITH HOLD, and the connection-level `server_settings` are the
    session's defaults (`RESET ALL` would keep them anyway). A pooled connection that took session
    state would now keep it for its next user: take such state on a dedicated connection.
    """


async def connect(
    url: str, *, timeout: float = 10.0, server_settings: dict[str, str] | None = None
) -> Connection:
    """One dedicated connection (for leases, LISTEN and migrations, which a pool would break)."""
    conn = await guarded(asyncpg.connect(url, timeout=timeout, server_settings=server_settings))
    try:
        await guarded(_init_connection(conn))
    except BaseException:
        conn.terminate()  # failed or cancelled (its owner stopping) half-way: leave nothing open
        raise
    return conn


async def create_pool(
    url: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    timeout: float = 10.0,
    server_settings: dict[str, str] | None = None,
) -> asyncpg.Pool:
    """The shared pool for short transactions."""
    pool = await guarded(
        asyncpg.create_pool(
            url,
            min_size=min_size,
            max_size=max_size,
            timeout=timeout,
            init=_init_pooled,
            reset=_keep_session,
            server_settings=server_settings,
        )
    )
    assert pool is not None
    return pool


@contextlib.asynccontextmanager
async def acquire(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A pooled connection; a failure to get one (the database is down) is a typed error."""
    try:
        async with pool.acquire() as conn:
            yield conn
    except _DRIVER_ERRORS as exc:
        raise translate(exc) from exc


@contextlib.asynccontextmanager
async def transaction(pool: asyncpg.Pool) -> AsyncIterator[Conn]:
    """A pooled connection inside a transaction; driver errors (including at commit) are translated."""
    try:
        async with pool.acquire() as conn, conn.transaction():
            yield conn
    except _DRIVER_ERRORS as exc:
        raise translate(exc) from exc


def row(cls: Callable[..., T], record: asyncpg.Record | None) -> T:
    """Build a frozen dataclass from a record whose columns match its fields."""
    if record is None:
        raise errors.NotFound("no such record")
    return cls(**dict(record.items()))
