"""The lease check for requests the database cannot fence.

The database refuses a write under a lost lease (`runtime.fencing`), but Proxmox and the agents take
no such token with a request. So a server actor's step runs inside `guarded(check)`, and the clients
that change something outside the database call the check just before each request they send:
`proxmox.client` on the worker thread that sends it (first try or retry), `agent_client` before each
signed POST. An error the check raises (`OwnershipLost`) is the request's, and the request is not sent.

Without it, a replica frozen (SIGSTOP) while a clone waited out the template's lock sent that clone
from its retry loop when it woke, after the new owner had deleted the server, and left a container
behind (`python -m bench.peer`). The check asks no database, so it is cheap enough for every request
and adds no round trip to the path of a replica whose sessions a peer has just terminated.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator

Check = Callable[[], None]

_CHECK: contextvars.ContextVar[Check | None] = contextvars.ContextVar("zlh_guard", default=None)


@contextlib.contextmanager
def guarded(check: Check) -> Iterator[None]:
    """Within the block, requests outside the database are checked. Tasks started in the block
    inherit the check (a copy of the context), so a task meant to outlive the step, shared by other
    servers, must not be started from one."""
    token = _CHECK.set(check)
    try:
        yield
    finally:
        _CHECK.reset(token)


def current() -> Check | None:
    """The check of the enclosing `guarded` block, for a caller that runs it elsewhere (a thread)."""
    return _CHECK.get()


def check() -> None:
    """Run the check of the enclosing `guarded` block, if there is one."""
    run = _CHECK.get()
    if run is not None:
        run()
