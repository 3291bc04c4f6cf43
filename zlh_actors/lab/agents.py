"""The agent supervisor: a real reference agent process for every running lab container.

In production every container boots with the agent as a systemd service, listening on the
container's own IP. The lab has no containers, so this module plays init system for all of them:

- A poller reads the fake cluster's model every `poll_interval` seconds (level-based: the whole
  set of containers each time, never events) and hands each container's latest state to its worker.
- One worker task per existing container (kopf's model: created on demand, its `finally` removing
  its own registry entry, exiting when the container is gone) converges the agent process to what
  the container needs, one step at a time, re-reading the wanted state after every await:
    * running, with a static IP in the lab's subnet -> an agent on IP:agent_port, state dir kept
      under `containers/<vmid>/state` (the container's disk: enrollment survives a restart);
    * anything else (stopped, no such IP) -> no agent;
    * a new boot (stopped and started between two polls), or a new IP -> a fresh agent process;
    * gone, or a new container at the same VMID -> no agent, and its directory deleted.
- An agent that dies while its container runs is restarted with a growing delay (systemd's
  `Restart=always`), reset once an agent has run for `STABLE` seconds.

Stopping follows what PVE did: after a clean shutdown the agent gets SIGTERM (it stops its game
and reports `stopped`), bounded by `stop_grace`; after a hard stop, a forced destroy or a node crash
every process of the container is SIGKILLed at once (`processes.kill_marked`), as `lxc-stop --kill`
would. Agents start in their own session through `lifeline.py`, so they die with the lab even if it
is SIGKILLed; the game command runs the stand-in game through it too, so a game dies with its agent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import ipaddress
import logging
import os
import shlex
import shutil
import signal
import sys
import time
from pathlib import Path
from typing import Any

import zlh_actors
from zlh_actors.lab import cluster as cluster_module
from zlh_actors.lab import processes, settings

log = logging.getLogger("zlh_actors.lab")

START_TIMEOUT = 15.0  # an agent prints its "listening" line within a second; Python start-up included
STABLE = 10.0  # an agent that ran this long before dying restarts without delay
RESTART_MIN, RESTART_MAX = 0.2, 5.0
POLL_TIMEOUT = 5.0
LISTENING = b"zlh-agent listening on "
SOURCE_ROOT = Path(zlh_actors.__file__).resolve().parent.parent


@dataclasses.dataclass(frozen=True)
class AgentConfig:
    """How the supervisor runs agents.

    Attributes:
        lab_id: marks this lab's processes (`processes.MARK`), so labs never touch each other's.
        directory: the lab directory; `containers/<vmid>/` and `logs/` go under it.
        subnet: containers with a static IP here get an agent; others (DHCP, foreign) get none.
        port, key_file: every agent's listening port and enrollment key file.
        warmup: seconds the stand-in game waits before it answers Server List Ping.
        stop_timeout: the agent's `--stop-timeout` (SIGTERM to SIGKILL of its game).
        stop_grace: seconds a SIGTERMed agent has to exit (stop its game, deliver its reports).
    """

    lab_id: str
    directory: Path
    subnet: ipaddress.IPv4Network
    port: int
    key_file: Path
    warmup: float
    stop_timeout: float = 5.0
    stop_grace: float = 10.0
    poll_interval: float = 0.1
    log_level: str = "INFO"
    python: str = sys.executable


@dataclasses.dataclass(frozen=True)
class AgentInfo:
    """A listening agent: its process, its address, and where its files are."""

    vmid: int
    pid: int
    ip: str
    port: int
    url: str
    state_dir: Path
    log_file: Path
    boot: int


def game_command(warmup: float) -> str:
    """The lab's `--game-command`: the downloaded stand-in launcher, run by the agent's Python."""
    # The template is split like a shell line, then each word is formatted: quote, then escape braces.
    lifeline = shlex.quote(str(processes.LIFELINE)).replace("{", "{{").replace("}", "}}")
    game = f"{{python}} {{launcher}} --host {{ip}} --port {{port}} --warmup {warmup}"
    version = f"--version-name {settings.GAME_VERSION} --protocol {settings.GAME_PROTOCOL}"
    return f"{{python}} {lifeline} -- {game} {version}"


class Supervisor:
    def __init__(self, cluster: cluster_module.Cluster, config: AgentConfig) -> None:
        self.cluster = cluster
        self.config = config
        self._workers: dict[int, _Container] = {}
        self._poller: asyncio.Task[None] | None = None

    async def start(self) -> None:
        shutil.rmtree(self.config.directory / "containers", ignore_errors=True)  # a new world
        (self.config.directory / "logs").mkdir(parents=True, exist_ok=True)
        self._observe(await self.cluster.guests())
        self._poller = asyncio.create_task(self._poll_forever(), name="lab-agent-poller")
        self._poller.add_done_callback(_report_end)

    async def close(self) -> None:
        """Stop every agent (SIGTERM, then SIGKILL after `stop_grace`) and sweep up what is left."""
        if self._poller is not None:
            self._poller.cancel()
            await asyncio.wait([self._poller])
        await asyncio.gather(*(worker.close() for worker in list(self._workers.values())))
        killed = await asyncio.to_thread(processes.kill_marked, f"{self.config.lab_id}/", prefix=True)
        if killed:
            log.warning("killed leftover lab processes %s", killed)

    def agents(self) -> dict[int, AgentInfo]:
        """The listening agents, by VMID."""
        return {vmid: w.info for vmid, w in sorted(self._workers.items()) if w.info is not None}

    def processes(self, vmid: int) -> list[int]:
        """The live processes of the container: its agent and the game it runs."""
        return [pid for pid in processes.marked(self.mark(vmid)) if processes.alive(pid)]

    def has_process(self, vmid: int) -> bool:
        """True while the container has an agent process (starting, listening or being stopped)."""
        worker = self._workers.get(vmid)
        return worker is not None and worker.process is not None

    def kill_agent(self, vmid: int) -> int:
        """SIGKILL the container's agent (its game dies with it); the supervisor restarts it. Its pid."""
        info = self.agents().get(vmid)
        if info is None:
            raise cluster_module.LabError("no agent runs for this container", vmid=vmid)
        processes.signal_all([info.pid], signal.SIGKILL)
        return info.pid

    def kill_game(self, vmid: int) -> list[int]:
        """SIGKILL the container's game, as a crash would, leaving its agent; the pids killed."""
        info = self.agents().get(vmid)
        others = [pid for pid in self.processes(vmid) if info is None or pid != info.pid]
        processes.signal_all(others, signal.SIGKILL)
        return others

    def container_dir(self, vmid: int) -> Path:
        return self.config.directory / "containers" / str(vmid)

    def log_file(self, vmid: int) -> Path:
        """The container's agent log (every boot's agent appends; kept after the container is gone)."""
        return self.config.directory / "logs" / f"ct{vmid}.log"

    def mark(self, vmid: int) -> str:
        return processes.mark(self.config.lab_id, vmid)

    def wanted_ip(self, guest: cluster_module.Guest | None) -> str | None:
        """The IP the container's agent should listen on, or None when it should have no agent."""
        if guest is None or guest.status != "running" or guest.ip is None:
            return None
        return guest.ip if ipaddress.IPv4Address(guest.ip) in self.config.subnet else None

    async def _poll_forever(self) -> None:
        failing = False
        while True:
            try:
                # Bounded: a wedged fake must show up in the log, not freeze every agent silently.
                # asyncio.timeout, not wait_for: on 3.11 wait_for can swallow a cancellation that
                # coincides with the result, and close() would then wait for this loop for ever.
                async with asyncio.timeout(POLL_TIMEOUT):
                    guests = await self.cluster.guests()
            except Exception:
                if not failing:  # once per outage, not ten times a second
                    log.exception("cannot read the fake cluster; agents left as they are")
                failing = True
            else:
                failing = False
                self._observe(guests)
            await asyncio.sleep(self.config.poll_interval)

    def _observe(self, guests: dict[int, cluster_module.Guest]) -> None:
        for vmid, guest in guests.items():
            worker = self._workers.get(vmid)
            if worker is None:
                self._workers[vmid] = _Container(self, guest)
            else:
                worker.update(guest)
        for vmid in self._workers.keys() - guests.keys():
            self._workers[vmid].update(None)

    def _forget(self, worker: _Container) -> None:
        if self._workers.get(worker.vmid) is worker:
            del self._workers[worker.vmid]


class _Container:
    """One container's worker: its wanted state, its agent process, its directory."""

    def __init__(self, supervisor: Supervisor, guest: cluster_module.Guest) -> None:
        self.supervisor = supervisor
        self.vmid = guest.vmid
        self.want: cluster_module.Guest | None = guest
        self.incarnation = guest.incarnation  # the container whose disk `directory` is
        self.directory = supervisor.container_dir(guest.vmid)
        self.log_file = supervisor.log_file(guest.vmid)
        self.changed = asyncio.Event()
        self.process: asyncio.subprocess.Process | None = None
        self.exited: asyncio.Task[int] | None = None
        self.relay: asyncio.Task[None] | None = None
        self.info: AgentInfo | None = None
        self.serving: tuple[int, int, str] | None = None  # (incarnation, boot, ip) of the running agent
        self.attempted: tuple[int, int, str] | None = None  # what the last start was for
        self.started_at = 0.0
        self.failures = 0
        self.retry_at = 0.0
        self.task = asyncio.create_task(self._run(), name=f"lab-agent-ct{guest.vmid}")
        self.task.add_done_callback(_report_end)

    def update(self, guest: cluster_module.Guest | None) -> None:
        if guest != self.want:
            self.want = guest
            self.changed.set()

    def wanted(self) -> tuple[int, int, str] | None:
        want, ip = self.want, self.supervisor.wanted_ip(self.want)
        if want is None or ip is None or want.boot is None:
            return None
        return (want.incarnation, want.boot, ip)

    async def _run(self) -> None:
        try:
            while True:
                self.changed.clear()
                wanted = self.wanted()
                if self.process is not None and self.serving != wanted:
                    await self._stop(graceful=await self._graceful())
                    continue
                if self.want is None or self.want.incarnation != self.incarnation:
                    # Destroyed (or replaced by a new container at this VMID): its disk goes with it.
                    await asyncio.to_thread(shutil.rmtree, self.directory, True)
                    if self.want is None:
                        return
                    self.incarnation, self.failures, self.retry_at = self.want.incarnation, 0, 0.0
                    continue
                if wanted is not None and self.process is None:
                    if wanted != self.attempted:  # a new boot or address starts with a clean slate
                        self.attempted, self.failures, self.retry_at = wanted, 0, 0.0
                    delay = self.retry_at - time.monotonic()
                    if delay <= 0:
                        await self._start(*wanted)
                        continue
                    await self._wait(delay)
                    continue
                await self._wait(None)
        except asyncio.CancelledError:
            raise
        except BaseException:
            # A bug here must not leave an agent that no worker knows about (the next one could not bind).
            if self.process is not None:
                processes.kill_marked(self.supervisor.mark(self.vmid))
            raise
        finally:
            self.supervisor._forget(self)

    async def _graceful(self) -> bool:
        """Whether the agent should get SIGTERM (clean shutdown, new IP) rather than SIGKILL."""
        want = self.want
        if want is None or self.serving is None or want.incarnation != self.serving[0]:
            return False  # destroyed: a running container is stopped hard first
        if want.status == "running" and want.boot == self.serving[1]:
            return True  # same boot, another IP: restart the agent on it
        return await self.supervisor.cluster.stopped_gracefully(self.vmid)

    async def _wait(self, timeout: float | None) -> None:
        """Until the wanted state changes, the agent exits, or `timeout` seconds pass."""
        changed = asyncio.create_task(self.changed.wait(), name=f"lab-agent-ct{self.vmid}-changed")
        waiting: set[asyncio.Future[Any]] = {changed}
        if self.exited is not None:
            waiting.add(self.exited)
        try:
            await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        finally:
            changed.cancel()
        if self.process is not None and self.exited is not None and self.exited.done():
            ran = time.monotonic() - self.started_at
            log.warning(
                "agent of CT %s exited unexpectedly (code %s) after %.1fs; restarting it",
                self.vmid,
                self.process.returncode,
                ran,
            )
            self._note_failure(stable=ran >= STABLE)
            await self._stop(graceful=False)

    def _note_failure(self, *, stable: bool) -> None:
        self.failures = 0 if stable else self.failures + 1
        delay = 0.0 if stable else min(RESTART_MIN * 2 ** (self.failures - 1), RESTART_MAX)
        self.retry_at = time.monotonic() + delay

    async def _start(self, incarnation: int, boot: int, ip: str) -> None:
        config = self.supervisor.config
        state_dir = self.directory / "state"
        state_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            *(config.python, "-m", "zlh_actors.agent", "--listen", f"{ip}:{config.port}"),
            *("--state-dir", str(state_dir), "--enrollment-key-file", str(config.key_file)),
            *("--game-command", game_command(config.warmup), "--stop-timeout", str(config.stop_timeout)),
            *("--log-level", config.log_level),
        ]
        # The agent refuses unknown ZLH_AGENT_* variables, and flags must be the only source here.
        env = {name: value for name, value in os.environ.items() if not name.startswith("ZLH_AGENT_")}
        env[processes.MARK] = self.supervisor.mark(self.vmid)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (str(SOURCE_ROOT), env.get("PYTHONPATH"))))
        with self.log_file.open("ab") as log_out:
            log_out.write(f"=== lab: agent for CT {self.vmid} boot {boot} on {ip}:{config.port}\n".encode())
            log_out.flush()
            process = await asyncio.create_subprocess_exec(
                *processes.lifeline_argv(config.python, argv, parent=os.getpid()),
                cwd=self.directory,
                env=env,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=log_out,
                start_new_session=True,  # signals to the lab's terminal (Ctrl-C) are the lab's to handle
            )
        self.process, self.serving, self.started_at = process, (incarnation, boot, ip), time.monotonic()
        self.exited = asyncio.create_task(process.wait(), name=f"lab-agent-ct{self.vmid}-exit")
        assert process.stdout is not None
        try:
            async with asyncio.timeout(START_TIMEOUT):
                line = await process.stdout.readline()
        except TimeoutError:
            line = b""
        self.relay = asyncio.create_task(self._relay(process.stdout), name=f"lab-agent-ct{self.vmid}-stdout")
        if not line.startswith(LISTENING):
            log.warning(
                "agent of CT %s did not start on %s:%s; see %s", self.vmid, ip, config.port, self.log_file
            )
            self._note_failure(stable=False)
            await self._stop(graceful=False)
            return
        url = line.removeprefix(LISTENING).decode().strip()
        self.info = AgentInfo(self.vmid, process.pid, ip, config.port, url, state_dir, self.log_file, boot)
        log.info("agent of CT %s listening on %s (pid %s)", self.vmid, url, process.pid)

    async def _relay(self, stdout: asyncio.StreamReader) -> None:
        # Reading to EOF keeps a chatty agent from blocking on a full pipe, and lets the pipe close.
        with self.log_file.open("ab") as out:
            while chunk := await stdout.read(65536):
                out.write(chunk)
                out.flush()

    async def _stop(self, *, graceful: bool) -> None:
        process = self.process
        assert process is not None, "only a worker with an agent stops it"
        self.info = None
        if graceful and process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.supervisor.config.stop_grace):
                    await process.wait()
        # Whatever is left of the container (the game, if the agent could not stop it) goes now.
        await asyncio.to_thread(processes.kill_marked, self.supervisor.mark(self.vmid))
        # Not `await self.exited`: a cancelled await would cancel that task, and a second stop (at
        # close, after the worker was cancelled mid-stop) would then raise instead of waiting.
        await process.wait()
        if self.relay is not None:
            await asyncio.wait([self.relay])
        log.info(
            "agent of CT %s stopped (%s, exit code %s)",
            self.vmid,
            "graceful" if graceful else "killed",
            process.returncode,
        )
        self.process = self.exited = self.relay = None
        self.serving = None

    async def close(self) -> None:
        """Stop the worker and its agent (SIGTERM first), keeping the directory: the lab is ending."""
        self.task.cancel()
        await asyncio.wait([self.task])
        if self.process is not None:
            await self._stop(graceful=True)


def _report_end(task: asyncio.Task[object]) -> None:
    if task.cancelled():
        log.debug("%s cancelled", task.get_name())
    elif task.exception() is not None:
        log.error("%s failed", task.get_name(), exc_info=task.exception())
    elif task.get_name() == "lab-agent-poller":
        log.error("%s finished unexpectedly", task.get_name())
