"""A `ProxmoxDriver` that times every call and counts errors by kind, around any other driver.

Kept out of the driver itself so the driver stays about Proxmox, and so the metrics cover whatever
implementation is plugged in.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import TypeVar

from zlh_actors import metrics
from zlh_actors.proxmox import protocol

T = TypeVar("T")

LATENCY = "zlh_proxmox_call_seconds"
ERRORS = "zlh_proxmox_errors_total"


class Instrumented:
    def __init__(self, inner: protocol.ProxmoxDriver, counters: metrics.Metrics) -> None:
        self._inner = inner
        self._metrics = counters
        counters.describe(LATENCY, "duration of Proxmox driver operations (retries included)")
        counters.describe(ERRORS, "Proxmox driver operations that raised, by operation and error")

    async def _timed(self, operation: str, call: Callable[[], Awaitable[T]]) -> T:
        started = time.monotonic()
        try:
            return await call()
        except Exception as exc:
            self._metrics.inc(ERRORS, operation=operation, error=type(exc).__name__)
            raise
        finally:
            self._metrics.observe(LATENCY, time.monotonic() - started, operation=operation)

    async def ensure_container(self, spec: protocol.ContainerSpec) -> protocol.EnsureOutcome:
        return await self._timed("ensure_container", lambda: self._inner.ensure_container(spec))

    async def start(self, ref: protocol.ContainerRef) -> None:
        await self._timed("start", lambda: self._inner.start(ref))

    async def shutdown(self, ref: protocol.ContainerRef, timeout: float) -> protocol.ShutdownOutcome:
        return await self._timed("shutdown", lambda: self._inner.shutdown(ref, timeout))

    async def stop(self, ref: protocol.ContainerRef) -> None:
        await self._timed("stop", lambda: self._inner.stop(ref))

    async def status(self, ref: protocol.ContainerRef) -> protocol.ContainerStatus:
        return await self._timed("status", lambda: self._inner.status(ref))

    async def destroy(self, ref: protocol.ContainerRef) -> protocol.DestroyOutcome:
        return await self._timed("destroy", lambda: self._inner.destroy(ref))

    async def nodes(self) -> list[protocol.NodeInfo]:
        return await self._timed("nodes", self._inner.nodes)

    async def list_owned(self) -> list[protocol.OwnedContainer]:
        return await self._timed("list_owned", self._inner.list_owned)

    async def list_guests(self) -> list[protocol.GuestSummary]:
        return await self._timed("list_guests", self._inner.list_guests)

    async def marks_of(self, vmid: protocol.Vmid, node: str) -> tuple[uuid.UUID, int] | None:
        return await self._timed("marks_of", lambda: self._inner.marks_of(vmid, node))

    async def wait_task(self, upid: str, deadline: float) -> protocol.TaskResult:
        return await self._timed("wait_task", lambda: self._inner.wait_task(upid, deadline))

    async def close(self) -> None:
        await self._inner.close()
