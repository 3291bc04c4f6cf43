"""The work of each lifecycle state, against Proxmox and the agent (`effects.Effects`).

Every step is idempotent and level-based: it looks at what Proxmox, the agent and the database hold
now, does only what is missing, and reports the event that completes the state. A new owner after a
crash or a failover re-runs the step the database names and ends in the same place: the driver
adopts our own container instead of cloning a second one, a repeated enrollment is acknowledged, a
destroyed container counts as destroyed.

Readiness never consults DNS: the agent and the game are reached at the IP the database allocated,
and `running` needs both the agent's `ready` (in its status, or in a report newer than the moment
the server entered `starting` when the agent does not answer us) and a Server List Ping from here
that answers with `players.max > 0`.

How steps wait. Every wake-up of the actor costs database transactions (its commands, the step's
deadline), so a step looks again soon (`POLL`) only where nothing would tell it: the agent's API
coming up after boot (an agent knows no callback before it is enrolled; one wake-up keeps asking it
for up to `AGENT_UP_WAIT`) and our Server List Ping.
Where the agent reports (installed, ready, stopped), the report wakes the actor and the step waits
`REPORT_WAIT` as a safety net, but only for agents this process enrolled: the others report to the
replica that enrolled them, which may be gone, so for them the step keeps looking every `POLL`.
Steps ask the agent's status before reading its report, and remember what a later wake would
otherwise read again (the enrolled manifest's hash; when the server entered `starting`, for as long
as its row is unchanged).

Two states have work only while the server should run:

- `lost` (its container vanished): what the container held (VMID, IP, port, agent tokens) is
  released; if the server should run, `retry` re-provisions it. The cloning step then finds the
  server holding no VMID and places a new generation: a fresh VMID, IP and port on the same node,
  the generation one higher (the new container's marks carry it; the old agent's token is revoked).
- `crashed` (the crash policy): the game is restarted after `ZLH_CRASH_BACKOFF` seconds, doubled
  for each crash within `ZLH_CRASH_WINDOW` (counted from the journal, so a failover keeps the count);
  a crash beyond `ZLH_CRASH_RESTARTS` in the window fails the server, with the count in `last_error`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import logging
from typing import Any

import asyncpg
from mcstatus import JavaServer

from storage import agents, allocations, database, journal, launchers, queries, servers
from zlh_actors import config, errors, guard
from zlh_actors.agent import manifest, wire
from zlh_actors.proxmox import errors as pve_errors
from zlh_actors.proxmox import protocol
from zlh_actors.servers import agent_client, effects

log = logging.getLogger(__name__)

Step = effects.Step
# Seconds between looks while waiting for something that tells nobody when it happens: the agent's
# API coming up in a new container (it knows no callback before it is enrolled), the game answering
# our Server List Ping, an agent that reports to another replica.
POLL = 0.5
# Seconds one wake-up of `enrolling` keeps asking a new container's agent, every AGENT_UP_POLL, before
# it gives the actor back: the agent takes seconds to start and tells nobody, and asking it over HTTP
# costs nothing in the database, whereas every wake-up of the actor costs transactions. A command
# for a server that is enrolling (a delete) waits up to this long.
AGENT_UP_WAIT = 2.0
AGENT_UP_POLL = 0.1
# Seconds a step waits for an agent report before it looks anyway. Reports (installed, ready,
# stopped) arrive as `report` commands that wake the actor at once; this covers a report that never
# comes. It applies only to agents this process enrolled: an agent reports to the callback URL of
# the replica that enrolled it, and when that replica has died its reports reach nobody, so a new
# owner keeps looking every `POLL`. The sweep (every 5 s by default) wakes every server not at rest too.
REPORT_WAIT = 5.0


async def slp_answers(ip: str, port: int, timeout: float = 2.0) -> bool:
    """A Minecraft Server List Ping to ip:port answers with a status whose players.max > 0."""
    try:
        status = await JavaServer(ip, port, timeout=timeout).async_status()
    except (OSError, TimeoutError, ValueError):
        return False
    except Exception as exc:  # mcstatus raises its own parse errors on a garbled answer
        log.debug("SLP to %s:%s failed: %s", ip, port, exc)
        return False
    return status.players.max > 0


@dataclasses.dataclass
class _Starting:
    """Progress through `starting` since the server entered it (kept only while it is there).

    `version` is the server row's version when `entered_at` was read: while the row is unchanged it
    is the same entry into `starting`, and the journal need not be read again on every wake.
    """

    entered_at: datetime.datetime
    restart: bool
    version: int
    asked: bool = False


class Provisioning:
    """`effects.Effects` over the Proxmox driver and the agent protocol."""

    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: config.Settings,
        driver: protocol.ProxmoxDriver,
        agent: agent_client.AgentClient,
        *,
        callback_base: str,
    ) -> None:
        self._pool = pool
        self._settings = settings
        self._driver = driver
        self._agent = agent
        self._callback_base = callback_base
        self._starting: dict[Any, _Starting] = {}
        # server id -> (generation, sha256 of the manifest it was enrolled with), while installing.
        self._expected: dict[Any, tuple[int, str]] = {}
        # server id -> the generation this process enrolled, whose agent reports to us; kept until the
        # server is deleted or its container lost (at most one entry per live server of ours).
        self._enrolled_here: dict[Any, int] = {}

    def deadline(self, state: str) -> float | None:
        if state == "provisioning.installing":
            return self._settings.install_timeout
        if state == "requested" or state.startswith("deleting."):
            return None  # deleting retries until it is done: a server can always be terminated
        if state in ("lost", "crashed"):
            return None  # waiting there is a decision (desired stopped, a backoff), not a stuck step
        return self._settings.step_timeout

    async def perform(self, server: servers.Server, writes: effects.Writes) -> Step:
        if server.state != "starting":
            self._starting.pop(server.id, None)  # progress through `starting` ends with the state
        if server.state not in ("provisioning.enrolling", "provisioning.installing"):
            self._expected.pop(server.id, None)
        if server.state == "lost" or server.state.startswith("deleting."):
            self._enrolled_here.pop(server.id, None)
        step = _STEPS.get(server.state)
        if step is None:
            return Step()
        try:
            with guard.guarded(writes.ensure_lease_held):
                return await step(self, server, writes)
        except errors.Transient as exc:
            log.info("server %s: %s: %s; trying again", server.id, server.state, exc)
            return Step(retry_after=1.0)
        except errors.Permanent as exc:
            if server.state.startswith("deleting."):
                # A server must always be terminable: record the reason and keep trying.
                log.error("server %s: %s failed: %s", server.id, server.state, exc)
                return Step(last_error=f"{server.state}: {exc}", retry_after=5.0)
            return Step(event="fail", last_error=f"{server.state}: {exc}")

    # --- helpers ------------------------------------------------------------------------------

    def _report_wait(self, server: servers.Server) -> float:
        """How long to wait for the agent's next report before looking anyway (`REPORT_WAIT`)."""
        return REPORT_WAIT if self._enrolled_here.get(server.id) == server.generation else POLL

    def _ip(self, server: servers.Server) -> str:
        assert server.ip is not None
        return str(server.ip)

    def _ref(self, server: servers.Server) -> protocol.ContainerRef:
        assert server.node is not None
        assert server.vmid is not None
        return protocol.ContainerRef(server.id, server.generation, server.node, protocol.Vmid(server.vmid))

    def _spec(self, server: servers.Server) -> protocol.ContainerSpec:
        resources = server.spec["resources"]
        assert server.node is not None
        assert server.vmid is not None
        return protocol.ContainerSpec(
            server_id=server.id,
            generation=server.generation,
            name=server.name,
            node=server.node,
            vmid=protocol.Vmid(server.vmid),
            ip=f"{server.ip}/{self._settings.ip_subnet.prefixlen}",
            gateway=None if self._settings.ip_gateway is None else str(self._settings.ip_gateway),
            memory_mb=int(resources["memory_mb"]),
            cores=int(resources["cores"]),
            template_vmid=protocol.Vmid(self._settings.pve_template_vmid),
        )

    async def _manifest(self, conn: database.Conn, server: servers.Server) -> manifest.Manifest:
        spec = server.spec
        launcher = await launchers.get(
            conn, spec["minecraft_version"], spec["fabric"]["loader"], spec["fabric"]["installer"]
        )
        if launcher is None:
            raise errors.Permanent("the server's Fabric launcher is no longer pinned")
        launcher_wire: dict[str, Any] = {"url": launcher.url, "sha256": launcher.sha256}
        if launcher.size is not None:
            launcher_wire["size"] = launcher.size
        assert server.game_port is not None
        return manifest.parse(
            {
                "minecraft_version": spec["minecraft_version"],
                "fabric": spec["fabric"],
                "launcher": launcher_wire,
                "mods": [
                    {**mod, "name": mod["name"] if mod["name"].endswith(".jar") else f"{mod['name']}.jar"}
                    for mod in spec["mods"]
                ],
                "properties": spec["properties"],
                "game_port": server.game_port,
                "memory_mb": int(spec["resources"]["memory_mb"]),
            }
        )

    async def _report(self, server: servers.Server) -> agents.Report | None:
        async with self._pool.acquire() as conn:
            report = await agents.latest_report(conn, server.id)
        return report if report is not None and report.generation == server.generation else None

    async def _entered(self, server: servers.Server) -> tuple[datetime.datetime, str]:
        """When the server entered its state, and by which event."""
        async with self._pool.acquire() as conn:
            entry = await journal.newest(conn, server.id)
        return entry.at, entry.event

    # --- provisioning -------------------------------------------------------------------------

    async def _new_generation(self, server: servers.Server, writes: effects.Writes) -> servers.Server:
        """Place the server afresh if it holds no VMID (its container was lost); else return it as it is."""
        async with self._pool.acquire() as conn:
            held = await queries.fetchrow(conn, "live_allocation_counts", server.id)
        if held is not None and held["vmids"]:
            return server  # the common case, without taking the allocation lock
        async with writes.transaction() as conn:
            await allocations.lock(conn)
            current = await servers.get(conn, server.id)
            held = await queries.fetchrow(conn, "live_allocation_counts", server.id)
            assert held is not None
            if held["vmids"]:
                return current
            assert current.node is not None
            low, high = self._settings.vmid_range
            vmid = (await allocations.allocate_vmid(conn, server.id, low, high)).vmid
            ip = str(current.ip)
            if not held["ips"]:
                gateway = [self._settings.ip_gateway] if self._settings.ip_gateway else []
                ip = str(
                    (await allocations.allocate_ip(conn, server.id, self._settings.ip_subnet, gateway)).ip
                )
            port = current.game_port or 0
            if not held["ports"]:
                port = (
                    await allocations.allocate_port(conn, server.id, current.node, *self._settings.game_ports)
                ).port
            await agents.revoke_tokens(conn, server.id)
            placed = await servers.set_placement(
                conn,
                current,
                node=current.node,
                vmid=vmid,
                ip=ip,
                game_port=port,
                generation=current.generation + 1,
            )
        log.warning(
            "server %s: generation %s replaces the lost container %s: VMID %s, %s:%s",
            server.id,
            placed.generation,
            server.vmid,
            vmid,
            ip,
            port,
        )
        return placed

    async def _cloning(self, server: servers.Server, writes: effects.Writes) -> Step:
        server = await self._new_generation(server, writes)
        try:
            outcome = await self._driver.ensure_container(self._spec(server))
        except pve_errors.VmidTaken:
            async with writes.transaction() as conn:
                assert server.vmid is not None
                await allocations.vmid_to_foreign(conn, server.id, server.vmid)
                await allocations.lock(conn)  # against creates picking the same free VMID
                low, high = self._settings.vmid_range
                fresh = await allocations.allocate_vmid(conn, server.id, low, high)
                current = await servers.get(conn, server.id)
                await servers.set_placement(
                    conn,
                    current,
                    node=current.node or "",
                    vmid=fresh.vmid,
                    ip=str(current.ip),
                    game_port=current.game_port or 0,
                    generation=current.generation,
                )
            log.warning(
                "server %s: VMID %s is taken by a stranger; moved to %s", server.id, server.vmid, fresh.vmid
            )
            return Step(retry_after=0)
        return Step(
            event="cloned",
            detail=f"container {server.vmid} on {server.node} (generation {server.generation}): "
            f"{outcome.value}",
        )

    async def _configuring(self, server: servers.Server, writes: effects.Writes) -> Step:
        async with writes.transaction() as conn:
            await allocations.move(conn, server.id, ("reserved",), "in_use")
        return Step(event="configured")

    async def _booting(self, server: servers.Server, writes: effects.Writes) -> Step:
        await self._driver.start(self._ref(server))
        return Step(event="booted")

    async def _agent_up(self, ip: str) -> bool:
        """Whether the agent's API answers within `AGENT_UP_WAIT` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + AGENT_UP_WAIT
        while await self._agent.status(ip) is None:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(AGENT_UP_POLL)
        return True

    async def _enrolling(self, server: servers.Server, writes: effects.Writes) -> Step:
        ip = self._ip(server)
        if not await self._agent_up(ip):
            return Step(retry_after=POLL)
        async with writes.transaction() as conn:
            built = await self._manifest(conn, server)  # read in the same transaction: one round of the pool
            token = await agents.issue_token(conn, server.id, server.generation)
        enrollment: wire.EnrollRequest = {
            "server_id": str(server.id),
            "generation": server.generation,
            "token": token,
            "callback_base": self._callback_base,
            "manifest": manifest.to_wire(built),
        }
        await self._agent.enroll(ip, enrollment)
        sha = manifest.manifest_sha256(built)
        self._expected[server.id] = (server.generation, sha)
        self._enrolled_here[server.id] = server.generation
        return Step(event="enrolled", detail=f"manifest {sha}")

    async def _expected_manifest(self, server: servers.Server) -> str:
        """The sha256 of the manifest this generation was enrolled with: remembered from the
        enrollment, or built again (a new owner after a failover, a restarted replica)."""
        known = self._expected.get(server.id)
        if known is not None and known[0] == server.generation:
            return known[1]
        async with self._pool.acquire() as conn:
            sha = manifest.manifest_sha256(await self._manifest(conn, server))
        self._expected[server.id] = (server.generation, sha)
        return sha

    async def _installing(self, server: servers.Server, writes: effects.Writes) -> Step:
        # The agent's status, asked at the container's IP, is the freshest word and needs no database
        # read. Its report, which woke us, is read only when the agent does not answer for this
        # generation (the report is then all we have).
        expected = await self._expected_manifest(server)
        status = await self._agent.status(self._ip(server))
        if status is not None and status.get("generation") == server.generation:
            if status.get("state") == "install_failed":
                return Step(
                    event="fail", last_error=f"install failed: {status.get('last_error') or 'no detail'}"
                )
            if status.get("manifest_sha256") == expected:
                return Step(event="installed", detail=f"manifest {expected}")
            if status.get("state") == "installed":
                installed = status.get("manifest_sha256")
                return Step(
                    event="fail", last_error=f"agent installed manifest {installed}, expected {expected}"
                )
            return Step(retry_after=self._report_wait(server))  # `installed` or `install_failed` wakes us
        report = await self._report(server)
        if report is not None and report.state == "install_failed":
            return Step(event="fail", last_error=f"install failed: {report.detail or 'no detail'}")
        if report is not None and report.state == "installed":
            if report.manifest_sha256 != expected:
                return Step(
                    event="fail",
                    last_error=f"agent installed manifest {report.manifest_sha256}, expected {expected}",
                )
            return Step(event="installed", detail=f"manifest {expected}")
        return Step(retry_after=POLL)  # the agent does not answer: look again soon

    # --- running the game ---------------------------------------------------------------------

    async def _starting_step(self, server: servers.Server, writes: effects.Writes) -> Step:
        progress = self._starting.get(server.id)
        if progress is None or progress.version != server.version:
            entered, event = await self._entered(server)
            if progress is None or progress.entered_at != entered:
                progress = self._starting[server.id] = _Starting(
                    entered, restart=event == "restart", version=server.version
                )
            progress.version = server.version
        entered = progress.entered_at
        ip = self._ip(server)
        if progress.asked and await self._game_idle(server):
            # Asked, yet nothing is starting: the agent restarted since (a new process knows nothing of
            # the request; a container restarted behind our back does this) or its game was stopped.
            progress.asked = False
        if not progress.asked:
            await self._driver.start(self._ref(server))  # idempotent: a stopped server's container boots
            status = await self._agent.status(ip)
            if status is None:
                return Step(retry_after=POLL)
            if progress.restart and status.get("game", {}).get("running"):
                await self._agent.stop_game(ip, server.generation)
                return Step(retry_after=self._report_wait(server))  # its `stopped` report wakes us
            await self._agent.start_game(ip, server.generation)
            progress.asked = True
            return Step(retry_after=self._report_wait(server))  # its `ready` (or `crashed`) report wakes us
        if await self._agent_ready(server, entered):
            assert server.game_port is not None
            if await slp_answers(ip, server.game_port):
                self._starting.pop(server.id, None)
                return Step(event="ready", detail="agent ready and Server List Ping answered")
            return Step(retry_after=POLL)  # ready, but our ping has no answer yet: nothing will tell us
        return Step(retry_after=self._report_wait(server))

    async def _game_idle(self, server: servers.Server) -> bool:
        """The agent of this generation answers, its game is not running, and none is on its way."""
        status = await self._agent.status(self._ip(server))
        return (
            status is not None
            and status.get("generation") == server.generation
            and status.get("state") in ("installed", "stopped")
            and not status.get("game", {}).get("running")
        )

    async def _agent_ready(self, server: servers.Server, entered: datetime.datetime) -> bool:
        """The agent says `ready`: in its status now, or, when it does not answer us for this
        generation, in a report received since `entered` (its status is fresher than any report, and
        asking it reads nothing from the database)."""
        status = await self._agent.status(self._ip(server))
        if status is not None and status.get("generation") == server.generation:
            return status.get("state") == "ready" and bool(status.get("game", {}).get("running"))
        report = await self._report(server)
        return report is not None and report.state == "ready" and report.received_at > entered

    async def _stopping(self, server: servers.Server, writes: effects.Writes) -> Step:
        ip = self._ip(server)
        status = await self._agent.status(ip)
        if status is not None and status.get("game", {}).get("running"):
            await self._agent.stop_game(ip, server.generation)
            return Step(retry_after=self._report_wait(server))  # its `stopped` report wakes us
        await self._driver.shutdown(self._ref(server), timeout=30)
        return Step(event="stopped")

    # --- drift and crashes --------------------------------------------------------------------

    async def _lost(self, server: servers.Server, writes: effects.Writes) -> Step:
        async with writes.transaction() as conn:
            await allocations.move(conn, server.id, allocations.LIVE, "released")
            await agents.revoke_tokens(conn, server.id)
        if server.desired_state == "running":
            return Step(event="retry", detail=f"re-provisioning as generation {server.generation + 1}")
        return Step()  # it should not run: released, until a retry or a delete

    async def _crashed(self, server: servers.Server, writes: effects.Writes) -> Step:
        if server.desired_state != "running":
            return Step()
        window, limit = self._settings.crash_window, self._settings.crash_restarts
        now = datetime.datetime.now(datetime.UTC)
        async with self._pool.acquire() as conn:
            since = now - datetime.timedelta(seconds=window)
            crashes = int(
                await queries.fetchval(conn, "count_journal_events_since", server.id, "crashed", since)
            )
            entered = (await journal.newest(conn, server.id)).at
        crashes = max(crashes, 1)  # it is crashed now, whenever that happened
        if crashes > limit:
            return Step(
                event="fail",
                last_error=(
                    f"the game crashed {crashes} times within {window:g}s and is not restarted more than "
                    f"{limit} times; last crash: {server.last_error or 'no detail'}"
                ),
            )
        delay = min(self._settings.crash_backoff * 2 ** (crashes - 1), window)
        remaining = (entered + datetime.timedelta(seconds=delay) - now).total_seconds()
        if remaining > 0:
            return Step(retry_after=remaining)
        return Step(
            event="restart",
            detail=f"crash policy: restart {crashes} of {limit} within {window:g}s, after {delay:g}s",
        )

    # --- deleting -----------------------------------------------------------------------------

    async def _stopping_game(self, server: servers.Server, writes: effects.Writes) -> Step:
        if server.vmid is not None and server.ip is not None:
            status = await self._agent.status(self._ip(server))
            if status is not None and status.get("game", {}).get("running"):
                try:
                    await self._agent.stop_game(self._ip(server), server.generation)
                except errors.ZlhError as exc:
                    log.info(
                        "server %s: agent did not stop the game (%s); stopping the container", server.id, exc
                    )
        return Step(event="game_stopped")

    async def _stopping_container(self, server: servers.Server, writes: effects.Writes) -> Step:
        if server.vmid is not None:
            try:
                await self._driver.shutdown(self._ref(server), timeout=30)
            except (pve_errors.DoesNotExist, pve_errors.NotOwned) as exc:
                log.info("server %s: nothing of ours to stop at %s (%s)", server.id, server.vmid, exc)
        return Step(event="container_stopped")

    async def _destroying(self, server: servers.Server, writes: effects.Writes) -> Step:
        if server.vmid is not None:
            try:
                await self._driver.destroy(self._ref(server))
            except pve_errors.NotOwned:
                log.warning(
                    "server %s: VMID %s holds a stranger's container; leaving it", server.id, server.vmid
                )
        async with writes.transaction() as conn:
            await allocations.move(conn, server.id, ("reserved", "in_use"), "releasing")
        return Step(event="destroyed")

    async def _releasing(self, server: servers.Server, writes: effects.Writes) -> Step:
        async with writes.transaction() as conn:
            await allocations.move(conn, server.id, ("reserved", "in_use", "releasing"), "released")
            await agents.revoke_tokens(conn, server.id)
        return Step(event="released")


_STEPS = {
    "provisioning.cloning": Provisioning._cloning,
    "provisioning.configuring": Provisioning._configuring,
    "provisioning.booting": Provisioning._booting,
    "provisioning.enrolling": Provisioning._enrolling,
    "provisioning.installing": Provisioning._installing,
    "starting": Provisioning._starting_step,
    "stopping": Provisioning._stopping,
    "lost": Provisioning._lost,
    "crashed": Provisioning._crashed,
    "deleting.stopping_game": Provisioning._stopping_game,
    "deleting.stopping_container": Provisioning._stopping_container,
    "deleting.destroying": Provisioning._destroying,
    "deleting.releasing": Provisioning._releasing,
}
