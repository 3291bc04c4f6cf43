"""One error tree for the whole control plane, shaped by what the caller should do.

- `Transient`: the operation may succeed if repeated later (storage unavailable, Proxmox 5xx/595,
  lock timeouts, connection resets). Retry with backoff.
- `Permanent`: repeating the same call gives the same answer (invalid transition, stale write,
  not found, a constraint violated, Proxmox 4xx). Do not retry; report.
- `OwnershipLost`: this process no longer owns the server. Stop acting for it at once, without retrying.

Driver errors (asyncpg, proxmoxer, requests) are translated into these at the boundary that talks to
the driver, with `raise ... from exc`; nothing above storage or the Proxmox driver sees a driver
exception. Every error carries structured attributes so logs and the API can render it without
parsing its message.
"""

from __future__ import annotations

from typing import Any


class ZlhError(Exception):
    """Root of every error the control plane raises on purpose.

    Attributes:
        message: a one-line, human-readable explanation.
        details: structured context (server id, state, event, Proxmox status...) for logs and APIs.
    """

    def __init__(self, message: str, **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def __str__(self) -> str:
        if not self.details:
            return self.message
        context = ", ".join(f"{key}={value!r}" for key, value in sorted(self.details.items()))
        return f"{self.message} ({context})"


class Transient(ZlhError):
    """The same call may succeed later: retry with backoff."""


class Permanent(ZlhError):
    """The same call will fail the same way: do not retry."""


class OwnershipLost(ZlhError):
    """Another process now owns the server (its shard epoch moved on): stop acting for it."""


class CapacityExhausted(Transient):
    """No free VMID, IP, game port or node memory is left in the configured ranges."""


class Overloaded(Transient):
    """A bounded queue (an actor's mailbox) is full: the caller should back off and try again."""


class ConfigError(Permanent):
    """The service's configuration is invalid; raised at start-up, rendered as one line."""


# --- storage -------------------------------------------------------------------------------------


class StorageUnavailable(Transient):
    """The database could not be reached or dropped the connection."""


class StaleWrite(Permanent):
    """A compare-and-set on (id, version) matched no row: someone else wrote first.

    Attributes (in `details`): server_id, expected_version.
    """


class NotFound(Permanent):
    """The addressed record does not exist (or is not visible to the caller)."""


class Conflict(Permanent):
    """A uniqueness rule of the schema refused the write.

    Attributes (in `details`): constraint, the name of the database constraint that refused it.
    """


class NameTaken(Conflict):
    """A live server with the same (tenant, name) already exists."""


class VmidAllocated(Conflict):
    """The VMID already has a live allocation."""


class PortAllocated(Conflict):
    """The (node, port) already has a live allocation."""


class IpAllocated(Conflict):
    """The IP address already has a live allocation."""


class IdempotencyKeyTaken(Conflict):
    """The (tenant, idempotency key) already has a record."""


class IdempotencyMismatch(Permanent):
    """An idempotency key was reused with a different request."""


class InProgress(Conflict):
    """The first request with this idempotency key has not finished yet."""


class StaleGeneration(Conflict):
    """A message from an older generation of a server (its container was replaced since)."""


class JournalConflict(Conflict):
    """A journal entry would leave a gap or a duplicate in the server's sequence."""


class Unauthorized(Permanent):
    """No valid credentials came with the request."""


class Forbidden(Permanent):
    """The credentials are valid but do not allow this."""


class BadRequest(Permanent):
    """A request from outside is malformed.

    Attributes (in `details`): fields, a mapping of each bad field to what is wrong with it.
    """


class InvalidData(Permanent):
    """A write broke a CHECK rule of the schema (bad state name, bad range...)."""


# --- lifecycle -----------------------------------------------------------------------------------


class InvalidTransition(Permanent):
    """The lifecycle chart does not allow this event in the current state.

    Attributes (in `details`): state, event, allowed (the events the state accepts).
    """
