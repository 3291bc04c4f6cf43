"""What a server actor does in the world, behind one small protocol.

The actor decides *whether* to act (the chart, the persisted state, the lease); an `Effects`
implementation decides *how*: it performs the idempotent work of the server's current state (clone,
configure, boot, enroll, wait for the install, start the game, stop, destroy, release) and says
which event completes it. Every `perform` must be safe to repeat after a crash at any instant,
because a new owner re-runs the step the database says the server is in.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Protocol

from storage import database, servers


@dataclasses.dataclass(frozen=True)
class Step:
    """The outcome of one `perform`.

    Attributes:
        event: the chart event to apply now (`None`: nothing happened yet).
        last_error: recorded with the event (for `fail`, the reason shown to users).
        detail: a note for the journal entry.
        retry_after: with no event, when to look again (seconds).
    """

    event: str | None = None
    last_error: str | None = None
    detail: str | None = None
    retry_after: float | None = None


class Writes(Protocol):
    """Fenced transactions under the actor's lease: the only way effects write to the database."""

    def transaction(self) -> contextlib.AbstractAsyncContextManager[database.Conn]: ...

    def ensure_lease_held(self) -> None:
        """`OwnershipLost` unless the actor's lease still holds, judged without the database (the
        lease is still this replica's and its heartbeat is fresh): the check `guard` runs before
        each request to Proxmox or an agent. Safe to call from a worker thread."""


class Effects(Protocol):
    def deadline(self, state: str) -> float | None:
        """Seconds a server may stay in `state` before it fails; None for no limit."""

    async def perform(self, server: servers.Server, writes: Writes) -> Step:
        """Do the idempotent work of `server.state` and say what happened."""
