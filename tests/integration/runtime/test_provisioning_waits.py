"""How the steps that wait for the agent wait: for its report when it reports to us, by polling when
nothing would tell us, and without database reads they do not need.

Provisioning runs against the real database with a scripted agent and Proxmox driver; the pool is
wrapped to count the connections the steps take for reads of their own (writes go through `Writes`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from storage import database, launchers, servers
from zlh_actors import config
from zlh_actors.servers import provisioning, requests

VERSIONS = {"minecraft_version": "1.21.1", "fabric": {"loader": "0.16.14", "installer": "1.0.1"}}


class CountingPool:
    """The pool, counting `acquire`s: each is a round of the pool (a transaction, and the reset)."""

    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool
        self.acquired = 0

    def acquire(self) -> Any:
        self.acquired += 1
        return self._pool.acquire()


class Writes:
    def __init__(self, pool: asyncpg.Pool) -> None:
        self._pool = pool

    def transaction(self) -> contextlib.AbstractAsyncContextManager[database.Conn]:
        return database.transaction(self._pool)

    def ensure_lease_held(self) -> None:
        """The lease always holds here: these tests are about waiting, not ownership."""


@dataclasses.dataclass
class Agent:
    """The agent's API as the steps see it: a status to answer, and what it was asked."""

    state: str = "installed"
    generation: int = 1
    manifest_sha256: str | None = None
    running: bool = False
    down: int = 0  # how many more times its API does not answer (a container still booting)
    asked: list[str] = dataclasses.field(default_factory=list)

    async def status(self, ip: str) -> dict[str, Any] | None:
        self.asked.append("status")
        if self.down:
            self.down -= 1
            return None
        return {
            "generation": self.generation,
            "state": self.state,
            "manifest_sha256": self.manifest_sha256,
            "game": {"running": self.running},
        }

    async def enroll(self, ip: str, enrollment: Any) -> dict[str, Any]:
        self.asked.append("enroll")
        return {}

    async def start_game(self, ip: str, generation: int) -> dict[str, Any]:
        self.asked.append("start")
        self.state, self.running = "starting", True
        return {}

    async def stop_game(self, ip: str, generation: int) -> dict[str, Any]:
        self.asked.append("stop")
        return {}


class Driver:
    async def start(self, ref: Any) -> None:
        pass


@contextlib.asynccontextmanager
async def world(pool: asyncpg.Pool, state: str) -> AsyncIterator[tuple[servers.Server, Agent, CountingPool]]:
    settings = config.Settings(allow_http_urls=True)
    spec = requests.parse_create({"name": "waiting", **VERSIONS}, settings).spec()
    async with database.transaction(pool) as conn:
        await launchers.pin(
            conn, "1.21.1", "0.16.14", "1.0.1", "http://127.0.0.1:1/launcher.jar", "a" * 64, 1
        )
        server = await servers.insert(
            conn, tenant="acme", name="waiting", spec=spec, state=state, event="seed"
        )
        server = await servers.set_placement(
            conn, server, node="pve1", vmid=10000, ip="127.0.0.1", game_port=1, generation=1
        )
    yield server, Agent(), CountingPool(pool)


def provisioner(counted: CountingPool, agent: Agent) -> provisioning.Provisioning:
    return provisioning.Provisioning(
        counted,  # type: ignore[arg-type]
        config.Settings(allow_http_urls=True),
        Driver(),  # type: ignore[arg-type]
        agent,  # type: ignore[arg-type]
        callback_base="http://127.0.0.1:1",
    )


async def moved(pool: asyncpg.Pool, server: servers.Server, state: str) -> servers.Server:
    async with database.transaction(pool) as conn:
        return await servers.transition(conn, server, state, "test")


async def test_installing_waits_for_the_report_of_an_agent_it_enrolled_without_reading_the_database(
    pool: asyncpg.Pool,
) -> None:
    async with world(pool, "provisioning.enrolling") as (server, agent, counted):
        work = provisioner(counted, agent)
        enrolled = await work.perform(server, Writes(pool))
        assert enrolled.event == "enrolled"
        assert agent.asked == ["status", "enroll"]
        server = await moved(pool, server, "provisioning.installing")
        agent.state = "installing"
        counted.acquired = 0
        for _ in range(3):  # the install's progress reports wake it
            step = await work.perform(server, Writes(pool))
            assert step == provisioning.Step(retry_after=provisioning.REPORT_WAIT)
        assert counted.acquired == 0, "a wake-up while installing read the database"
        agent.state, agent.manifest_sha256 = "installed", enrolled.detail.removeprefix("manifest ")  # type: ignore[union-attr]
        assert (await work.perform(server, Writes(pool))).event == "installed"


async def test_a_new_owner_polls_an_agent_that_reports_to_another_replica(pool: asyncpg.Pool) -> None:
    async with world(pool, "provisioning.installing") as (server, agent, counted):
        agent.state = "installing"
        step = await provisioner(counted, agent).perform(server, Writes(pool))
        assert step == provisioning.Step(retry_after=provisioning.POLL)


async def test_starting_waits_for_ready_then_polls_the_ping_and_reads_the_journal_once(
    pool: asyncpg.Pool,
) -> None:
    async with world(pool, "provisioning.enrolling") as (server, agent, counted):
        work = provisioner(counted, agent)
        await work.perform(server, Writes(pool))
        server = await moved(pool, server, "starting")
        counted.acquired = 0
        asked = await work.perform(server, Writes(pool))
        assert [ask for ask in agent.asked if ask != "status"] == ["enroll", "start"]
        assert asked == provisioning.Step(retry_after=provisioning.REPORT_WAIT)
        reads = counted.acquired  # when it entered `starting`, from the journal
        # Woken (the agent's `starting` report): still no `ready`, so it waits again, reading nothing.
        assert await work.perform(server, Writes(pool)) == asked
        agent.state = "ready"
        # Ready, but the game (port 1) does not answer our ping: nothing will say when it does.
        assert await work.perform(server, Writes(pool)) == provisioning.Step(retry_after=provisioning.POLL)
        assert counted.acquired == reads == 1


async def test_one_wake_of_enrolling_waits_for_the_agent_api_to_come_up(
    pool: asyncpg.Pool, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with world(pool, "provisioning.enrolling") as (server, agent, counted):
        agent.down = 3
        step = await provisioner(counted, agent).perform(server, Writes(pool))
        assert step.event == "enrolled"  # not three wake-ups of the actor, each with its transactions
        assert agent.asked == ["status"] * 4 + ["enroll"]
        monkeypatch.setattr(provisioning, "AGENT_UP_WAIT", 0.3)
        agent.down, agent.asked = 1_000, []
        step = await provisioner(counted, agent).perform(server, Writes(pool))
        assert step == provisioning.Step(
            retry_after=provisioning.POLL
        )  # bounded: the actor gets control back
        assert 2 <= len(agent.asked) < 1_000
