"""The control plane of a chaos run: replicas as real `server.py` processes, to kill, freeze and restart.

Each replica has a slot with a fixed port. A killed replica is restarted on the same port, as
systemd would restart the unit: agents report to the callback URL of the replica that enrolled them
(`ZLH_CALLBACK_URL` defaults to the replica's own address, and the lab has no load balancer in
front), so a replica that came back elsewhere would leave its agents talking to nobody.

A replica counts as up once `/readyz` answers on its port *and* the `replicas` table shows its pid
there: on a machine where other runs pick free ports, another process may take a killed replica's
port before the new incarnation binds it, and its `/readyz` must not pass for ours.

A replica that exits on its own (a crash, or a refusal to start) is restarted the same way, as
`Restart=always` would, and recorded with the last line of its log: the summary lists every such
exit, and a run with one fails; so does a restart that never succeeds (its exception is recorded
too). Every process the fleet started is ended by `close()` (SIGCONT, SIGTERM, SIGKILL as a last
resort), whatever state a fault left it in; each incarnation logs to its own file, `r<slot>.<n>.log`.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import signal
from pathlib import Path

import asyncpg

from zlh_actors.lab import replicas, world

READY_TIMEOUT = 60.0
START_ATTEMPTS = 3
WATCH_INTERVAL = 0.5
RESTART_DELAY = 1.0


class Status(enum.Enum):
    UP = "up"
    FROZEN = "frozen"
    DOWN = "down"


@dataclasses.dataclass
class Slot:
    index: int
    port: int
    process: replicas.ReplicaProcess
    status: Status = Status.UP
    incarnation: int = 0
    restarting: asyncio.Lock = dataclasses.field(default_factory=asyncio.Lock)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Fleet:
    """The replicas, by slot; `urls` is what clients spread their requests over."""

    def __init__(self, lab: world.Lab, url: str, pool: asyncpg.Pool, logs: Path, env: dict[str, str]) -> None:
        self._lab, self._url, self._pool, self._logs, self._env = lab, url, pool, logs, env
        self.slots: list[Slot] = []
        self._retired: list[replicas.ReplicaProcess] = []  # killed incarnations, closed at the end
        self.crashes: list[str] = []  # every exit no fault caused, with the last line of its log
        self._watcher: asyncio.Task[None] | None = None
        self._restarts: set[asyncio.Task[None]] = set()

    def _spawn(self, index: int, port: int, incarnation: int) -> replicas.ReplicaProcess:
        environment = replicas.environment_for(self._lab, self._url, port, **self._env)
        return replicas.ReplicaProcess(environment, port, self._logs / f"r{index}.{incarnation}.log")

    async def start(self, count: int) -> None:
        for index in range(count):
            port = replicas.free_port()
            self.slots.append(Slot(index, port, self._spawn(index, port, 0)))
        await asyncio.gather(*(self._ready(slot.process) for slot in self.slots))
        self._watcher = asyncio.create_task(self._watch(), name="chaos:fleet-watch")

    async def _watch(self) -> None:
        """Restart replicas that exit on their own, recording each exit."""
        while True:
            await asyncio.sleep(WATCH_INTERVAL)
            for slot in self.slots:
                if slot.status is Status.UP and slot.process.proc.poll() is not None:
                    self._crashed(slot, "exited on its own")
                    slot.status = Status.DOWN
                    task = asyncio.create_task(self.restart(slot.index), name=f"chaos:restart-r{slot.index}")
                    self._restarts.add(task)
                    task.add_done_callback(self._restart_done)

    def _restart_done(self, task: asyncio.Task[None]) -> None:
        """Forget a finished restart; one that failed is a crash of the run, recorded like the others."""
        self._restarts.discard(task)
        if not task.cancelled() and (exc := task.exception()) is not None:
            self.crashes.append(f"{task.get_name()} failed: {type(exc).__name__}: {exc}")

    async def _ready(self, process: replicas.ReplicaProcess) -> None:
        """Until the process serves and has registered itself; RuntimeError if it exits or times out."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + READY_TIMEOUT
        await process.ready(timeout=READY_TIMEOUT)
        while not await self._pool.fetchval(
            "SELECT count(*) FROM replicas WHERE pid = $1 AND http_port = $2", process.proc.pid, process.port
        ):
            if process.proc.poll() is not None or loop.time() > deadline:
                raise RuntimeError(f"replica on port {process.port} never registered")
            await asyncio.sleep(WATCH_INTERVAL)

    def _crashed(self, slot: Slot, what: str) -> None:
        lines = slot.process.log_path.read_text(errors="replace").strip().splitlines()
        last = lines[-1][:300] if lines else ""
        code = slot.process.proc.returncode
        self.crashes.append(f"r{slot.index}.{slot.incarnation} {what} (status {code}); its log ends: {last}")

    @property
    def urls(self) -> list[str]:
        return [slot.url for slot in self.slots]

    def up(self) -> list[Slot]:
        return [slot for slot in self.slots if slot.status is Status.UP]

    def whole(self) -> bool:
        return all(slot.status is Status.UP for slot in self.slots)

    def kill(self, index: int) -> int:
        """SIGKILL the replica; its pid."""
        slot = self.slots[index]
        slot.process.signal(signal.SIGKILL)
        slot.status = Status.DOWN
        return slot.process.proc.pid

    async def restart(self, index: int) -> None:
        """Start a new incarnation of a replica that is down on its port, and wait until it is ready."""
        slot = self.slots[index]
        async with slot.restarting:  # a fault's restart, the watcher and the final heal may ask at once
            for attempt in range(START_ATTEMPTS):
                if slot.status is not Status.DOWN:
                    return
                if attempt:
                    await asyncio.sleep(RESTART_DELAY)
                slot.process.signal(signal.SIGKILL)  # an attempt that never became ready
                await slot.process.wait_exit(timeout=10)
                self._retired.append(slot.process)
                slot.incarnation += 1
                slot.process = self._spawn(index, slot.port, slot.incarnation)
                try:
                    await self._ready(slot.process)
                except RuntimeError:
                    self._crashed(slot, "did not start")
                    continue
                slot.status = Status.UP
                return
            raise RuntimeError(f"replica r{index} did not start in {START_ATTEMPTS} attempts")

    def freeze(self, index: int) -> int:
        """SIGSTOP the replica; its pid."""
        slot = self.slots[index]
        slot.process.signal(signal.SIGSTOP)
        slot.status = Status.FROZEN
        return slot.process.proc.pid

    def thaw(self, index: int) -> None:
        slot = self.slots[index]
        if slot.status is Status.FROZEN:
            slot.process.signal(signal.SIGCONT)
            slot.status = Status.UP

    async def heal(self) -> None:
        """Every replica up: the frozen ones continued, the killed ones restarted."""
        for slot in self.slots:
            self.thaw(slot.index)
        await asyncio.gather(*(self.restart(slot.index) for slot in self.slots if slot.status is Status.DOWN))

    def log_files(self) -> list[Path]:
        return sorted(self._logs.glob("r*.log"))

    async def close(self) -> None:
        pending = [task for task in (self._watcher, *self._restarts) if task is not None]
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        processes = [slot.process for slot in self.slots] + self._retired
        await asyncio.gather(*(process.close() for process in processes), return_exceptions=True)
