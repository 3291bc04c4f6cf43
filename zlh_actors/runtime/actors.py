"""Per-key actors: one mailbox and one task per key, created on demand, gone when idle.

The model is kopf's per-object worker. Every message for a key goes through that key's mailbox and
is handled one at a time, in arrival order, by the key's only task; so two commands for one server
can never interleave. An actor exists only while it has work: it is spawned by the first message,
exits after `idle_timeout` seconds with an empty mailbox (passivation), and its `finally` removes
its own registry entry. Passivation and a racing `tell` cannot lose a message: the actor checks its
mailbox and removes itself in one step with no await between, so a message either lands before that
step (and is handled) or after it (and spawns a new actor).

An idle actor holds no lifecycle chart and no server row, only its mailbox and task: the handler
loads what it needs from the database for each message. That keeps 10,000 resident actors cheap.

Supervision (Temporal's style): a handler exception crashes the actor; the supervisor restarts it
after an exponential backoff with the `restart_message` (which makes the handler reload its state
from the database, never from memory), and gives up after `max_restarts` crashes within
`restart_window` seconds, calling `on_give_up`. `OwnershipLost` is not a crash: the actor stops at
once and is not restarted, because another replica owns the key now. A `Transient` error (the
database or Proxmox briefly unreachable) is not a crash either: the actor retries with backoff and
never gives up because of it.

Mailboxes are bounded: a `tell` to a full mailbox raises `Overloaded` rather than queueing without
limit. `ask` is request/reply: the handler's return value (or exception) comes back to the sender.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterable
from typing import Any, Generic, TypeVar

from zlh_actors import errors

log = logging.getLogger(__name__)

K = TypeVar("K", bound=Hashable)
M = TypeVar("M")

Handler = Callable[[K, M], Awaitable[Any]]


class _Stop:
    """The end-of-stream sentinel: the actor handles what is before it, then exits."""


STOP = _Stop()


@dataclasses.dataclass(frozen=True)
class Policy:
    mailbox_size: int = 64
    idle_timeout: float = 30.0
    max_restarts: int = 5
    restart_window: float = 60.0
    backoff_base: float = 0.1
    backoff_max: float = 5.0


class _Envelope:
    __slots__ = ("message", "reply")

    def __init__(self, message: Any, reply: asyncio.Future[Any] | None) -> None:
        self.message = message
        self.reply = reply


class Actor(Generic[K, M]):
    """One key's mailbox and task. Created and owned by a `Registry`."""

    __slots__ = ("closing", "key", "mailbox", "restarts", "task", "waiter")

    def __init__(self, key: K) -> None:
        self.key = key
        self.mailbox: collections.deque[_Envelope | _Stop] = collections.deque()
        self.closing = False
        self.restarts = 0
        self.task: asyncio.Task[None] | None = None
        # Created only while the actor waits for mail, so an idle actor costs one future, not an Event.
        self.waiter: asyncio.Future[None] | None = None

    def depth(self) -> int:
        return len(self.mailbox)


