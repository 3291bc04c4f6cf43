"""A two-node fake PVE cluster for the driver's integration tests, and helpers to inspect it.

fakepve (a test-only dependency) serves the PVE 9 API over HTTPS with real UPID tasks, config locks
and PVE's error wording. Each test gets a fresh instance on 127.0.0.1 with a port the system picks,
served from its own event loop in a daemon thread, so the driver under test talks to it exactly as
production talks to Proxmox: through proxmoxer, over TLS verified against the fake's certificate,
with an API token.

The fake's model is only ever touched on its own loop (`call`, `run`), so a test's setup or fault
injection never races a request being answered. Time: PVE seconds are scaled by `TIME_SCALE`
(1 PVE second = 10 ms), so a task or a held lock lasts long enough to be observed in progress,
and the suite stays fast.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

import fakepve

from zlh_actors.proxmox import marks, protocol, settings

T = TypeVar("T")

HOST = "127.0.0.1"
NODES = ("pve1", "pve2")
TEMPLATE = protocol.Vmid(9000)
STORAGE = "ceph-ct"
TOKEN_USER = "zlh@pve"
TOKEN_NAME = "actors"
TIME_SCALE = 0.01
START_TIMEOUT = 30.0
# What the token needs (docs/proxmox.md lists the same set).
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


class FakeCluster:
    """A started FakePve: two nodes, shared RBD storage, the Fabric template, and an API token."""

    def __init__(self, certfile: str, keyfile: str) -> None:
        self.cafile = certfile
        self.token_value = uuid.uuid4().hex
        self.pve: Any = fakepve.FakePve(user="root@pam", password=uuid.uuid4().hex, host=HOST, port=0)
        self.pve.time_scale = TIME_SCALE
        self._seed()
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="fakepve", daemon=True)
        self._thread.start()
        self.run(self.pve.start(certfile, keyfile))

    def _seed(self) -> None:
        pve = self.pve
        for node in NODES[1:]:
            pve.add_node(node)
        # Clones land on other nodes than the template's, which PVE allows only from shared storage.
        pve.add_ceph_storage(STORAGE, pool="ct")
        pve.add_ct(
            TEMPLATE,
            "zlh-fabric-template",
            node=NODES[0],
            template=True,
            config={
                "rootfs": f"{STORAGE}:base-{TEMPLATE}-disk-0,size=8G",
                "net0": "name=eth0,bridge=vmbr0,firewall=1,hwaddr=BC:24:11:00:90:00,ip=dhcp,type=veth",
                "tags": "fabric;zlh-template",
                "description": "ZeroLagHub Fabric template",
                "memory": 1024,
                "cores": 1,
            },
        )
        pve.ct_secs["clone"] = 2
        pve.ct_secs["destroy"] = 1
        pve.apitokens[f"{TOKEN_USER}!{TOKEN_NAME}"] = self.token_value
        pve.grant(TOKEN_USER, "/", *PRIVILEGES)

    def stop(self) -> None:
        try:
            self.run(fakepve.settle())
            self.run(self.pve.stop())
            # Tasks a test left running (a long shutdown, a held lock) end with the fake.
            self.run(_cancel_others())
            self.run(_abort_transports())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(START_TIMEOUT)
            if not self._thread.is_alive():
                self.loop.close()

    # --- on the fake's loop ---------------------------------------------------------------------

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine of the fake (a scenario such as hold_config_lock) on its loop."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(START_TIMEOUT)

    def call(self, fn: Callable[[], T]) -> T:
        """Call `fn` on the fake's loop: setup, fault injection and reads of its state."""

        async def on_loop() -> T:
            return fn()

        return self.run(on_loop())

    # --- reading the fake's state ---------------------------------------------------------------

    def config(self, vmid: int) -> dict[str, Any] | None:
        """A copy of the container's config, or None if there is no such container."""

        def read() -> dict[str, Any] | None:
            ct = self.pve.ct(vmid)
            return None if ct is None else dict(ct.config)

        return self.call(read)

    def where(self, vmid: int) -> tuple[str, str] | None:
        """(node, power status) of the container, or None."""

        def read() -> tuple[str, str] | None:
            ct = self.pve.ct(vmid)
            return None if ct is None else (ct.node, ct.status)

        return self.call(read)

    def servers(self) -> dict[int, str]:
        """{vmid: node} of every container that is not a template."""
        return self.call(lambda: {ct.vmid: ct.node for ct in self.pve.cts if not ct.template})

    def requests(self, method: str | None = None, contains: str = "") -> list[tuple[str, str, bytes]]:
        """The requests the fake received, oldest first, filtered by method and path fragment."""
        return self.call(
            lambda: [
                (m, path, body)
                for m, path, body in self.pve.requests
                if (method is None or m == method) and contains in path
            ]
        )

    # --- the driver's view ----------------------------------------------------------------------

    def settings(self, **overrides: Any) -> settings.ProxmoxSettings:
        """Driver settings for this fake: verified TLS with its CA file, short budgets."""
        values: dict[str, Any] = {
            "host": HOST,
            "port": self.pve.port,
            "user": TOKEN_USER,
            "token_name": TOKEN_NAME,
            "token_value": self.token_value,
            "ca_file": self.cafile,
            "connect_timeout": 2.0,
            "read_timeout": 5.0,
            "pool_size": 16,
            "lock_wait": 10.0,
            "task_timeout": 15.0,
            "read_attempts": 3,
            "operation_attempts": 4,
            "backoff_initial": 0.01,
            "backoff_max": 0.2,
            "task_poll_initial": 0.005,
            "task_poll_max": 0.05,
        }
        values.update(overrides)
        return settings.ProxmoxSettings(**values)


async def _cancel_others() -> None:
    others = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in others:
        task.cancel()
    await asyncio.gather(*others, return_exceptions=True)


async def _abort_transports() -> None:
    """Close the connections the fake still holds when it stops.

    The driver closes its sockets before the fake stops, but the fake's loop may not have read the
    EOF yet (a TLS connection then waits for the peer's close_notify), and a loop closed with an
    open transport leaks its socket (a ResourceWarning, an error under this suite's filterwarnings).
    asyncio offers no public list of a loop's transports; `_transports` is CPython's, test-only use.
    """
    loop = asyncio.get_running_loop()
    for transport in list(getattr(loop, "_transports", {}).values()):
        if transport is not None:
            transport.abort()  # a no-op for a transport already closed
    await fakepve.settle()


def spec(index: int, *, node: str = NODES[1], generation: int = 1, **changes: Any) -> protocol.ContainerSpec:
    """The spec of test server number `index` (0-199): VMID 1000+index, IP 10.20.<index>.10/16."""
    values: dict[str, Any] = {
        "server_id": uuid.uuid5(uuid.NAMESPACE_URL, f"zlh-test-server-{index}"),
        "generation": generation,
        "name": f"mc-{index}",
        "node": node,
        "vmid": protocol.Vmid(1000 + index),
        "ip": f"10.20.{index}.10/16",
        "gateway": "10.20.0.1",
        "memory_mb": 2048,
        "cores": 2,
        "template_vmid": TEMPLATE,
    }
    values.update(changes)
    return protocol.ContainerSpec(**values)


def owner(spec_: protocol.ContainerSpec) -> marks.Marks:
    return marks.Marks(spec_.server_id, spec_.generation)


async def eventually(check: Callable[[], Awaitable[bool] | bool], timeout: float = 5.0) -> None:
    """Poll `check` until it holds; fail the test if it does not within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(0.01)
