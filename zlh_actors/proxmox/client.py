"""The async face of proxmoxer: a thread pool, one proxmoxer session per thread, typed errors, retries.

proxmoxer is synchronous and keeps one `requests.Session` per `ProxmoxAPI`; a Session is not
thread-safe. So every request runs on a dedicated `ThreadPoolExecutor`, and each worker thread builds
its own `ProxmoxAPI` on first use (kept in a `threading.local`). Each session mounts its own HTTP
adapter with a pool of exactly one connection: a thread never has two requests in flight, so
`pool_size` threads hold at most `pool_size` keep-alive connections and urllib3 never has to
discard one ("connection pool is full" is the symptom of many threads sharing a small pool).

Two PVE quirks are handled here, once, for every caller:
- Booleans are sent as 0/1. requests form-encodes Python `True` as "True"; PVE documents and
  writes its booleans as 0/1, and a parser that happens to take "True" today is no promise.
- Errors are translated into the typed tree at this boundary (`errors.translate`); nothing above
  sees a proxmoxer or requests exception.

Retries, and why they differ by method:
- A GET changes nothing, so a transient failure (connection reset, 5xx, client timeout) is retried
  up to `read_attempts` times with backoff.
- A write is retried only when PVE said clearly that it did not apply it because of a lock ("CT is
  locked (<kind>)", "can't lock file ... got timeout"), until the caller's lock deadline: a clone
  from a template serialises on the template's `disk` lock, and a backup or migration holds a
  guest for a while. Any other failure of a write is ambiguous (the response may be what got lost),
  so it goes up to the driver, which re-reads the state before trying again.

Guarded writes. Inside a `guard.guarded` block (a server actor's step), every write runs the block's
lease check on the worker thread, just before it sends each request, first try or retry: a write
that waited for a free thread is checked when it is sent, not when it was queued.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import random
import threading
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import proxmoxer
import requests
import requests.adapters

from zlh_actors import guard
from zlh_actors.proxmox import errors
from zlh_actors.proxmox import settings as settings_module

log = logging.getLogger(__name__)

T = TypeVar("T")
Param = str | int | float | bool | None
Encoded = dict[str, str | int | float]


def encode(params: Mapping[str, Param]) -> Encoded:
    """Parameters as PVE takes them: booleans as 1/0, None left out (PVE's "not given")."""
    out: Encoded = {}
    for key, value in params.items():
        if value is None:
            continue
        # bool is a subclass of int: test it first.
        out[key] = int(value) if isinstance(value, bool) else value
    return out


class Backoff:
    """Exponentially growing delays with jitter, for one sequence of retries.

    Each delay is half fixed and half random ("equal jitter"): the fixed half guarantees the wait
    grows, the random half keeps many callers that failed together (fifty clones waiting on one
    template lock) from retrying in lockstep.
    """

    def __init__(self, initial: float, cap: float) -> None:
        self._initial = initial
        self._cap = cap
        self._attempt = 0

    def next_delay(self) -> float:
        ceiling = min(self._cap, self._initial * 2.0**self._attempt)
        self._attempt += 1
        return ceiling / 2 + random.uniform(0, ceiling / 2)


async def retry(
    attempt: Callable[[], Awaitable[T]],
    *,
    retry_on: tuple[type[errors.ProxmoxError], ...],
    backoff: Backoff,
    attempts: int | None = None,
    deadline: float | None = None,
    what: str = "",
) -> T:
    """Await `attempt()` until it succeeds, retrying the given errors with backoff.

    Gives up (re-raising the last error, with the number of tries added to its details) after
    `attempts` tries or when the next delay would pass `deadline` (a `time.monotonic()` value).
    """
    tries = 0
    while True:
        tries += 1
        try:
            return await attempt()
        except retry_on as exc:
            delay = backoff.next_delay()
            if (attempts is not None and tries >= attempts) or (
                deadline is not None and time.monotonic() + delay > deadline
            ):
                exc.details.setdefault("tries", tries)
                raise
            log.info("retrying %s in %.2fs after try %d: %s", what, delay, tries, exc)
            await asyncio.sleep(delay)


class Client:
    """Requests to one PVE API endpoint, run on a thread pool and translated into typed errors.

    Paths are API paths without the /api2/json prefix, e.g. "nodes/pve1/lxc/100/config".
    """

    def __init__(self, settings: settings_module.ProxmoxSettings) -> None:
        self._settings = settings
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=settings.pool_size, thread_name_prefix="zlh-proxmox"
        )
        self._local = threading.local()
        # Every session made by a worker thread, so close() can close their sockets.
        self._sessions: list[requests.Session] = []
        self._sessions_lock = threading.Lock()
        self._closed = False

    @property
    def settings(self) -> settings_module.ProxmoxSettings:
        return self._settings

    def backoff(self) -> Backoff:
        return Backoff(self._settings.backoff_initial, self._settings.backoff_max)

    # --- on a worker thread ---------------------------------------------------------------------

    def _api(self) -> Any:
        api = getattr(self._local, "api", None)
        if api is None:
            s = self._settings
            api = proxmoxer.ProxmoxAPI(
                s.host,
                port=s.port,
                user=s.user,
                token_name=s.token_name,
                token_value=s.token_value,
                verify_ssl=s.verify,
                timeout=(s.connect_timeout, s.read_timeout),
                service="PVE",
                backend="https",
            )
            # proxmoxer offers no hook for the transport; its session is only reachable here.
            session: requests.Session = api._store["session"]
            # One connection per thread (see the module docstring); retries are ours, not urllib3's.
            session.mount(
                "https://", requests.adapters.HTTPAdapter(pool_connections=1, pool_maxsize=1, max_retries=0)
            )
            with self._sessions_lock:
                self._sessions.append(session)
            self._local.api = api
        return api

    def _call(self, method: str, path: str, params: Encoded, check: guard.Check | None = None) -> Any:
        if check is not None:
            check()  # here, not on the loop: the request may have waited for this thread
        try:
            resource = self._api()(path)
            if method == "GET":
                result = resource.get(**params)
            elif method == "POST":
                result = resource.post(**params)
            elif method == "PUT":
                result = resource.put(**params)
            elif method == "DELETE":
                result = resource.delete(**params)
            else:
                raise ValueError(f"unsupported method {method}")
        except (proxmoxer.ResourceException, proxmoxer.AuthenticationError, requests.RequestException) as exc:
            raise errors.translate(exc, method=method, path="/" + path) from exc
        # proxmoxer answers a 2xx body that is not JSON (a proxy's page) with {"errors": <bytes>}.
        if isinstance(result, dict) and set(result) == {"errors"} and isinstance(result["errors"], bytes):
            raise errors.ProxmoxUnavailable(
                f"Proxmox {method} /{path}: the answer is not JSON",
                cause="unparseable-response",
                method=method,
                path="/" + path,
            )
        return result

    # --- on the event loop ----------------------------------------------------------------------

    async def _once(
        self, method: str, path: str, params: Mapping[str, Param], check: guard.Check | None = None
    ) -> Any:
        if self._closed:
            raise errors.ProxmoxUnavailable("the Proxmox client is closed", cause="closed")
        call = functools.partial(self._call, method, path.lstrip("/"), encode(params), check)
        # The thread cannot be interrupted: if this coroutine is cancelled, the request still
        # finishes in the background and its answer is dropped. Callers re-read state anyway.
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    async def get(self, path: str, *, attempts: int | None = None, **params: Param) -> Any:
        """GET, retrying transient failures (`attempts` tries, default `read_attempts`)."""
        return await retry(
            lambda: self._once("GET", path, params),
            retry_on=(errors.ProxmoxUnavailable,),
            backoff=self.backoff(),
            attempts=attempts or self._settings.read_attempts,
            what=f"GET /{path.lstrip('/')}",
        )

    async def write(
        self, method: str, path: str, *, lock_deadline: float | None = None, **params: Param
    ) -> Any:
        """POST, PUT or DELETE. Retried only while PVE reports a held lock, until `lock_deadline`
        (a `time.monotonic()` value; None: not retried). Checked before each try (`guard`)."""
        check = guard.current()
        return await retry(
            lambda: self._once(method, path, params, check),
            retry_on=(errors.Locked, errors.LockTimeout),
            backoff=self.backoff(),
            attempts=1 if lock_deadline is None else None,
            deadline=lock_deadline,
            what=f"{method} /{path.lstrip('/')}",
        )

    async def post(self, path: str, *, lock_deadline: float | None = None, **params: Param) -> Any:
        return await self.write("POST", path, lock_deadline=lock_deadline, **params)

    async def put(self, path: str, *, lock_deadline: float | None = None, **params: Param) -> Any:
        return await self.write("PUT", path, lock_deadline=lock_deadline, **params)

    async def delete(self, path: str, *, lock_deadline: float | None = None, **params: Param) -> Any:
        return await self.write("DELETE", path, lock_deadline=lock_deadline, **params)

    async def close(self) -> None:
        """Wait for requests in flight, then close every session's connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        await asyncio.to_thread(self._executor.shutdown, wait=True, cancel_futures=True)
        with self._sessions_lock:
            sessions, self._sessions = self._sessions, []
        for session in sessions:
            session.close()
