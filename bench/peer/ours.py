"""zlh-actors as the scenario drives it: real `server.py` replicas on one database and one lab.

The clients talk HTTP to the replicas as a load balancer would: each request goes to the next replica
in turn and, when one does not answer (killed, frozen), to the next. Every create answer and every
server a tenant was shown goes into the checker's `ClientLog`. Replicas run with the timings the
chaos tests use (`replicas.environment_for`: 0.2 s heartbeats, 1.5 s leases); a killed replica is
restarted as a new process on the same port.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg

from bench.peer import observe
from zlh_actors.lab import invariants, replicas, world

TENANT = "alpha"
VERSIONS = {"minecraft_version": "1.21.1", "fabric": {"loader": "0.16.14", "installer": "1.0.1"}}
REQUEST_TIMEOUT = 10.0
HOLDINGS = """
SELECT s.id, s.state, s.vmid,
       EXISTS (SELECT 1 FROM vmid_allocations a
               WHERE a.server_id = s.id AND a.vmid = s.vmid AND a.status <> 'released') AS holds
FROM servers s
"""
UNSETTLED = """
SELECT (SELECT count(*) FROM servers WHERE state <> 'deleted')
     + (SELECT count(*) FROM commands WHERE status = 'queued')
"""


class Ours:
    """The scenario's `System` for zlh-actors (see the module docstring)."""

    def __init__(self, lab: world.Lab, url: str, pool: asyncpg.Pool, logs: Path, count: int) -> None:
        self.lab = lab
        self.url = url
        self.pool = pool
        self.logs = logs
        self.count = count
        self.log = invariants.ClientLog()
        self.replicas: list[replicas.ReplicaProcess] = []
        self._ports = [replicas.free_port() for _ in range(count)]
        self._starts = [0] * count
        self._next = 0
        self._token = ""
        self._http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT))

    async def start(self) -> None:
        tokens = await replicas.prepare_database(self.lab, self.url, tenants=(TENANT,))
        self._token = tokens[TENANT]
        self.replicas = [self._spawn(target) for target in range(self.count)]
        await asyncio.gather(*(replica.ready(timeout=60) for replica in self.replicas))

    def _spawn(self, target: int) -> replicas.ReplicaProcess:
        port = self._ports[target]
        self._starts[target] += 1
        env = replicas.environment_for(self.lab, self.url, port)
        return replicas.ReplicaProcess(env, port, self.logs / f"replica{target}.{self._starts[target]}.log")

    async def close(self) -> None:
        await self._http.close()
        await asyncio.gather(*(replica.close() for replica in self.replicas), return_exceptions=True)

    # --- the clients' side --------------------------------------------------------------------------

    async def _call(self, method: str, path: str, **kwargs: Any) -> tuple[int, Any] | None:
        """One request through the "load balancer": the next replica that answers; None if none did."""
        headers = {"Authorization": f"Bearer {self._token}", **kwargs.pop("headers", {})}
        for _ in range(self.count):
            replica = self.replicas[self._next % self.count]
            self._next += 1
            try:
                async with self._http.request(
                    method, replica.url + path, headers=headers, **kwargs
                ) as answer:
                    return answer.status, await answer.json(content_type=None)
            except (aiohttp.ClientError, TimeoutError):
                continue
        return None

    async def create(self, index: int, key: str, name: str) -> str | None:
        answer = await self._call(
            "POST", "/v1/servers", json={"name": name, **VERSIONS}, headers={"Idempotency-Key": key}
        )
        if answer is None:
            self.log.created(TENANT, key, None, None)
            return None
        status, body = answer
        self.log.created(TENANT, key, status, body if isinstance(body, dict) else None)
        if status != 202 or not isinstance(body, dict):
            return None
        self.log.saw(TENANT, str(body["id"]), "create")
        return str(body["id"])

    async def state(self, server_id: str) -> str | None:
        answer = await self._call("GET", f"/v1/servers/{server_id}")
        if answer is None or answer[0] != 200 or not isinstance(answer[1], dict):
            return None
        self.log.saw(TENANT, str(answer[1]["id"]), "get")
        return str(answer[1]["state"])

    async def delete(self, server_id: str) -> bool:
        answer = await self._call("DELETE", f"/v1/servers/{server_id}")
        return answer is not None and answer[0] == 202

    # --- faults -------------------------------------------------------------------------------------

    async def kill(self, target: int) -> None:
        self.replicas[target].signal(signal.SIGKILL)
        await self.replicas[target].wait_exit()

    async def restart(self, target: int) -> None:
        await self.replicas[target].close()  # closes its log file; the process is gone already
        self.replicas[target] = self._spawn(target)
        await self.replicas[target].ready(timeout=60)

    def freeze(self, target: int) -> None:
        self.replicas[target].signal(signal.SIGSTOP)

    def thaw(self, target: int) -> None:
        self.replicas[target].signal(signal.SIGCONT)

    # --- looking ------------------------------------------------------------------------------------

    async def holdings(self) -> list[observe.Holding]:
        return [
            observe.Holding(
                server_id=row["id"],
                state=row["state"],
                vmid=row["vmid"],
                holds_vmid=row["holds"],
                running=row["state"] == "running",
            )
            for row in await self.pool.fetch(HOLDINGS)
        ]

    async def quiesce(self, timeout: float) -> bool:
        """Wait until every server is deleted and no command is queued; False if time ran out."""
        deadline = time.monotonic() + timeout
        while await self.pool.fetchval(UNSETTLED):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.2)
        return True

    async def records(self) -> list[invariants.Record]:
        database = await invariants.read_database(self.pool)
        return [server.record() for server in database.servers]

    async def check(self) -> invariants.Report:
        return await invariants.check(self.pool, self.lab.cluster, self.log)
