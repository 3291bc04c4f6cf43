"""The chaos run's REST client: a tenant's requests, spread over the replicas, retried as clients do.

Each request goes to one replica (`route` modulo the fleet, so a server's requests move round the
replicas deterministically) with a timeout; no answer (a killed replica refuses, a frozen one stays
silent) or a 5xx is retried on the next replica after a short back-off. Creates are retried with the
same `Idempotency-Key`, which is what makes a retry safe; other commands are retried as they are,
which may send one twice, as an impatient client would.

Everything a tenant is answered is recorded for the invariant checker: every create answer
(`ClientLog.created`, including the ones that never came), every answer to a command
(`ClientLog.commanded`) and every server id a tenant's token was shown (`ClientLog.saw`). Every
write request, and every probe of another tenant's server, is counted in the tally by kind and
outcome.

Probes. Now and then a tenant asks for a server of another tenant, whose id it learned out of band
(here: from the other tenant's create answers), as a curious or hostile tenant would: `GET` it, its
events, and `POST` a stop to it. Every answer must be a 404. Anything else under 500 (a 2xx, a 403
or a 409 that says the server exists, and in which state) counts as having seen it: a sighting the
checker holds against invariant 7.
"""

from __future__ import annotations

import asyncio
import dataclasses
import urllib.parse
from collections.abc import Mapping
from typing import Any

import aiohttp

from zlh_actors.lab import invariants
from zlh_actors.lab.chaos import fleet as fleet_module
from zlh_actors.lab.chaos import plan, tally

VERSIONS: Mapping[str, Any] = {
    "minecraft_version": "1.21.1",
    "fabric": {"loader": "0.16.14", "installer": "1.0.1"},
}
REQUEST_TIMEOUT = 10.0  # past a frozen replica's lease timeout: a frozen replica answers after SIGCONT
CREATE_ATTEMPTS = 8
COMMAND_ATTEMPTS = 4
BACKOFF, BACKOFF_MAX = 0.25, 4.0
PAGE = 100
PROBE = "probe of another tenant's server"
CREATE_KINDS = {
    "plain": "create",
    "duplicate": "create, duplicated key",
    "timeout": "create, retried after a timeout",
}


@dataclasses.dataclass(frozen=True)
class Answer:
    status: int | None  # None: no answer, and `failure` says why
    body: Any
    failure: str | None = None  # tally.REFUSED, TIMEOUT or CUT

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    @property
    def retryable(self) -> bool:
        return self.status is None or self.status >= 500


def _backoff(attempt: int) -> float:
    return float(min(BACKOFF * 2**attempt, BACKOFF_MAX))


