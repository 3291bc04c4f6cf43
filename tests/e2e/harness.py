"""The whole system for end-to-end tests: the lab, the real PostgreSQL, and the control plane.

`Control` talks to the service only over HTTP, as the frontend and the CLI do; it also offers
read-only looks at the database and the lab for assertions ("exactly one container", "no allocation
left"). Replicas run either in this process (`service.running`) or as real `server.py` processes
(`ReplicaProcess`) when a test must kill one.
"""

from __future__ import annotations

import json
import random
import urllib.request
import uuid
from typing import Any

import aiohttp
import asyncpg

from tests import helpers
from zlh_actors import config
from zlh_actors.lab import settings as lab_settings
from zlh_actors.lab import world
from zlh_actors.lab.replicas import free_port

VERSIONS = {"minecraft_version": "1.21.1", "fabric": {"loader": "0.16.14", "installer": "1.0.1"}}


def subnet() -> str:
    """A loopback /16 of its own, so labs of concurrent test runs never share an address."""
    return f"127.{random.randint(21, 250)}.0.0/16"


def settings_for(lab: world.Lab, url: str, **overrides: Any) -> config.Settings:
    values: dict[str, Any] = {
        "database_url": url,
        "port": free_port(),
        "shards": 8,
        "heartbeat_interval": 0.2,
        "lease_timeout": 1.5,
        "step_timeout": 30.0,
        "install_timeout": 30.0,
        "pve_lock_wait": 2.0,
    }
    values.update(overrides)
    return lab_settings.applied(lab.settings, config.Settings(), **values)


def agent_status(ip: str, port: int) -> dict[str, Any]:
    """An agent's GET /v1/status, read directly (blocking: call it in a thread)."""
    with urllib.request.urlopen(f"http://{ip}:{port}/v1/status", timeout=5) as response:
        data: dict[str, Any] = json.loads(response.read())
        return data


class Control:
    """An HTTP client of the control plane, plus read-only looks at the database and the lab."""

    def __init__(
        self, base_urls: list[str], tokens: dict[str, str], lab: world.Lab, pool: asyncpg.Pool
    ) -> None:
        self.base_urls = base_urls
        self.tokens = tokens
        self.lab = lab
        self.pool = pool
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))

    async def close(self) -> None:
        await self.http.close()

    async def call(
        self,
        method: str,
        path: str,
        *,
        who: str = "alpha",
        json: Any = None,
        headers: dict[str, str] | None = None,
        replica: int = 0,
    ) -> tuple[int, Any, dict[str, str]]:
        sent = {"Authorization": f"Bearer {self.tokens[who]}", **(headers or {})}
        url = self.base_urls[replica % len(self.base_urls)] + path
        async with self.http.request(method, url, json=json, headers=sent) as response:
            body = await response.json(content_type=None)
            return response.status, body, dict(response.headers)

    def body(self, name: str, **changes: Any) -> dict[str, Any]:
        return {"name": name, **VERSIONS, **changes}

    async def create(
        self, name: str, *, key: str | None = None, who: str = "alpha", replica: int = 0, **changes: Any
    ) -> dict[str, Any]:
        status, body, _ = await self.call(
            "POST",
            "/v1/servers",
            who=who,
            json=self.body(name, **changes),
            headers={"Idempotency-Key": key or str(uuid.uuid4())},
            replica=replica,
        )
        assert status == 202, body
        assert isinstance(body, dict)
        return body

    async def get(self, server_id: str, who: str = "alpha") -> dict[str, Any]:
        status, body, _ = await self.call("GET", f"/v1/servers/{server_id}", who=who)
        assert status == 200, body
        assert isinstance(body, dict)
        return body

    async def wait_state(
        self, server_id: str, *states: str, timeout: float = 60.0, who: str = "alpha"
    ) -> dict[str, Any]:
        seen: list[dict[str, Any]] = []

        async def reached() -> bool:
            seen.append(await self.get(server_id, who))
            return seen[-1]["state"] in states

        await helpers.assert_eventually(
            reached,
            timeout=timeout,
            interval=0.1,
            message=f"{server_id} never reached {states}; last: {seen[-1] if seen else None}",
        )
        return seen[-1]

    async def containers(self) -> dict[int, Any]:
        """Every guest in the fake Proxmox but the template, by VMID."""
        guests = await self.lab.cluster.guests()
        return {vmid: guest for vmid, guest in guests.items() if vmid != self.lab.settings.template_vmid}

    async def live_allocations(self, server_id: str) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT 'vmid' AS kind FROM vmid_allocations WHERE server_id = $1 AND status <> 'released' "
            "UNION ALL SELECT 'ip' FROM ip_allocations WHERE server_id = $1 AND status <> 'released' "
            "UNION ALL SELECT 'port' FROM port_allocations WHERE server_id = $1 AND status <> 'released'",
            uuid.UUID(server_id),
        )
        return [row["kind"] for row in rows]

    async def settled_report_seq(self, server_id: str, timeout: float = 30.0) -> int:
        """Wait until the agent reported ready and no command is pending; the last report's seq.

        From then on nothing else writes for the server, so a test may post the next report itself.
        """
        key = uuid.UUID(server_id)
        query = (
            "SELECT state, seq, (SELECT count(*) FROM commands WHERE server_id = $1 "
            "AND status IN ('queued', 'accepted')) AS pending FROM agent_reports WHERE server_id = $1"
        )
        rows: list[asyncpg.Record] = []

        async def settled() -> bool:
            row = await self.pool.fetchrow(query, key)
            rows[:] = [] if row is None else [row]
            return row is not None and row["state"] == "ready" and row["pending"] == 0

        await helpers.assert_eventually(
            settled, timeout=timeout, interval=0.05, message=f"{server_id} never settled: {rows}"
        )
        seq: int = rows[0]["seq"]
        return seq

    async def journal_states(self, server_id: str) -> list[str]:
        rows = await self.pool.fetch(
            "SELECT to_state FROM journal WHERE server_id = $1 ORDER BY seq", uuid.UUID(server_id)
        )
        return [row["to_state"] for row in rows]
