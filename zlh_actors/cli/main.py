"""`zlh`: the command line of the control plane's HTTP API (entry point and argument parsing).

    zlh servers create NAME --minecraft V --loader V --installer V [--mod NAME=URL#SHA512 ...]
                            [--property KEY=VALUE ...] [--memory MB] [--cores N] [--disk GB]
                            [--key KEY] [--wait]
    zlh servers ls [--state STATE] | show ID | start ID | stop ID | restart ID | retry ID | delete ID
    zlh watch [ID] [--since CURSOR] [--until STATE ...]
    zlh admin actors | shards | drift

Every command takes `--url`, `--token`, `--config`, `--json` and `--debug`, before or after the
subcommand (config.py says where else the URL and token come from). Exit status: 0 done; 1 the
service refused or failed (or a server waited for ended up failed); 2 bad usage or configuration;
3 the service could not be reached; 130 interrupted; 141 stdout closed (`zlh watch | head`). An
error is one line on stderr, never a traceback (`--debug` adds it).

`run` is `main` with its world passed in (arguments, environment, output), which is how the tests
drive it in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import traceback
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import NoReturn

from zlh_actors.cli import client, commands, config, errors, render, watch

Handler = Callable[[client.Client, render.Console, argparse.Namespace], Awaitable[int]]
ACTIONS = ("start", "stop", "restart", "retry", "delete")


class Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (and exit status 2 through `UsageError`)."""

    def error(self, message: str) -> NoReturn:
        raise errors.UsageError(f"{message} (see {self.prog} --help)")


def _common(parser: argparse.ArgumentParser, default: object) -> None:
    # Subcommands repeat the options with SUPPRESS as default, so an option given before the
    # subcommand is not overwritten by the subcommand's default.
    parser.add_argument("--url", default=default, help="the service, e.g. http://127.0.0.1:8080 (ZLH_URL)")
    parser.add_argument("--token", default=default, help="bearer token (ZLH_TOKEN)")
    parser.add_argument("--config", default=default, help="TOML file with url and token (ZLH_CONFIG)")
    parser.add_argument("--json", action="store_true", default=default, help="JSON output, for scripts")
    parser.add_argument("--debug", action="store_true", default=default, help="tracebacks on errors")


def parser() -> Parser:
    root = Parser(prog="zlh", description="Manage Minecraft servers through the zlh-actors API.")
    _common(root, None)
    shared = Parser(add_help=False)
    _common(shared, argparse.SUPPRESS)
    groups = root.add_subparsers(dest="group", required=True, metavar="COMMAND")

    servers = groups.add_parser("servers", help="create, list, inspect and drive servers")
    verbs = servers.add_subparsers(dest="verb", required=True, metavar="COMMAND")
    create = verbs.add_parser("create", parents=[shared], help="create a server")
    create.add_argument("name")
    create.add_argument("--minecraft", required=True, metavar="VERSION")
    create.add_argument("--loader", required=True, metavar="VERSION", help="Fabric loader version")
    create.add_argument("--installer", required=True, metavar="VERSION", help="Fabric installer version")
    create.add_argument("--mod", action="append", default=[], metavar="NAME=URL#SHA512[:SIZE]")
    create.add_argument(
        "--property",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a server.properties value (motd, difficulty, ...)",
    )
    create.add_argument("--memory", type=int, metavar="MB")
    create.add_argument("--cores", type=int)
    create.add_argument("--disk", type=int, metavar="GB")
    create.add_argument("--key", help="Idempotency-Key to send (default: a new one, printed)")
    create.add_argument("--wait", action="store_true", help="show progress until running or failed")
    create.set_defaults(handler=commands.create)
    listing = verbs.add_parser("ls", parents=[shared], help="list servers")
    listing.add_argument("--state", help="only this state, or a prefix such as provisioning.")
    listing.set_defaults(handler=commands.ls)
    show = verbs.add_parser("show", parents=[shared], help="one server in detail")
    show.add_argument("server_id", metavar="ID")
    show.set_defaults(handler=commands.show)
    for name in ACTIONS:
        verb = verbs.add_parser(name, parents=[shared], help=f"{name} a server")
        verb.add_argument("server_id", metavar="ID")
        verb.set_defaults(handler=commands.action, action=name)

    follow = groups.add_parser("watch", parents=[shared], help="print state changes as they happen")
    follow.add_argument("server_id", metavar="ID", nargs="?", help="only this server")
    follow.add_argument("--since", metavar="CURSOR", help="replay from a cursor first (0-0: everything)")
    follow.add_argument(
        "--until",
        action="append",
        default=[],
        metavar="STATE",
        help="exit once the server is in STATE (or a sub-state); repeatable",
    )
    follow.set_defaults(handler=_watch)

    admin = groups.add_parser("admin", help="cluster views (admin token)")
    views = admin.add_subparsers(dest="view", required=True, metavar="VIEW")
    for name, text in (("actors", "resident actors"), ("shards", "shard owners"), ("drift", "drift reports")):
        views.add_parser(name, parents=[shared], help=text).set_defaults(handler=commands.admin)
    return root


async def _watch(api: client.Client, console: render.Console, args: argparse.Namespace) -> int:
    return await watch.watch(
        api, console, server_id=args.server_id, since=args.since, until=args.until, as_json=args.json
    )


async def _dispatch(
    handler: Handler, settings: config.Config, console: render.Console, args: argparse.Namespace
) -> int:
    async with client.connect(settings) as api:
        return await handler(api, console, args)


def run(argv: Sequence[str], environ: Mapping[str, str], console: render.Console) -> int:
    """The command's exit status; everything it prints goes to `console`."""
    try:
        args = parser().parse_args(argv)
        settings = config.load(url=args.url, token=args.token, path=args.config, environ=environ)
        return asyncio.run(_dispatch(args.handler, settings, console, args))
    except KeyboardInterrupt:
        console.end_status()
        return 130
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:
        raise  # the reader left (`zlh watch | head`): main ends quietly
    except Exception as exc:
        failure = exc
    console.end_status()
    if "--debug" in argv:
        traceback.print_exception(failure, file=console.err)
    if isinstance(failure, errors.CliError):
        message, code = failure.message, failure.exit_code
    else:
        message, code = f"unexpected error: {type(failure).__name__}: {failure} (--debug shows where)", 1
    console.err.write(f"zlh: {' '.join(message.split())}\n")
    console.err.flush()
    return code


def main(argv: Sequence[str] | None = None) -> int:
    try:
        return run(sys.argv[1:] if argv is None else argv, os.environ, render.Console.standard())
    except BrokenPipeError:
        # Python would complain again when it flushes stdout at exit; point stdout at nothing.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE
