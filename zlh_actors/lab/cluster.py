"""The lab's Proxmox: fakepve seeded as a ZeroLagHub cluster, on its own thread and event loop.

fakepve (a dev-only, AGPL dependency that only the lab and the tests import) serves the PVE 9 API
over HTTPS with real tasks, config locks and PVE's error wording. The lab seeds it as production
looks: `nodes` nodes `pve1..pveN`, shared RBD storage (a clone may land on another node than its
template), the Fabric LXC template at VMID 9000 tagged `zlh-template`, and an API token for the
control plane holding exactly the privileges docs/proxmox.md lists. Task durations are in PVE
seconds scaled by `time_scale`, so a clone takes long enough to be interrupted.

Why a thread of its own: a real Proxmox keeps answering whatever its clients do. Served from the
caller's event loop, fakepve would freeze whenever that loop is busy or blocked (a test calling a
synchronous helper, a service under test stalling its loop), which is a failure a real cluster
never has. Its model is only ever touched on its own loop (`call`, `run`), so setup, fault
injection and the agent supervisor's reads never race a request being answered.

The supervisor reads the model (`guests`), not the REST API: injected network faults and failing
requests are for the control plane, and must not make the lab's own view of which containers run
flicker. The helpers that act "behind the control plane's back" (`stop_container`, `destroy_container`)
do go through the REST API, as an operator would, so PVE's rules (locks, "container is running") apply
to them and they leave tasks in the task log; they therefore also meet the faults a test injected.
"""

from __future__ import annotations

import asyncio
import dataclasses
import ipaddress
import secrets
import ssl
import threading
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import fakepve
from fakepve import certs

from zlh_actors import errors

T = TypeVar("T")

HOST = "127.0.0.1"
TEMPLATE_VMID = 9000
STORAGE = "ceph-ct"
TOKEN_USER = "zlh@pve"
TOKEN_NAME = "actors"
# The lab's own token for the helpers below; root@pam may do anything, as on a real node.
ROOT_TOKEN = ("root@pam", "lab")
# What the control plane's token needs (docs/proxmox.md lists the same set).
PRIVILEGES = (
    "VM.Audit",
    "VM.Allocate",
    "VM.Clone",
    "VM.Config.CPU",
    "VM.Config.Memory",
    "VM.Config.Network",
    "VM.Config.Options",
    "VM.PowerMgmt",
    "Datastore.AllocateSpace",
    "Datastore.Audit",
    "SDN.Use",
)
# PVE seconds of the container tasks: a full clone of an 8 GiB root disk on Ceph, a purge.
CLONE_SECS = 30
DESTROY_SECS = 5
# Tasks whose end leaves the container stopped after its processes were asked to stop; any other
# way (vzstop, a forced destroy, a node crash) kills them at once.
GRACEFUL_STOPS = frozenset({"vzshutdown", "vzreboot", "hastop"})
POWER_TASKS = GRACEFUL_STOPS | {"vzstart", "vzstop", "hastart", "vzdestroy"}
THREAD_TIMEOUT = 30.0
TASK_POLL = 0.02
# Real seconds a helper waits for its task; the lab's tasks take a few PVE seconds at most.
TASK_TIMEOUT = 60.0


class LabError(errors.Permanent):
    """A lab helper could not do what it was asked (PVE refused, a task failed).

    Attributes (in `details`): what was attempted, and PVE's status and message when it answered.
    """


@dataclasses.dataclass(frozen=True)
class Guest:
    """A container as the agent supervisor sees it.

    Attributes:
        vmid, node, status: as PVE has them ("running", "stopped").
        ip: the address of net0's static `ip=`, without its prefix; None for DHCP or none.
        incarnation: which container holds the VMID; a new number when it is destroyed and made again.
        boot: PVE's pid of the running container, new at every start; None when not running.
    """

    vmid: int
    node: str
    status: str
    ip: str | None
    incarnation: int
    boot: int | None


class _LabPve(fakepve.FakePve):  # type: ignore[misc]  # fakepve ships no type information
    """fakepve with nodes as big as the lab needs (its own report 8 GiB, 6 free: three servers)."""

    node_memory = 512 * 2**30

    def _node_stats(self, online: bool) -> dict[str, Any]:
        # fakepve's only hook for node sizes (a private method); tests pin the effect through the
        # driver's `nodes()`, so a fakepve release that renames it fails loudly.
        stats: dict[str, Any] = super()._node_stats(online)
        if stats:
            stats["maxmem"] = self.node_memory
        return stats


