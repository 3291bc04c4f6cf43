"""A replica killed (kill -9) while servers sit in each provisioning step: the survivor finishes them.

Every provisioning step is covered: cloning, configuring, booting, enrolling, installing and starting.
Both replicas run as real `server.py` processes with a single shard, so one replica owns every
server and the other stands by; killing the owner interrupts every step at once. Each server is held
in its step by a real condition (see test_provisioning), the owner is killed, the holds are lifted,
and every server must end `running` with exactly one container.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
from aiohttp import web

from tests import helpers
from tests.e2e import harness
from zlh_actors.lab import replicas, world


@contextlib.asynccontextmanager
async def gated_file(source_url: str) -> AsyncIterator[tuple[str, asyncio.Event]]:
    """A URL that serves `source_url`'s bytes only once the returned event is set."""
    gate = asyncio.Event()

    async def serve(request: web.Request) -> web.Response:
        await gate.wait()
        async with aiohttp.ClientSession() as session, session.get(source_url) as upstream:
            return web.Response(body=await upstream.read())

    app = web.Application()
    app.router.add_get("/{name}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}/gated.jar", gate
    finally:
        gate.set()
        await runner.cleanup()


async def owner_of(pool: asyncpg.Pool) -> uuid.UUID:
    owner = await pool.fetchval("SELECT owner FROM shard_leases WHERE shard = 0")
    assert isinstance(owner, uuid.UUID)
    return owner


def assert_structured_logs(path: Path, server_ids: set[str]) -> None:
    """Log records are JSON objects (a few start-up lines on stdout are not); the actors' name their
    replica, server, shard and epoch."""
    logged = [json.loads(line) for line in path.read_text().splitlines() if line.startswith("{")]
    actor_lines = [line for line in logged if line["logger"] == "zlh_actors.servers.actor"]
    assert {line["server_id"] for line in actor_lines} == server_ids
    assert all({"replica", "shard", "epoch"} <= line.keys() for line in actor_lines)


async def test_killing_the_owner_in_every_provisioning_step(
    tmp_path: Path, db_url: str, pool: asyncpg.Pool
) -> None:
    async with world.Lab(tmp_path / "lab", time_scale=0.02, warmup=6.0, subnet=harness.subnet()) as lab:
        made = await replicas.prepare_database(lab, db_url)
        processes: list[replicas.ReplicaProcess] = []
        for name in ("a", "b"):
            port = replicas.free_port()
            env = replicas.environment_for(lab, db_url, port, ZLH_SHARDS="1")
            processes.append(replicas.ReplicaProcess(env, port, tmp_path / f"replica-{name}.log"))
            await processes[-1].ready()
        control = harness.Control([r.url for r in processes], made, lab, pool)
        squat = socket.socket()
        try:
            mod = lab.files.add_mod("gated.jar").wire()
            async with gated_file(mod["url"]) as (gated_url, gate):
                held: dict[str, dict[str, Any]] = {}
                gated_mod = {"name": "gated", "url": gated_url, "sha512": mod["sha512"], "size": mod["size"]}
                held["starting"] = await control.create("at-starting")
                held["provisioning.installing"] = await control.create("at-installing", mods=[gated_mod])
                held["provisioning.enrolling"] = await control.create("at-enrolling")
                squat.bind((held["provisioning.enrolling"]["ip"], lab.settings.agent_port))
                squat.listen(16)
                for state in ("starting", "provisioning.installing", "provisioning.enrolling"):
                    await control.wait_state(held[state]["id"], state, timeout=60)

                await lab.cluster.call(lambda: lab.pve.fail("POST", "/status/start", 500, "start boom"))
                held["provisioning.booting"] = await control.create("at-booting")
                await control.wait_state(held["provisioning.booting"]["id"], "provisioning.booting")
                held["provisioning.configuring"] = await control.create("at-configuring")
                holder = await pool.acquire()
                row_lock = holder.transaction()
                await row_lock.start()
                await holder.execute(
                    "SELECT 1 FROM vmid_allocations WHERE server_id = $1 FOR UPDATE",
                    uuid.UUID(held["provisioning.configuring"]["id"]),
                )
                await control.wait_state(held["provisioning.configuring"]["id"], "provisioning.configuring")
                await lab.cluster.run(lab.pve.hold_config_lock(lab.settings.template_vmid, None))
                held["provisioning.cloning"] = await control.create("at-cloning")
                await control.wait_state(held["provisioning.cloning"]["id"], "provisioning.cloning")
                for state, server in held.items():
                    assert (await control.get(server["id"]))["state"] == state

                owner = await owner_of(pool)
                owner_pid = await pool.fetchval("SELECT pid FROM replicas WHERE id = $1", owner)
                victim = next(r for r in processes if r.proc.pid == owner_pid)
                survivor = next(r for r in processes if r is not victim)
                control.base_urls = [survivor.url]
                killed_at = time.monotonic()
                victim.signal(signal.SIGKILL)
                await victim.wait_exit()

                async def taken() -> bool:
                    return await owner_of(pool) != owner

                await helpers.assert_eventually(
                    taken, timeout=2.0, message="the standby did not take the shard"
                )
                takeover = time.monotonic() - killed_at

                squat.close()
                gate.set()
                await row_lock.rollback()
                await pool.release(holder)
                await lab.cluster.call(lambda: lab.pve.failures.pop(("POST", "/status/start"), None))
                await lab.cluster.call(lambda: lab.pve.release_config_lock(lab.settings.template_vmid))
                for server in held.values():
                    await control.wait_state(server["id"], "running", timeout=120)
            containers = await control.containers()
            assert sorted(containers) == sorted(server["vmid"] for server in held.values())
            epochs = await pool.fetch(
                "SELECT DISTINCT epoch FROM journal WHERE epoch IS NOT NULL ORDER BY epoch"
            )
            assert len(epochs) >= 2, "the survivor wrote nothing under a new epoch"
            assert takeover < 2.0
            assert_structured_logs(survivor.log_path, {server["id"] for server in held.values()})
        finally:
            squat.close()
            await control.close()
            for replica in processes:
                await replica.close()
