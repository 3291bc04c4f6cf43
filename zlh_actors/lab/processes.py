"""Which processes belong to a lab container, and ending them all: the lab's stand-in for a cgroup.

A Proxmox node stops a container by ending every process in its cgroup, whoever started it. The
lab's agents run the game in a session of its own (as the reference agent does), so a process group
does not cover a container either. Instead, every process of a lab container carries one environment
variable, `ZLH_LAB_CONTAINER=<lab id>/<vmid>`: the lab sets it on the agent, and the agent's game
inherits it (the agent passes its environment on). `/proc/<pid>/environ` is fixed at exec, so the
mark cannot be lost by accident, and finding a container's processes is a scan of `/proc`.

A zombie (exited, not yet reaped by its parent) shows an empty environment and counts as gone: it
holds no port and runs no code.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterable
from pathlib import Path

MARK = "ZLH_LAB_CONTAINER"
LIFELINE = Path(__file__).with_name("lifeline.py")


def mark(lab_id: str, vmid: int) -> str:
    """The value of `MARK` for the processes of container `vmid` in lab `lab_id`."""
    return f"{lab_id}/{vmid}"


def marked(value: str, *, prefix: bool = False) -> list[int]:
    """Pids of live processes whose `MARK` is `value` (or starts with it, with `prefix`)."""
    wanted = f"{MARK}={value}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes()
        except OSError:
            continue  # gone meanwhile, or another user's process
        for variable in environ.split(b"\0"):
            if variable == wanted or (prefix and variable.startswith(wanted)):
                found.append(int(entry.name))
                break
    return found


def alive(pid: int) -> bool:
    """True while `pid` is a running process (not a zombie)."""
    return start_time(pid) is not None


def start_time(pid: int) -> int | None:
    """The kernel start time of a running `pid` (clock ticks since boot; tells it from a later
    process that reuses the pid), or None when no such process runs (gone, or a zombie)."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    # The command name (field 2) may contain spaces and parentheses; the state follows the last ")".
    fields = text[text.rindex(")") + 2 :].split()
    return None if fields[0] in ("Z", "X") else int(fields[19])


def signal_all(pids: Iterable[int], signum: signal.Signals) -> None:
    """Send `signum` to each process and to the process group it leads, if it leads one."""
    for pid in pids:
        # Already gone is the outcome we want; another user's pid cannot carry our mark.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if os.getpgid(pid) == pid:
                os.killpg(pid, signum)


def kill_marked(value: str, *, prefix: bool = False, timeout: float = 5.0) -> list[int]:
    """SIGKILL every process carrying the mark, and return once all are dead; the pids killed.

    Two things make one scan and one signal not enough: a process may fork between a scan and the
    signal, and a dying process loses its environment (the kernel frees its memory first) while it
    still holds its files, sockets included. So this scans until no marked process is left, and
    waits until every process it killed has actually exited. `TimeoutError` if some still run after
    `timeout` seconds (something unkillable, such as a process stuck in the kernel).
    """
    deadline = time.monotonic() + timeout
    killed: dict[int, int] = {}  # pid -> start time
    while True:
        found = {
            pid: started for pid in marked(value, prefix=prefix) if (started := start_time(pid)) is not None
        }
        dying = [pid for pid, started in killed.items() if pid not in found and start_time(pid) == started]
        if not found and not dying:
            return list(killed)
        if time.monotonic() > deadline:
            raise TimeoutError(
                f"processes {sorted(found.keys() | set(dying))} marked {value!r} survive SIGKILL"
            )
        signal_all(found, signal.SIGKILL)
        killed.update(found)
        time.sleep(0.005)


def lifeline_argv(python: str, command: list[str], parent: int | None = None) -> list[str]:
    """`command` run through `lifeline.py`, so it is killed when its parent (or `parent`) dies."""
    expected = ["--parent", str(parent)] if parent is not None else []
    return [python, str(LIFELINE), *expected, "--", *command]
