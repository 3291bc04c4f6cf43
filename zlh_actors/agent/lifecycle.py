"""The agent itself: one enrollment, one install, at most one game, and a report for every change.

    unenrolled --enroll--> installing --ok--> installed --start--> starting --SLP answers--> ready
                               |                  ^                   |                       |
                               +--fail--> install_failed              +--exit, not asked--> crashed
                                                                      +--stop--> stopping --exit--> stopped

`start` is accepted from installed, stopped and crashed, and only when the applied-manifest hash on
disk equals the enrolled manifest's: that file is written last by a verified install, so a failed,
cancelled or interrupted install can never be started. `start` while starting/ready and `stop` while
nothing runs are no-ops, which makes a retried (or replayed) command harmless.

An enrollment for a newer generation replaces the old one at once (persisted before the answer), then
converges in one background task: cancel the previous install, stop the game if it runs (its exit is
reported as `stopped`), install, report. The previous install is cancelled synchronously in the
request handler, before anything can await, so a superseded install can never report `installed`
under the new enrollment. The same generation again is idempotent (it retries a failed install), and
may bring a new token or callback URL (a replica that took the server over re-enrolls it, and its
predecessor's token is revoked): those replace the old ones, the install stays. The same generation
with another manifest, or an older one, is refused: the control plane's generation number is what
orders enrollments, and an older one arriving late must not roll the server back.

Reports always carry the current enrollment; the reporter drops undelivered reports of older ones.
Background tasks (install, game watcher, readiness poller, graceful stop) are named and tracked, so
shutdown can cancel and await them; one that fails is logged with its traceback, a cancelled one
at debug level.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import Any

import aiohttp

from zlh_actors import errors
from zlh_actors.agent import config, game, install, ping, plan, reporter, state, wire

log = logging.getLogger(__name__)

PROGRESS_INTERVAL = 2.0
PING_TIMEOUT = 1.0
PING_INTERVAL_MAX = 1.0
STARTABLE = frozenset({"installed", "stopped", "crashed"})


class GenerationConflict(errors.Permanent):
    """The request names a generation other than the one the agent serves (older, or same but different).

    Attributes (in `details`): current, requested.
    """


class NotAllowed(errors.Permanent):
    """The command does not apply in the agent's current state.

    Attributes (in `details`): state.
    """


class Agent:
    def __init__(
        self,
        settings: config.Settings,
        store: state.StateDir,
        sender: reporter.Reporter,
        session: aiohttp.ClientSession,
    ) -> None:
        self._settings = settings
        self._store = store
        self._reporter = sender
        self._session = session
        self._enrollment: wire.Enrollment | None = None
        self._state: wire.AgentState = "unenrolled"
        self._detail = "waiting for enrollment"
        self._last_error: str | None = None
        self._applied: str | None = None
        self._game: game.Game | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._work: asyncio.Task[None] | None = None
        self._stop_reason = "stop requested"
        self._last_progress = 0.0
        # Start and stop each check then act across an await (spawning, signalling); one at a time.
        self._game_lock = asyncio.Lock()
        self._tasks: set[asyncio.Task[None]] = set()

    # --- commands ------------------------------------------------------------------------------

    async def restore(self) -> None:
        """Rebuild the state from the state directory after a (re)start, and report it."""
        enrollment = self._store.load_enrollment()
        self._applied = self._store.load_applied()
        record = self._store.load_game()
        orphan = record is not None and await game.reap_orphan(record, self._settings.stop_timeout)
        self._store.clear_game()
        if enrollment is None:
            return
        self._enrollment = enrollment
        self._reporter.supersede(enrollment.generation)
        if self._applied != enrollment.manifest_sha256:
            self._begin_install()
        elif orphan:
            self._set("crashed", "the agent restarted while the game ran; the game was stopped")
        else:
            self._set("installed", "agent started")

    def enroll(self, enrollment: wire.Enrollment) -> bool:
        """Accept `enrollment`; True when it started an install, False when it was already in place."""
        current = self._enrollment
        if current is not None:
            if enrollment.generation < current.generation:
                raise GenerationConflict(
                    f"generation {enrollment.generation} is older than the enrolled {current.generation}",
                    current=current.generation,
                    requested=enrollment.generation,
                )
            if enrollment.generation == current.generation:
                if (enrollment.server_id, enrollment.manifest) != (current.server_id, current.manifest):
                    raise GenerationConflict(
                        f"generation {current.generation} is already enrolled with different contents",
                        current=current.generation,
                        requested=enrollment.generation,
                    )
                if enrollment != current:
                    # The same install with a new token or callback: the replica that now owns the
                    # server enrolled again after its predecessor died (and the old token with it).
                    self._store.save_enrollment(enrollment)
                    self._enrollment = enrollment
                    log.info(
                        "enrollment of generation %d renewed: new token or callback", enrollment.generation
                    )
                if self._state != "install_failed" or self._installing():
                    return False
        self._store.save_enrollment(enrollment)
        self._enrollment = enrollment
        self._reporter.supersede(enrollment.generation)
        self._begin_install()
        return True

    async def start(self, generation: int) -> bool:
        """Start the game; True when this call started it, False when it was already starting/running."""
        enrollment = self._check(generation)
        async with self._game_lock:
            if self._state in ("starting", "ready"):
                return False
            if self._installing() or self._state not in STARTABLE:
                raise NotAllowed(f"cannot start the game while {self._state}", state=self._state)
            # Re-read the proof from disk rather than trust memory: it is what a verified install wrote.
            applied = self._store.load_applied()
            if applied != enrollment.manifest_sha256:
                raise NotAllowed("the enrolled manifest is not installed", state=self._state)
            directory = self._settings.game_dir
            argv = self._settings.game_command.render(
                launcher=directory / plan.LAUNCHER,
                ip=self._settings.listen_ip,
                port=enrollment.manifest.game_port,
                memory_mb=enrollment.manifest.memory_mb,
                directory=directory,
                python=self._settings.python,
            )
            self._set("starting", f"running {argv[0]}")
            try:
                running = await game.spawn(argv, directory, self._settings.state_dir / "console.log")
            except game.GameStartFailed as exc:
                self._set("crashed", exc.message)
                raise
            self._game = running
            self._store.save_game(running.record)
            self._stop_reason = "stop requested"
            self._watcher = self._spawn(self._watch(running), f"game-watch-{running.pid}")
            self._spawn(self._await_ready(running), f"game-ready-{running.pid}")
            return True

    async def stop(self, generation: int) -> bool:
        """Ask the game to stop; True when this call did, False when nothing was running."""
        self._check(generation)
        async with self._game_lock:
            running = self._game
            if running is None:
                return False
            if not running.stop_requested:
                self._stop_reason = "stop requested"
                self._state, self._detail = "stopping", "stop requested"
                self._spawn(running.terminate(self._settings.stop_timeout), f"game-stop-{running.pid}")
            return True

    async def close(self) -> None:
        """Stop everything this agent runs (agent shutdown): install, game, pollers."""
        if self._work is not None:
            self._work.cancel()
            await asyncio.wait([self._work])
        await self._stop_game("agent shutting down")
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.wait(self._tasks)

    def status(self) -> wire.Status:
        enrollment = self._enrollment
        running = self._game
        return {
            "server_id": enrollment.server_id if enrollment else None,
            "generation": enrollment.generation if enrollment else None,
            "state": self._state,
            "manifest_sha256": self._applied,
            "enrolled_manifest_sha256": enrollment.manifest_sha256 if enrollment else None,
            "game": {"pid": running.pid if running else None, "running": running is not None},
            "last_error": self._last_error,
            "detail": self._detail,
            "seq": self._reporter.seq,
        }

    # --- background work ---------------------------------------------------------------------

    def _begin_install(self) -> None:
        previous = self._work
        if previous is not None:
            previous.cancel()
        enrollment = self._enrollment
        assert enrollment is not None
        self._work = self._spawn(
            self._install(previous, enrollment), f"install-generation-{enrollment.generation}"
        )

    async def _install(self, previous: asyncio.Task[None] | None, enrollment: wire.Enrollment) -> None:
        if previous is not None:
            # wait() rather than await: awaiting a cancelled task would raise its CancelledError here.
            await asyncio.wait([previous])
        await self._stop_game(f"stopped to install generation {enrollment.generation}")
        sha = enrollment.manifest_sha256
        self._applied = None
        self._set("installing", f"generation {enrollment.generation}: installing manifest {sha}")
        self._last_progress = time.monotonic()
        try:
            work = await install.install(
                enrollment.manifest,
                sha,
                self._settings.game_dir,
                self._store,
                self._session,
                self._settings.listen_ip,
                self._progress,
            )
        except install.InstallFailed as exc:
            self._set("install_failed", exc.message)
            return
        except Exception as exc:
            log.exception("install of generation %d failed unexpectedly", enrollment.generation)
            self._set("install_failed", f"unexpected error: {exc}")
            return
        self._applied = sha
        self._set("installed", work.summary())

    def _progress(self, detail: str) -> None:
        self._detail = detail
        now = time.monotonic()
        # The status endpoint always shows progress; reports of it are rate-limited to keep seq meaningful.
        if now - self._last_progress >= PROGRESS_INTERVAL:
            self._last_progress = now
            self._set("installing", detail)

    async def _stop_game(self, reason: str) -> None:
        async with self._game_lock:
            running, watcher = self._game, self._watcher
            if running is None or watcher is None:
                return
            self._stop_reason = reason
            self._state, self._detail = "stopping", reason
        await running.terminate(self._settings.stop_timeout)
        await asyncio.wait([watcher])

    async def _watch(self, running: game.Game) -> None:
        code = await running.wait()
        self._store.clear_game()
        if self._game is running:
            self._game = None
        if running.stop_requested:
            self._set("stopped", f"{self._stop_reason}: {game.describe_exit(code)}")
        else:
            self._set("crashed", game.describe_exit(code))

    async def _await_ready(self, running: game.Game) -> None:
        assert self._enrollment is not None
        port = self._enrollment.manifest.game_port
        interval = 0.1
        while running.process.returncode is None and not running.stop_requested:
            try:
                answer = await ping.status(self._settings.listen_ip, port, PING_TIMEOUT)
            except ping.PingFailed:
                await asyncio.sleep(interval)
                interval = min(interval * 1.5, PING_INTERVAL_MAX)
                continue
            if self._game is running and self._state == "starting":
                version = answer.get("version")
                name = version.get("name") if isinstance(version, dict) else None
                self._set("ready", f"answers Server List Ping on {self._settings.listen_ip}:{port} ({name})")
            return

    # --- helpers -----------------------------------------------------------------------------

    def _check(self, generation: int) -> wire.Enrollment:
        enrollment = self._enrollment
        if enrollment is None:
            raise NotAllowed("the agent is not enrolled", state=self._state)
        if generation != enrollment.generation:
            raise GenerationConflict(
                f"generation {generation} is not the enrolled generation {enrollment.generation}",
                current=enrollment.generation,
                requested=generation,
            )
        return enrollment

    def _installing(self) -> bool:
        return self._work is not None and not self._work.done()

    def _set(self, new_state: wire.ReportState, detail: str) -> None:
        self._state, self._detail = new_state, detail
        if new_state in ("install_failed", "crashed"):
            self._last_error = detail
        elif new_state in ("installed", "ready"):
            self._last_error = None
        if self._enrollment is not None:
            self._reporter.report(self._enrollment, new_state, detail)

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> asyncio.Task[None]:
        task = asyncio.create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._finished)
        return task

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if task.cancelled():
            log.debug("task %s cancelled", task.get_name())
        elif task.exception() is not None:
            log.error("task %s failed", task.get_name(), exc_info=task.exception())
