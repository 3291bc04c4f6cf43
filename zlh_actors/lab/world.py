"""The lab: the whole world the control plane talks to, on one machine, for one `async with`.

    async with world.Lab(tmp_path, time_scale=0.01, warmup=0.3) as lab:
        proxmox = driver.ProxmoxerDriver(lab.settings.proxmox())
        ...                                   # the control plane under test does its work
        await lab.wait_agent(vmid)            # the container it started has a listening agent
        await lab.destroy_container(vmid)     # something happens behind its back

It composes, in start order (and stops in the reverse):

1. `cluster.Cluster`: fakepve as Proxmox over HTTPS on 127.0.0.1 (any free port), its certificate
   written to the lab directory as the CA to verify against;
2. `files.serve`: the file server for the stand-in launcher and the mod catalog;
3. the settings files (`settings.write`): lab.env, launchers.json, mods.json, enrollment.key;
4. `agents.Supervisor`: a reference agent process for every running container with an IP in the
   lab's subnet, on that IP and the agent port.

Every port is chosen free when the lab starts, so labs and test runs coexist; the agent port is
one port free on every address at that moment (agents of different containers share it, each on
its own IP). A lock file keeps a second lab out of a directory in use: they would share state dirs.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import ipaddress
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from types import TracebackType
from typing import Any

from zlh_actors.lab import agents as agents_module
from zlh_actors.lab import cluster, files, settings

LOCK_FILE = "lab.lock"
WAIT_INTERVAL = 0.02


class Lab:
    """A running lab (see the module docstring). Attributes are set once it has started.

    Attributes:
        directory: the lab directory (settings files, certificate, containers/, logs/).
        settings: the connection settings, also in `env_file` (lab.env).
        cluster: the fake Proxmox; `cluster.pve` is the FakePve for fault injection, through
            `cluster.call(lambda: ...)` and `cluster.run(coroutine)`, which run on its loop.
        files: the file server (launcher, mods, download counts).
        supervisor: the agent supervisor.
    """

    def __init__(
        self,
        directory: Path,
        *,
        time_scale: float = 0.05,
        nodes: int = 2,
        warmup: float = 1.0,
        subnet: str = "127.20.0.0/16",
        agent_port: int | None = None,
        poll_interval: float = 0.1,
        node_memory_gib: int = 512,
        agent_log_level: str = "INFO",
        stop_grace: float = 10.0,
    ) -> None:
        self.directory = Path(directory).resolve()
        self._options: dict[str, Any] = {
            "time_scale": time_scale,
            "nodes": nodes,
            "node_memory_gib": node_memory_gib,
        }
        self._subnet = ipaddress.IPv4Network(subnet)
        if not self._subnet.subnet_of(ipaddress.IPv4Network("127.0.0.0/8")):
            raise ValueError(f"the lab's subnet must be on loopback (127.0.0.0/8), not {subnet}")
        self._agent_port = agent_port
        self._agent_options: dict[str, Any] = {
            "warmup": warmup,
            "poll_interval": poll_interval,
            "log_level": agent_log_level,
            "stop_grace": stop_grace,
        }
        self._stack = contextlib.AsyncExitStack()
        self._lock: int | None = None

    async def __aenter__(self) -> Lab:
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock = _lock(self.directory / LOCK_FILE)
        try:
            await self._start()
        except BaseException:
            await self._stack.aclose()
            _unlock(self._lock)
            self._lock = None
            raise
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            await self._stack.aclose()
        finally:
            if self._lock is not None:
                _unlock(self._lock)
                self._lock = None

    async def _start(self) -> None:
        self.cluster = await cluster.Cluster.start(self.directory, **self._options)
        self._stack.push_async_callback(self.cluster.close)
        self.files = await self._stack.enter_async_context(files.serve("127.0.0.1", 0))
        for name in settings.MODS:
            self.files.add_mod(name)
        self.settings = settings.LabSettings(
            pve_host=cluster.HOST,
            pve_port=self.cluster.port,
            pve_user=self.cluster.token_user,
            pve_token_name=self.cluster.token_name,
            pve_token_value=self.cluster.token_value,
            pve_ca_file=self.cluster.ca_file,
            template_vmid=self.cluster.template_vmid,
            enrollment_key_file=settings.write_key(self.directory),
            ip_subnet=self._subnet,
            agent_port=self._agent_port or free_port(),
        )
        self.env_file = settings.write(self.directory, self.settings, self.files)
        self.supervisor = agents_module.Supervisor(
            self.cluster,
            agents_module.AgentConfig(
                lab_id=secrets.token_hex(4),
                directory=self.directory,
                subnet=self._subnet,
                port=self.settings.agent_port,
                key_file=self.settings.enrollment_key_file,
                **self._agent_options,
            ),
        )
        await self.supervisor.start()
        self._stack.push_async_callback(self.supervisor.close)

    # --- the fake Proxmox --------------------------------------------------------------------------

    @property
    def pve(self) -> Any:
        """The FakePve: touch it only through `cluster.call` / `cluster.run` (it lives on its own loop)."""
        return self.cluster.pve

    async def stop_container(self, vmid: int, *, graceful: bool = False) -> None:
        await self.cluster.stop_container(vmid, graceful=graceful)

    async def start_container(self, vmid: int) -> None:
        await self.cluster.start_container(vmid)

    async def destroy_container(self, vmid: int) -> None:
        await self.cluster.destroy_container(vmid)

    async def plant_foreign(
        self, vmid: int, *, node: str | None = None, running: bool = False, ip: str | None = None
    ) -> None:
        await self.cluster.plant_foreign(vmid, node=node, running=running, ip=ip)

    async def crash_node(self, node: str) -> None:
        await self.cluster.crash_node(node)

    async def restore_node(self, node: str) -> None:
        await self.cluster.restore_node(node)

    # --- agents ---------------------------------------------------------------------------------------

    def agents(self) -> dict[int, agents_module.AgentInfo]:
        """The listening agents, by VMID."""
        return self.supervisor.agents()

    async def wait_agent(
        self, vmid: int, *, timeout: float = 15.0, replacing: int | None = None
    ) -> agents_module.AgentInfo:
        """The container's agent once it listens (one with another pid than `replacing`, if given)."""
        found: list[agents_module.AgentInfo] = []

        def listening() -> bool:
            info = self.supervisor.agents().get(vmid)
            if info is not None and info.pid != replacing:
                found.append(info)
            return bool(found)

        await _until(listening, timeout, f"an agent for CT {vmid}")
        return found[0]

    async def wait_no_agent(self, vmid: int, *, timeout: float = 15.0) -> None:
        """Until the container has no agent and no process left (its game included)."""

        async def none_left() -> bool:
            if self.supervisor.has_process(vmid):
                return False
            return not await asyncio.to_thread(self.supervisor.processes, vmid)

        await _until_async(none_left, timeout, f"no process of CT {vmid}")

    def processes(self, vmid: int) -> list[int]:
        return self.supervisor.processes(vmid)

    def kill_agent(self, vmid: int) -> int:
        return self.supervisor.kill_agent(vmid)

    def kill_game(self, vmid: int) -> list[int]:
        return self.supervisor.kill_game(vmid)

    def container_dir(self, vmid: int) -> Path:
        """The container's "disk": the agent's state dir (and game dir) while the container exists."""
        return self.supervisor.container_dir(vmid)

    def log_file(self, vmid: int) -> Path:
        return self.supervisor.log_file(vmid)

    # --- files ------------------------------------------------------------------------------------------

    def add_mod(self, name: str, *, tamper: files.Tamper | None = None) -> files.ModFile:
        """Serve another mod and list it in mods.json; `tamper`: its advertised hash != its bytes."""
        mod = self.files.add_mod(name, tamper=tamper)
        settings.write_mods(self.directory, self.files)
        return mod


def free_port() -> int:
    """A TCP port no socket uses on any IPv4 address right now (binding the wildcard checks them all)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("0.0.0.0", 0))
        port: int = probe.getsockname()[1]
        return port


def _lock(path: Path) -> int:
    # flock, not a pid file: the kernel releases it when the lab dies, however it dies.
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise cluster.LabError(
            "another lab is running in this directory", directory=str(path.parent)
        ) from None
    return fd


def _unlock(fd: int) -> None:
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


async def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    async def wrapped() -> bool:
        return check()

    await _until_async(wrapped, timeout, what)


async def _until_async(check: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"waited {timeout}s for {what}")
        await asyncio.sleep(WAIT_INTERVAL)
