#!/usr/bin/env python3
"""Run a command that is killed when its parent dies: the lab's stand-in for a container's cgroup.

    python lifeline.py [--parent PID] -- COMMAND [ARG...]

On a Proxmox node, every process of a container lives in the container's cgroup, and stopping the
container (or losing the node) ends them all, whatever they were doing. The lab has no cgroups: an
agent is a plain child process of the lab, and a game is a plain child of its agent. If the lab were
killed with SIGKILL, nothing would stop its agents, and a game started in its own session survives
its agent. So the lab starts agents through this script, and the lab's game command starts games
through it too: it arms Linux's parent-death signal (`prctl(PR_SET_PDEATHSIG, SIGKILL)`) and then
`exec`s the command, which keeps the signal (it survives execve for an ordinary binary) and the pid.
Lab killed -> its agents are killed -> their games are killed.

The signal is armed after the fork, so a parent that died in between would go unnoticed: the script
compares the parent with the one it expected (`--parent`, else the parent it saw before arming) and
exits at once if they differ.

Linux only. Standard library only, and run by path (never imported as part of the package), so it
works from any directory with any Python.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys

PR_SET_PDEATHSIG = 1
USAGE = "usage: lifeline.py [--parent PID] -- COMMAND [ARG...]"


def main(argv: list[str]) -> int:
    expected = os.getppid()
    if argv[:1] == ["--parent"] and len(argv) >= 2 and argv[1].isdigit():
        expected = int(argv[1])
        argv = argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    if not argv:
        print(USAGE, file=sys.stderr)
        return 2
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0) != 0:
        print(f"lifeline: prctl failed: {os.strerror(ctypes.get_errno())}", file=sys.stderr)
        return 2
    if os.getppid() != expected:
        return 1  # The parent is already gone: the signal will never come, so do not start at all.
    try:
        os.execvp(argv[0], argv)
    except OSError as exc:
        print(f"lifeline: cannot run {argv[0]!r}: {exc.strerror}", file=sys.stderr)
        return 127


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
