"""Status reports to the control plane: numbered, persisted, delivered in order, retried.

Every state change becomes one report, `POST {callback_base}/agent/v1/servers/{server_id}/status`
with the enrollment's bearer token. The design follows from what the control plane needs to trust
them:

- `seq` is per agent and strictly increasing, also across agent restarts: it is written to the state
  directory *before* the report is queued, so a crash can skip a number but never reuse one. The
  control plane can drop any report whose seq is not above the last one it applied.
- One sender task delivers the queue in order; a report is not sent before the previous one was
  accepted or refused. Callers only enqueue, so a control plane that is down never blocks the
  agent's HTTP API or its game supervision.
- Network errors, timeouts, 408, 429 and 5xx are retried forever with capped, jittered exponential
  backoff (the control plane will come back; jitter keeps a fleet of agents from retrying in step).
  Any other 4xx is final for that report (a revoked token will not become valid by retrying) and the
  report is dropped with a warning.
- A report for a generation older than the current enrollment is dropped instead of retried: a
  re-enrolled agent must not stay stuck behind reports addressed with a superseded token.

The queue lives in memory: reports not delivered when the agent stops are lost, which is acceptable
because the agent reports its current state again when it starts and the control plane also polls
GET /v1/status (level-based: the latest state matters, not every edge).
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import random

import aiohttp

from zlh_actors.agent import state, wire

log = logging.getLogger(__name__)

BACKOFF_INITIAL = 0.2
BACKOFF_MAX = 5.0
REQUEST_TIMEOUT = 10.0


@dataclasses.dataclass(frozen=True)
class _Pending:
    url: str
    token: str
    body: wire.Report


class Reporter:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        store: state.StateDir,
        *,
        backoff_initial: float = BACKOFF_INITIAL,
        backoff_max: float = BACKOFF_MAX,
        request_timeout: float = REQUEST_TIMEOUT,
    ) -> None:
        self._session = session
        self._store = store
        self._backoff_initial = backoff_initial
        self._backoff_max = backoff_max
        self._timeout = aiohttp.ClientTimeout(total=request_timeout)
        self._seq = store.load_seq()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._oldest_generation = 0

    @property
    def seq(self) -> int:
        """The last sequence number used."""
        return self._seq

    def report(self, enrollment: wire.Enrollment, state_name: wire.ReportState, detail: str) -> wire.Report:
        """Number, persist the number, and queue a report; returns at once."""
        self._seq += 1
        self._store.save_seq(self._seq)
        body: wire.Report = {
            "generation": enrollment.generation,
            "seq": self._seq,
            "state": state_name,
            "manifest_sha256": enrollment.manifest_sha256,
            "detail": detail,
        }
        self._queue.put_nowait(_Pending(enrollment.report_url, enrollment.token, body))
        log.info("report seq=%d state=%s detail=%s", self._seq, state_name, detail)
        return body

    def supersede(self, generation: int) -> None:
        """Drop undelivered reports of generations older than `generation`."""
        self._oldest_generation = max(self._oldest_generation, generation)

    async def run(self) -> None:
        """Deliver queued reports in order, until cancelled."""
        while True:
            pending = await self._queue.get()
            try:
                await self._deliver(pending)
            finally:
                self._queue.task_done()

    async def drain(self, timeout: float) -> bool:
        """Wait until every queued report was delivered or dropped; False if `timeout` passed first."""
        try:
            await asyncio.wait_for(self._queue.join(), timeout)
        except TimeoutError:
            return False
        return True

    async def _deliver(self, pending: _Pending) -> None:
        delay = self._backoff_initial
        failures = 0
        payload = json.dumps(pending.body).encode("utf-8")
        headers = {"Authorization": f"Bearer {pending.token}", "Content-Type": "application/json"}
        while pending.body["generation"] >= self._oldest_generation:
            try:
                async with self._session.post(
                    pending.url, data=payload, headers=headers, timeout=self._timeout
                ) as response:
                    if 200 <= response.status < 300:
                        return
                    problem = f"HTTP {response.status}"
                    if response.status not in (408, 429) and response.status < 500:
                        log.warning(
                            "report seq=%d refused by %s (%s); dropped",
                            pending.body["seq"],
                            pending.url,
                            problem,
                        )
                        return
            except (aiohttp.ClientError, TimeoutError) as exc:
                problem = str(exc) or type(exc).__name__
            failures += 1
            # The first failure is news; the next ones, until it recovers, are not.
            level = logging.WARNING if failures == 1 else logging.DEBUG
            log.log(level, "report seq=%d not delivered (%s); retrying", pending.body["seq"], problem)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, self._backoff_max)
        log.info(
            "report seq=%d dropped: generation %d superseded", pending.body["seq"], pending.body["generation"]
        )
