"""The control plane's side of the agent protocol: signed calls to the agent at the container's IP.

The agent is addressed by the IP the database allocated, never by a host name: readiness must not
depend on DNS. Every call that changes something is signed with the enrollment key (see
`zlh_actors.agent.signing`); the agent refuses unsigned or stale requests. Inside a `guard.guarded`
block (a server actor's step) each of those calls runs the lease check before it is sent.
"""

from __future__ import annotations

import time
from typing import Any

import aiohttp
import orjson

from zlh_actors import errors, guard
from zlh_actors.agent import signing, wire


class AgentClient:
    def __init__(self, key: bytes, port: int, *, timeout: float = 5.0) -> None:
        signing.check_key(key)
        self._key = key
        self._port = port
        self._timeout = aiohttp.ClientTimeout(total=timeout, connect=min(timeout, 2.0))
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(timeout=self._timeout)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    def _url(self, ip: str, path: str) -> str:
        return f"http://{ip}:{self._port}{path}"

    async def status(self, ip: str) -> dict[str, Any] | None:
        """The agent's status, or None when it does not answer (not booted yet, or gone)."""
        try:
            async with self._http().get(self._url(ip, wire.STATUS_PATH)) as response:
                if response.status != 200:
                    return None
                data = await response.json()
        except (aiohttp.ClientError, TimeoutError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    async def _signed_post(self, ip: str, path: str, payload: Any) -> dict[str, Any]:
        guard.check()
        body = orjson.dumps(payload)
        headers = signing.sign(self._key, "POST", path, body, time.time())
        headers["Content-Type"] = "application/json"
        try:
            async with self._http().post(self._url(ip, path), data=body, headers=headers) as response:
                text = await response.text()
                status = response.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise errors.Transient(
                f"agent at {ip} did not answer: {exc or type(exc).__name__}", ip=ip
            ) from exc
        try:
            answer = orjson.loads(text) if text else {}
        except orjson.JSONDecodeError:
            answer = {"detail": text[:200]}
        if status >= 500:
            raise errors.Transient(f"agent at {ip} failed: {status}", ip=ip, answer=answer)
        if status >= 400:
            raise errors.Permanent(f"agent at {ip} refused {path}: {status}", ip=ip, answer=answer)
        return answer if isinstance(answer, dict) else {}

    async def enroll(self, ip: str, enrollment: wire.EnrollRequest) -> dict[str, Any]:
        return await self._signed_post(ip, wire.ENROLL_PATH, enrollment)

    async def start_game(self, ip: str, generation: int) -> dict[str, Any]:
        return await self._signed_post(ip, wire.START_PATH, {"generation": generation})

    async def stop_game(self, ip: str, generation: int) -> dict[str, Any]:
        return await self._signed_post(ip, wire.STOP_PATH, {"generation": generation})