class Registry(Generic[K, M]):
    """All resident actors of one kind, keyed by id."""

    def __init__(
        self,
        name: str,
        handler: Handler[K, M],
        *,
        restart_message: Callable[[K], M],
        on_give_up: Callable[[K, BaseException], Awaitable[None]] | None = None,
        policy: Policy = Policy(),
        key_field: str = "key",
    ) -> None:
        """`key_field` names the key in the supervisor's structured log lines (e.g. "server_id")."""
        self.name = name
        self._key_field = key_field
        self._handler = handler
        self._restart_message = restart_message
        self._on_give_up = on_give_up
        self.policy = policy
        self._actors: dict[K, Actor[K, M]] = {}
        self._closed = False

    # --- sending ------------------------------------------------------------------------------

    def tell(self, key: K, message: M) -> None:
        """Queue a message for the key's actor, spawning it if needed; `Overloaded` if full."""
        self._put(key, _Envelope(message, None))

    async def ask(self, key: K, message: M, *, timeout: float | None = None) -> Any:
        """Queue a message and wait for the handler's result (or its exception)."""
        reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._put(key, _Envelope(message, reply))
        async with asyncio.timeout(timeout):
            return await reply

    def _put(self, key: K, envelope: _Envelope) -> None:
        if self._closed:
            raise errors.OwnershipLost(f"{self.name} actors are shut down", key=str(key))
        actor = self._actors.get(key)
        if actor is None or actor.closing:
            actor = self._spawn(key)
        if len(actor.mailbox) >= self.policy.mailbox_size:
            raise errors.Overloaded(
                "mailbox is full; try again later", key=str(key), depth=len(actor.mailbox)
            )
        actor.mailbox.append(envelope)
        self._wake(actor)

    @staticmethod
    def _wake(actor: Actor[K, M]) -> None:
        if actor.waiter is not None and not actor.waiter.done():
            actor.waiter.set_result(None)

    # --- lifecycle ----------------------------------------------------------------------------

    def _spawn(self, key: K) -> Actor[K, M]:
        actor: Actor[K, M] = Actor(key)
        self._actors[key] = actor
        actor.task = asyncio.create_task(self._supervise(actor), name=f"{self.name}:{key}")
        return actor

    def _fields(self, actor: Actor[K, M]) -> dict[str, str]:
        return {self._key_field: str(actor.key)}

    async def _supervise(self, actor: Actor[K, M]) -> None:
        crashes: collections.deque[float] | None = None  # created on the first crash: most actors never crash
        outages = 0
        try:
            while True:
                try:
                    await self._run(actor)
                    return
                except errors.OwnershipLost as exc:
                    log.warning(
                        "%s actor %s stopped: ownership lost (%s)",
                        self.name,
                        actor.key,
                        exc,
                        extra=self._fields(actor),
                    )
                    return
                except errors.Transient as exc:
                    # The database or Proxmox is briefly away: not the actor's fault, and no reason
                    # to give up on (and fail) the server. Retry, backing off to `backoff_max`.
                    outages += 1
                    delay = min(self.policy.backoff_base * 2 ** (outages - 1), self.policy.backoff_max)
                    log.warning(
                        "%s actor %s: %s; retrying in %.2fs",
                        self.name,
                        actor.key,
                        exc,
                        delay,
                        extra=self._fields(actor),
                    )
                    await asyncio.sleep(delay)
                    actor.mailbox.appendleft(_Envelope(self._restart_message(actor.key), None))
                    continue
                except Exception as exc:
                    now = time.monotonic()
                    if crashes is None:
                        crashes = collections.deque()
                    crashes.append(now)
                    while crashes and crashes[0] < now - self.policy.restart_window:
                        crashes.popleft()
                    actor.restarts += 1
                    if len(crashes) > self.policy.max_restarts:
                        log.error(
                            "%s actor %s failed %d times in %.0fs; giving up: %s",
                            self.name,
                            actor.key,
                            len(crashes),
                            self.policy.restart_window,
                            exc,
                            extra=self._fields(actor),
                        )
                        if self._on_give_up is not None:
                            await self._on_give_up(actor.key, exc)
                        return
                    delay = min(self.policy.backoff_base * 2 ** (len(crashes) - 1), self.policy.backoff_max)
                    log.warning(
                        "%s actor %s failed (%s: %s); restarting in %.2fs",
                        self.name,
                        actor.key,
                        type(exc).__name__,
                        exc,
                        delay,
                        exc_info=exc,
                        extra=self._fields(actor),
                    )
                    await asyncio.sleep(delay)
                    actor.mailbox.appendleft(_Envelope(self._restart_message(actor.key), None))
        except asyncio.CancelledError:
            log.debug("%s actor %s cancelled", self.name, actor.key)
            raise
        finally:
            self._retire(actor)

    async def _run(self, actor: Actor[K, M]) -> None:
        while True:
            if not actor.mailbox:
                if not await self._wait(actor):
                    return
                continue
            if not await self._deliver(actor.key, actor.mailbox.popleft()):
                return

    async def _deliver(self, key: K, envelope: _Envelope | _Stop) -> bool:
        """Handle one message; False at the end-of-stream sentinel.

        A method of its own so that the message and the handler's result are released when it
        returns: an idle actor, parked in `_wait`, must not keep its last message alive.
        """
        if isinstance(envelope, _Stop):
            return False
        try:
            result = await self._handler(key, envelope.message)
        except BaseException as exc:
            if envelope.reply is not None and not envelope.reply.done():
                envelope.reply.set_exception(exc)
            raise
        if envelope.reply is not None and not envelope.reply.done():
            envelope.reply.set_result(result)
        return True

    async def _wait(self, actor: Actor[K, M]) -> bool:
        """Wait for mail; False (and the actor is retired) once idle for `idle_timeout` seconds."""
        actor.waiter = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(self.policy.idle_timeout):
                await actor.waiter
        except TimeoutError:
            if actor.mailbox:
                return True
            # No await between this check and leaving the registry: a racing tell either saw us
            # (and its message is in the mailbox, handled above) or spawns a fresh actor.
            self._retire(actor)
            return False
        finally:
            actor.waiter = None
        return True

    def _retire(self, actor: Actor[K, M]) -> None:
        actor.closing = True
        if self._actors.get(actor.key) is actor:
            del self._actors[actor.key]
        while actor.mailbox:
            envelope = actor.mailbox.popleft()
            if isinstance(envelope, _Envelope) and envelope.reply is not None and not envelope.reply.done():
                envelope.reply.set_exception(errors.OwnershipLost("actor stopped", key=str(actor.key)))

    # --- stopping -----------------------------------------------------------------------------

    async def drain(self, keys: Iterable[K], *, timeout: float) -> None:
        """Let the keys' actors finish what is queued, then exit; cancel what is left at the deadline."""
        actors = [self._actors[key] for key in keys if key in self._actors]
        for actor in actors:
            actor.mailbox.append(STOP)
            actor.closing = True
            self._wake(actor)
        tasks = [actor.task for actor in actors if actor.task is not None]
        if not tasks:
            return
        _, late = await asyncio.wait(tasks, timeout=timeout)
        for task in late:
            task.cancel()
        if late:
            await asyncio.wait(late)
        for actor in actors:
            self._retire(actor)  # a task cancelled before it ever ran never reached its `finally`

    async def kill(self, keys: Iterable[K]) -> None:
        """Stop the keys' actors at once (their ownership is gone: finishing anything is unsafe)."""
        doomed = [self._actors[key] for key in keys if key in self._actors]
        tasks = []
        for actor in doomed:
            actor.closing = True
            if actor.task is not None:
                actor.task.cancel()
                tasks.append(actor.task)
        if tasks:
            await asyncio.wait(tasks)
        for actor in doomed:
            self._retire(actor)  # a task cancelled before it ever ran never reached its `finally`

    async def shutdown(self, *, timeout: float) -> None:
        """Drain every actor and refuse new messages; safe to call twice."""
        self._closed = True
        await self.drain(list(self._actors), timeout=timeout)

    # --- introspection ------------------------------------------------------------------------

    def resident(self) -> list[K]:
        return list(self._actors)

    def get(self, key: K) -> Actor[K, M] | None:
        return self._actors.get(key)

    def __len__(self) -> int:
        return len(self._actors)
