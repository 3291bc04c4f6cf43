"""`python -m zlh_actors.lab --dir DIR`: run a lab on its own until SIGINT or SIGTERM.

Several control-plane replicas can then share it: each loads DIR/lab.env (see docs/lab.md). On
SIGINT or SIGTERM every agent is stopped (SIGTERM, then SIGKILL), every game with it, and the
process exits 0; if this process is killed outright, its agents and games die with it (lifeline.py).

Output, for people and scripts: a few `zlh-lab:` lines, the last of which is
`zlh-lab: ready, settings in DIR/lab.env` once everything listens.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from zlh_actors.lab import cluster, settings, world


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m zlh_actors.lab",
        description="Run the zlh-actors lab: fake Proxmox, file server and an agent per running container.",
    )
    parser.add_argument("--dir", required=True, type=Path, help="lab directory (settings files, state, logs)")
    parser.add_argument(
        "--time-scale", type=float, default=0.05, help="real seconds per PVE second of a task (default 0.05)"
    )
    parser.add_argument(
        "--warmup", type=float, default=1.0, help="seconds a game takes before it answers ping (default 1)"
    )
    parser.add_argument("--nodes", type=int, default=2, help="cluster nodes pve1..pveN (default 2)")
    parser.add_argument("--subnet", default="127.20.0.0/16", help="loopback subnet of container IPs")
    parser.add_argument("--agent-port", type=int, default=None, help="agents' port (default: a free one)")
    parser.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    args = parser.parse_args(argv)
    if args.time_scale < 0 or args.warmup < 0 or args.nodes < 1:
        parser.error("--time-scale and --warmup must not be negative, --nodes at least 1")
    return args


async def serve(args: argparse.Namespace) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    lab = world.Lab(
        args.dir,
        time_scale=args.time_scale,
        nodes=args.nodes,
        warmup=args.warmup,
        subnet=args.subnet,
        agent_port=args.agent_port,
        agent_log_level=args.log_level,
    )
    async with lab:
        lab_settings = lab.settings
        nodes = ", ".join(lab.cluster.nodes)
        say(f"Proxmox (fakepve) at https://{lab_settings.pve_host}:{lab_settings.pve_port}, nodes {nodes}")
        say(f"template {lab_settings.template_vmid}, agents on port {lab_settings.agent_port}")
        say(f"files at {lab.files.base_url}; state and agent logs under {lab.directory}")
        say(f"launchers {lab.directory / settings.LAUNCHERS_FILE}, mods {lab.directory / settings.MODS_FILE}")
        say(f"ready, settings in {lab.env_file}")
        await stop.wait()
        say("stopping")
    say("stopped")


def say(text: str) -> None:
    print(f"zlh-lab: {text}", flush=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if args.log_level != "DEBUG":
        # fakepve logs every request it answers; the control plane's own logs say what it asked.
        logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    try:
        asyncio.run(serve(args))
    except (cluster.LabError, ValueError, OSError) as exc:
        print(f"zlh-lab: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