class Cluster:
    """A started fake cluster. Build with `await Cluster.start(...)`; end with `close()`."""

    def __init__(self, directory: Path, *, nodes: int, time_scale: float, node_memory_gib: int) -> None:
        if nodes < 1:
            raise ValueError("a cluster needs at least one node")
        self.nodes = tuple(f"pve{index}" for index in range(1, nodes + 1))
        self.template_vmid = TEMPLATE_VMID
        self.token_user, self.token_name = TOKEN_USER, TOKEN_NAME
        self.token_value = secrets.token_hex(16)
        self._root_secret = secrets.token_hex(16)
        certfile, keyfile, _ = certs.make_cert(str(directory), name="pve", hosts=(HOST,))
        self.ca_file, self._key_file = Path(certfile), Path(keyfile)
        self.pve: Any = _LabPve(user="root@pam", password=secrets.token_hex(16), host=HOST, port=0)
        self.pve.node_memory = node_memory_gib * 2**30
        self.pve.time_scale = time_scale
        self._incarnations: dict[int, tuple[Any, int]] = {}
        self._next_incarnation = 1
        self._seed()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="lab-fakepve", daemon=True)
        self._http: aiohttp.ClientSession | None = None

    @classmethod
    async def start(
        cls, directory: Path, *, nodes: int = 2, time_scale: float = 0.05, node_memory_gib: int = 512
    ) -> Cluster:
        cluster = cls(directory, nodes=nodes, time_scale=time_scale, node_memory_gib=node_memory_gib)
        cluster._thread.start()
        try:
            await cluster.run(cluster.pve.start(str(cluster.ca_file), str(cluster._key_file)))
        except BaseException:
            await cluster.close()
            raise
        context = ssl.create_default_context(cafile=str(cluster.ca_file))
        cluster._http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=context))
        return cluster

    def _seed(self) -> None:
        pve = self.pve
        for node in self.nodes:
            pve.add_node(node)
        pve.add_ceph_storage(STORAGE, pool="ct")
        pve.add_ct(
            TEMPLATE_VMID,
            "zlh-fabric-template",
            node=self.nodes[0],
            template=True,
            config={
                "rootfs": f"{STORAGE}:base-{TEMPLATE_VMID}-disk-0,size=8G",
                "net0": "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:00:90:00,ip=dhcp,type=veth",
                "tags": "fabric;zlh-template",
                "description": "ZeroLagHub Fabric template (Debian 12, Java 21, zlh-agent)",
                "memory": 1024,
                "cores": 1,
            },
        )
        pve.ct_secs.update(clone=CLONE_SECS, destroy=DESTROY_SECS)
        pve.apitokens[f"{TOKEN_USER}!{TOKEN_NAME}"] = self.token_value
        pve.grant(TOKEN_USER, "/", *PRIVILEGES)
        pve.apitokens["!".join(ROOT_TOKEN)] = self._root_secret

    @property
    def port(self) -> int:
        port: int = self.pve.port
        return port

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()
        try:
            await self.run(fakepve.settle())
            await self.run(self.pve.stop())
            # Tasks still running (a long shutdown, a held lock) end with the fake.
            await self.run(_cancel_others())
            await self.run(_abort_transports())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            await asyncio.to_thread(self._thread.join, THREAD_TIMEOUT)
            if not self._thread.is_alive():
                self.loop.close()

    # --- on the fake's loop -----------------------------------------------------------------------

    async def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the fake (a scenario such as `pve.hold_config_lock(vmid, secs)`) on its loop."""
        return await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coro, self.loop))

    async def call(self, fn: Callable[[], T]) -> T:
        """Call `fn` on the fake's loop: fault injection (`pve.fail(...)`) and reads of its model."""

        async def on_loop() -> T:
            return fn()

        return await self.run(on_loop())

    async def guests(self) -> dict[int, Guest]:
        """Every container that is not a template, by VMID."""
        return await self.call(self._read_guests)

    def _read_guests(self) -> dict[int, Guest]:
        out = {}
        for ct in self.pve.cts:
            if ct.template:
                continue
            known = self._incarnations.get(ct.vmid)
            if known is None or known[0] is not ct:
                known = (ct, self._next_incarnation)
                self._next_incarnation += 1
                self._incarnations[ct.vmid] = known
            running = ct.status == "running"
            out[ct.vmid] = Guest(
                vmid=ct.vmid,
                node=ct.node,
                status=ct.status,
                ip=static_ip(ct.config.get("net0")),
                incarnation=known[1],
                # A container made running by hand (fault injection) may have no pid: still a boot.
                boot=(ct.pid or 0) if running else None,
            )
        for vmid in self._incarnations.keys() - out.keys():
            del self._incarnations[vmid]  # destroyed: let the container object go
        return out

    async def stopped_gracefully(self, vmid: int) -> bool:
        """Whether the container's last power change was a clean shutdown (not a stop or a crash)."""

        def read() -> bool:
            for task in reversed(self.pve.tasklog):
                if task.get("id") == str(vmid) and task.get("type") in POWER_TASKS:
                    return task["type"] in GRACEFUL_STOPS
            return False

        return await self.call(read)

    # --- behind the control plane's back ------------------------------------------------------------

    async def stop_container(self, vmid: int, *, graceful: bool = False) -> None:
        """Stop the container through the API (`pct stop`, or `pct shutdown` with `graceful`)."""
        action = "shutdown" if graceful else "stop"
        await self._task(vmid, "POST", f"status/{action}", f"{action} CT {vmid}")

    async def start_container(self, vmid: int) -> None:
        """Start the container through the API (`pct start`)."""
        await self._task(vmid, "POST", "status/start", f"start CT {vmid}")

    async def destroy_container(self, vmid: int) -> None:
        """Destroy the container through the API, stopping it first if it runs (`pct destroy --force`)."""
        await self._task(vmid, "DELETE", "?force=1&purge=1", f"destroy CT {vmid}")

    async def plant_foreign(
        self, vmid: int, *, node: str | None = None, running: bool = False, ip: str | None = None
    ) -> None:
        """Put somebody else's container at `vmid`: no ownership marks, its own tags and description.

        `ip` ("127.20.9.9/16") gives it a static address; if that is in the lab's subnet and it runs,
        the lab gives it an agent like any other container (someone else's agent, as far as the
        control plane can tell).
        """
        net = f"name=eth0,bridge=vmbr0,hwaddr=BC:24:11:0F:{vmid % 256:02X}:01,ip={ip or 'dhcp'},type=veth"
        config = {
            "rootfs": f"{STORAGE}:vm-{vmid}-disk-0,size=4G",
            "net0": net,
            "tags": "other-team",
            "description": "Not ZeroLagHub's: a container somebody made by hand.",
            "memory": 512,
        }

        def plant() -> None:
            try:
                self.pve.add_ct(
                    vmid,
                    f"foreign-{vmid}",
                    node=node or self.nodes[-1],
                    status="running" if running else "stopped",
                    config=config,
                )
            except ValueError as exc:  # fakepve's "CT <vmid> already exists on node ..."
                raise LabError(f"cannot plant a foreign container: {exc}", vmid=vmid) from None

        await self.call(plant)

    async def crash_node(self, node: str) -> None:
        """The node goes down: its API answers 595, and every container on it stops at once."""

        def crash() -> None:
            self.pve.set_node_offline(node)
            for ct in self.pve.cts:
                if ct.node == node and ct.status == "running":
                    ct.status, ct.pid = "stopped", None

        await self.call(crash)

    async def restore_node(self, node: str) -> None:
        """The node is back (its containers stay stopped, as after a reboot without onboot)."""
        await self.call(lambda: self.pve.set_node_offline(node, offline=False))

    async def _task(self, vmid: int, method: str, action: str, what: str) -> None:
        guest = (await self.guests()).get(vmid)
        if guest is None:
            raise LabError(f"cannot {what}: no such container", vmid=vmid)
        path = f"/nodes/{guest.node}/lxc/{vmid}"
        path += action if action.startswith("?") else f"/{action}"
        upid = await self._api(method, path, what)
        deadline = asyncio.get_running_loop().time() + TASK_TIMEOUT
        while True:
            state = await self._api("GET", f"/nodes/{guest.node}/tasks/{upid}/status", what)
            if state.get("status") == "stopped":
                break
            if asyncio.get_running_loop().time() > deadline:
                raise LabError(f"cannot {what}: the task did not end", vmid=vmid, upid=upid)
            await asyncio.sleep(TASK_POLL)
        if state.get("exitstatus") != "OK":
            raise LabError(f"cannot {what}: task failed", vmid=vmid, exitstatus=state.get("exitstatus"))

    async def _api(self, method: str, path: str, what: str) -> Any:
        assert self._http is not None, "Cluster.start() opens the HTTP session"
        headers = {"Authorization": "PVEAPIToken={}!{}={}".format(*ROOT_TOKEN, self._root_secret)}
        url = f"https://{HOST}:{self.port}/api2/json{path}"
        async with self._http.request(method, url, headers=headers) as response:
            if response.status != 200:
                raise LabError(f"cannot {what}", status=response.status, pve_message=response.reason)
            body = await response.json(content_type=None)
        return body["data"]


def static_ip(net0: object) -> str | None:
    """The address in a net0 value's `ip=` ("127.20.0.5/16" -> "127.20.0.5"); None for dhcp/manual."""
    if not isinstance(net0, str):
        return None
    for part in net0.split(","):
        key, _, value = part.partition("=")
        if key.strip() == "ip":
            try:
                return str(ipaddress.ip_interface(value.strip()).ip)
            except ValueError:
                return None  # dhcp, manual
    return None


async def _cancel_others() -> None:
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _abort_transports() -> None:
    """Close the connections the fake still holds when it stops.

    A TLS connection whose peer has closed may still wait for its close_notify, and a loop closed with
    an open transport leaks its socket (a ResourceWarning). asyncio has no public list of a loop's
    transports; `_transports` is CPython's (tests/integration/proxmox/fakecluster.py does the same).
    """
    loop = asyncio.get_running_loop()
    for transport in list(getattr(loop, "_transports", {}).values()):
        if transport is not None:
            transport.abort()
    await fakepve.settle()