class Api:
    def __init__(
        self,
        fleet: fleet_module.Fleet,
        tokens: Mapping[str, str],
        log: invariants.ClientLog,
        counts: tally.Tally,
    ) -> None:
        self._fleet, self._tokens, self.log, self._tally = fleet, tokens, log, counts
        self._http = aiohttp.ClientSession()

    async def close(self) -> None:
        await self._http.close()

    async def send(
        self,
        method: str,
        path: str,
        *,
        who: str,
        route: int,
        json: Any = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> Answer:
        urls = self._fleet.urls
        sent = {"Authorization": f"Bearer {self._tokens[who]}", **(headers or {})}
        try:
            async with self._http.request(
                method,
                urls[route % len(urls)] + path,
                json=json,
                headers=sent,
                timeout=aiohttp.ClientTimeout(total=timeout),
            ) as response:
                try:
                    body = await response.json(content_type=None)
                except ValueError:
                    body = None
                return Answer(response.status, body)
        except aiohttp.ClientConnectorError:
            return Answer(None, None, tally.REFUSED)  # a killed replica, or one not back yet
        except TimeoutError:
            return Answer(None, None, tally.TIMEOUT)  # a frozen replica, or the client's patience
        except aiohttp.ClientError:
            return Answer(None, None, tally.CUT)  # the connection broke mid-request

    # --- writes ---------------------------------------------------------------------------------

    async def _create_once(self, script: plan.Script, route: int, timeout: float) -> Answer:
        answer = await self.send(
            "POST",
            "/v1/servers",
            who=script.tenant,
            route=route,
            json={"name": script.name, **VERSIONS},
            headers={"Idempotency-Key": script.key},
            timeout=timeout,
        )
        body = answer.body if isinstance(answer.body, dict) else None
        self.log.created(script.tenant, script.key, answer.status, body)
        self._tally.operation(CREATE_KINDS[script.create], answer.status, answer.failure)
        return answer

    async def create(self, script: plan.Script) -> dict[str, Any] | None:
        """Create the script's server as its plan says; the server as answered, or None if never."""
        route = script.index
        answers: list[Answer] = []
        if script.create == "duplicate":
            answers = await asyncio.gather(
                *(self._create_once(script, route + n, REQUEST_TIMEOUT) for n in range(script.copies))
            )
            route += script.copies
        elif script.create == "timeout":
            answers = [await self._create_once(script, route, script.patience)]
            route += 1
        for attempt in range(CREATE_ATTEMPTS):
            found = next((answer for answer in answers if answer.ok), None)
            if found is not None:
                return found.body if isinstance(found.body, dict) else None
            if answers and not any(answer.retryable for answer in answers):
                return None  # refused (4xx): retrying the same request would be refused again
            if answers:
                await asyncio.sleep(_backoff(attempt))
            answers = [await self._create_once(script, route, REQUEST_TIMEOUT)]
            route += 1
        return None

    async def command(self, script: plan.Script, server_id: str, kind: str, label: str, route: int) -> Answer:
        """`kind` (start, stop, restart, retry, delete) for the server, retried on no answer or 5xx."""
        method, path = ("DELETE", f"/v1/servers/{server_id}")
        if kind != "delete":
            method, path = "POST", f"/v1/servers/{server_id}/{kind}"
        answer = Answer(None, None)
        for attempt in range(COMMAND_ATTEMPTS):
            if attempt:
                await asyncio.sleep(_backoff(attempt))
            answer = await self.send(method, path, who=script.tenant, route=route + attempt)
            self._tally.operation(label, answer.status, answer.failure)
            body = answer.body if isinstance(answer.body, dict) else None
            self.log.commanded(script.tenant, server_id, kind, answer.status, body)
            if body is not None and answer.ok:
                self._saw(script.tenant, body.get("id"), label)
            if not answer.retryable:
                break
        return answer

    # --- reads -----------------------------------------------------------------------------------

    def _saw(self, tenant: str, server_id: object, source: str) -> None:
        if isinstance(server_id, str):
            self.log.saw(tenant, server_id, source)

    async def get(self, tenant: str, server_id: str, route: int) -> dict[str, Any] | None:
        answer = await self.send("GET", f"/v1/servers/{server_id}", who=tenant, route=route)
        if answer.status != 200 or not isinstance(answer.body, dict):
            return None
        self._saw(tenant, answer.body.get("id"), "get")
        return answer.body

    async def events(self, tenant: str, server_id: str, route: int) -> None:
        answer = await self.send("GET", f"/v1/servers/{server_id}/events", who=tenant, route=route)
        if answer.status == 200 and isinstance(answer.body, dict):
            for item in answer.body.get("items", []):
                self._saw(tenant, item.get("server_id"), "events")

    async def list_all(self, tenant: str, route: int) -> int:
        """Page through the tenant's servers; how many it was shown (-1 if a page went unanswered)."""
        cursor: str | None = None
        shown = 0
        while True:
            path = f"/v1/servers?limit={PAGE}" + (f"&cursor={urllib.parse.quote(cursor)}" if cursor else "")
            answer = await self.send("GET", path, who=tenant, route=route)
            if answer.status != 200 or not isinstance(answer.body, dict):
                return -1
            for item in answer.body.get("items", []):
                self._saw(tenant, item.get("id"), "list")
                shown += 1
            cursor = answer.body.get("next_cursor")
            if not cursor:
                return shown

    async def probe(self, tenant: str, server_id: str, route: int) -> None:
        """Ask, as `tenant`, for another tenant's server (see the module docstring)."""
        for method, path in (
            ("GET", f"/v1/servers/{server_id}"),
            ("GET", f"/v1/servers/{server_id}/events"),
            ("POST", f"/v1/servers/{server_id}/stop"),
        ):
            answer = await self.send(method, path, who=tenant, route=route)
            self._tally.operation(PROBE, answer.status, answer.failure)
            if answer.status is not None and answer.status < 500 and answer.status not in (404, 429):
                self.log.saw(tenant, server_id, f"probe: {method} {path} answered {answer.status}")

    async def admin(self, method: str, path: str, route: int, timeout: float = 60.0) -> Answer:
        return await self.send(method, path, who="admin", route=route, timeout=timeout)
