"""One `/v1/stream` WebSocket per tenant, for the whole run, and what the streams tell.

Each tenant's reader stays subscribed through every fault: when its replica is killed, frozen or
restarted it reconnects to the next one with the cursor of the last message it processed, as
docs/stream.md tells a client to. Every event is a server the tenant was shown (`ClientLog.saw`),
and feeds the `Tracker`, from which the scenario learns each server's state as it changes (that is
how a delete lands *as* a server enters a provisioning step, not a poll later).

At the end, once the system is quiescent, `findings` compares what each tenant received with the
journal: the stream promises every entry of the caller's servers exactly once, in order per server,
across reconnects to any replica. A gap, a repeat or an entry out of order is a finding.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
from collections.abc import Callable, Mapping, Sequence

import aiohttp
import asyncpg

from zlh_actors.lab import invariants
from zlh_actors.lab.chaos import fleet as fleet_module

CONNECT_TIMEOUT = 5.0
# The server sends a heartbeat after 15 s of silence; longer than that means a frozen replica.
IDLE_TIMEOUT = 20.0
RECONNECT_DELAY = 0.2


class Tracker:
    """The latest state of every server as its tenant's stream reported it; waiting for a change."""

    def __init__(self) -> None:
        self._states: dict[str, str] = {}
        self._wakers: dict[str, asyncio.Event] = {}

    def state(self, server_id: str) -> str | None:
        return self._states.get(server_id)

    def update(self, server_id: str, state: str) -> None:
        self._states[server_id] = state
        waker = self._wakers.pop(server_id, None)
        if waker is not None:
            waker.set()

    async def wait(self, server_id: str, done: Callable[[str | None], bool], timeout: float) -> bool:
        """Until `done(state)` holds for the server (True), or `timeout` passes (False)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not done(self._states.get(server_id)):
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            waker = self._wakers.setdefault(server_id, asyncio.Event())
            try:
                await asyncio.wait_for(waker.wait(), remaining)
            except TimeoutError:
                return done(self._states.get(server_id))
        return True


class TenantStream:
    """A tenant's stream reader. Attributes count what it did, for the summary."""

    def __init__(
        self,
        tenant: str,
        token: str,
        fleet: fleet_module.Fleet,
        tracker: Tracker,
        log: invariants.ClientLog,
        route: int,
    ) -> None:
        self.tenant, self._token, self._fleet, self._tracker, self._log = tenant, token, fleet, tracker, log
        self._route = route
        self.cursor = "0-0"
        self.received: dict[str, list[int]] = collections.defaultdict(list)  # server id -> seqs, in order
        self.events = 0
        self.connections = 0
        self._task: asyncio.Task[None] | None = None

    def start(self, http: aiohttp.ClientSession) -> None:
        self._task = asyncio.create_task(self._run(http), name=f"chaos:stream-{self.tenant}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _run(self, http: aiohttp.ClientSession) -> None:
        while True:
            urls = self._fleet.urls
            url = f"{urls[self._route % len(urls)]}/v1/stream"
            self._route += 1
            # A dead, frozen or restarting replica: resume from the cursor on the next.
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError, KeyError):
                await self._read(http, url)
            await asyncio.sleep(RECONNECT_DELAY)

    async def _read(self, http: aiohttp.ClientSession, url: str) -> None:
        headers = {"Authorization": f"Bearer {self._token}"}
        async with asyncio.timeout(CONNECT_TIMEOUT):
            socket = await http.ws_connect(url, params={"since": self.cursor}, headers=headers)
        async with socket:
            self.connections += 1
            while True:
                message = await socket.receive(timeout=IDLE_TIMEOUT)
                if message.type is not aiohttp.WSMsgType.TEXT:
                    return  # closed (1001 on shutdown, 4008 too slow, ...): reconnect
                self._take(json.loads(message.data))

    def _take(self, data: Mapping[str, object]) -> None:
        if data.get("type") == "server.state":
            server_id, seq, state = str(data["server_id"]), data["seq"], str(data["to"])
            if not isinstance(seq, int):
                raise ValueError(f"an event without a whole seq: {data}")
            self.received[server_id].append(seq)
            self.events += 1
            self._log.saw(self.tenant, server_id, "stream")
            self._tracker.update(server_id, state)
        cursor = data.get("cursor")
        if isinstance(cursor, str):
            self.cursor = cursor

    def behind(self, journal: Mapping[str, int]) -> int:
        """How many of the tenant's journal entries (server id -> last seq) it has not received yet."""
        return sum(
            max(0, last - len(self.received.get(server_id, []))) for server_id, last in journal.items()
        )

    def findings(self, journal: Mapping[str, int]) -> list[str]:
        """Every way what it received differs from the journal (server id -> last seq) of its servers."""
        found = []
        for server_id, last in sorted(journal.items()):
            got = self.received.get(server_id, [])
            if got != list(range(1, last + 1)):
                found.append(
                    f"tenant {self.tenant}, server {server_id}: the journal has seq 1-{last}, "
                    f"the stream delivered {_ranges(got)}"
                )
        for server_id in sorted(self.received.keys() - journal.keys()):
            found.append(f"tenant {self.tenant} received events of server {server_id}, not one of its own")
        return found


JOURNAL = """
SELECT s.tenant, j.server_id::text AS server_id, max(j.seq) AS last
FROM journal j JOIN servers s ON s.id = j.server_id
GROUP BY s.tenant, j.server_id
"""
CATCH_UP_POLL = 0.2


async def catch_up(readers: Sequence[TenantStream], pool: asyncpg.Pool, timeout: float) -> list[str]:
    """Once the system is quiescent: wait (up to `timeout`) until every reader has received the
    whole journal of its tenant's servers, then compare; the findings."""
    journals: dict[str, dict[str, int]] = collections.defaultdict(dict)
    for row in await pool.fetch(JOURNAL):
        journals[row["tenant"]][row["server_id"]] = row["last"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if not any(reader.behind(journals[reader.tenant]) for reader in readers):
            break
        await asyncio.sleep(CATCH_UP_POLL)
    return [finding for reader in readers for finding in reader.findings(journals[reader.tenant])]


def _ranges(seqs: list[int]) -> str:
    """[1, 2, 3, 5, 5] -> "1-3, 5, 5": short enough to read in a report line."""
    if not seqs:
        return "nothing"
    parts: list[str] = []
    start = previous = seqs[0]
    for seq in [*seqs[1:], None]:
        if seq is not None and seq == previous + 1:
            previous = seq
            continue
        parts.append(str(start) if start == previous else f"{start}-{previous}")
        if seq is not None:
            start = previous = seq
    return ", ".join(parts)
