"""The game process: its command line, starting it, stopping it, and never leaving one behind.

The command is a template (`--game-command`), split like a shell would (`shlex`) *before* the
placeholders are filled, so a path with a space stays one argument and a value can never inject an
extra argument. Only the known placeholders are allowed, and the template is checked at start-up, so a
typo is a configuration error rather than a crash on the first start.

The game runs in its own session (process group) with stdin closed and its console in
`<state-dir>/console.log`. Stopping sends SIGTERM to the whole group (the JVM's shutdown hook saves
the world), then SIGKILL after the stop timeout; after any exit the rest of the group is killed, so a
child the game spawned cannot keep the port.

Under systemd the game lives in the agent's cgroup and dies with it. Elsewhere (the lab, tests, a
SIGKILLed agent) it could outlive the agent, so the agent records the game's pid and kernel start
time (`/proc/<pid>/stat` field 22, which tells the same process from a later one that reused its pid)
and, at its next start, stops a recorded game that is still running: the agent never adopts a game it
cannot watch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shlex
import signal
import string
import time
from collections.abc import Sequence
from pathlib import Path

from zlh_actors import errors
from zlh_actors.agent import state

DEFAULT_COMMAND = "java -Xms{memory_mb}M -Xmx{memory_mb}M -jar {launcher} nogui"
PLACEHOLDERS = ("launcher", "ip", "port", "memory_mb", "dir", "python")


class GameStartFailed(errors.Permanent):
    """The game command could not be executed (missing program, bad permissions)."""


@dataclasses.dataclass(frozen=True)
class CommandTemplate:
    text: str
    tokens: tuple[str, ...]

    @classmethod
    def parse(cls, text: str) -> CommandTemplate:
        """The template in `text`; `ValueError` naming the problem when it is unusable."""
        try:
            tokens = tuple(shlex.split(text))
        except ValueError as exc:
            raise ValueError(f"cannot split the command: {exc}") from None
        if not tokens:
            raise ValueError("the command is empty")
        for token in tokens:
            try:
                fields = [name for _, name, _, _ in string.Formatter().parse(token) if name is not None]
            except ValueError as exc:
                raise ValueError(f"bad placeholder in {token!r}: {exc}") from None
            for name in fields:
                if name not in PLACEHOLDERS:
                    known = ", ".join("{" + known + "}" for known in PLACEHOLDERS)
                    raise ValueError(f"unknown placeholder {{{name}}}; known: {known}")
        return cls(text=text, tokens=tokens)

    def render(
        self, *, launcher: Path, ip: str, port: int, memory_mb: int, directory: Path, python: str
    ) -> list[str]:
        values = {
            "launcher": str(launcher),
            "ip": ip,
            "port": str(port),
            "memory_mb": str(memory_mb),
            "dir": str(directory),
            "python": python,
        }
        return [token.format_map(values) for token in self.tokens]


class Game:
    """One game process the agent started and is watching."""

    def __init__(self, process: asyncio.subprocess.Process, record: state.GameRecord) -> None:
        self.process = process
        self.record = record
        # Set before the agent signals the game, so its exit is reported as `stopped`, not `crashed`.
        self.stop_requested = False

    @property
    def pid(self) -> int:
        return self.record.pid

    async def wait(self) -> int:
        code = await self.process.wait()
        _signal_group(self.pid, signal.SIGKILL)
        return code

    async def terminate(self, timeout: float) -> None:
        """SIGTERM the game's group, then SIGKILL it if it has not exited within `timeout` seconds."""
        self.stop_requested = True
        _signal_group(self.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(asyncio.shield(self.process.wait()), timeout)
        except TimeoutError:
            _signal_group(self.pid, signal.SIGKILL)
            await self.process.wait()


async def spawn(argv: Sequence[str], cwd: Path, console_log: Path) -> Game:
    """Start `argv` in `cwd`, in a new session, its output appended to `console_log`."""
    with console_log.open("ab") as console:
        try:
            process = await asyncio.create_subprocess_exec(
                *argv,
                cwd=cwd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=console,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as exc:
            raise GameStartFailed(f"cannot run {argv[0]!r}: {exc.strerror}", command=argv[0]) from None
    ticks = start_ticks(process.pid)
    return Game(process, state.GameRecord(pid=process.pid, start_ticks=ticks if ticks is not None else -1))


def start_ticks(pid: int) -> int | None:
    """The kernel start time of `pid` (clock ticks since boot), or None when no live process has it."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # Field 2 (the command name) is in parentheses and may itself contain spaces and parentheses.
    fields = text[text.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


async def reap_orphan(record: state.GameRecord, timeout: float) -> bool:
    """Stop the recorded game if that very process still runs; True when there was one to stop."""
    if record.start_ticks < 0 or start_ticks(record.pid) != record.start_ticks:
        return False
    for signum in (signal.SIGTERM, signal.SIGKILL):
        _signal_group(record.pid, signum)
        deadline = time.monotonic() + timeout
        # Not our child (the agent restarted), so there is no wait(): poll /proc until it is gone.
        while start_ticks(record.pid) == record.start_ticks:
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        else:
            return True
    return True


def describe_exit(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"killed by {name} (exit code {code})"
    return f"exited with code {code}"


def _signal_group(pgid: int, signum: signal.Signals) -> None:
    # The group is gone when every member has exited; that is the outcome we want, not an error.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)
