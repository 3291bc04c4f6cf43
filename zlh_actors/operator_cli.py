"""Operator commands that talk to the database directly (they need `DATABASE_URL`).

    python -m zlh_actors tokens create --tenant T [--admin] [--label L]
    python -m zlh_actors tokens list                 (live tokens: id, tenant, role, created, label)
    python -m zlh_actors tokens revoke TOKEN_ID
    python -m zlh_actors launchers pin --minecraft V --loader V --installer V --url URL --sha256 HEX
                                       [--size N]
    python -m zlh_actors launchers list
    python -m zlh_actors launchers load FILE      (a JSON list of pins, e.g. the lab's launchers.json)

`tokens create` prints the new token alone on its last line (it is shown once; only its hash is
kept). Errors are one line on stderr with a non-zero exit status.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from storage import database, launchers, tokens
from zlh_actors import errors


async def _with_conn(url: str, action: Callable[[database.Conn], Awaitable[None]]) -> None:
    conn = await database.connect(url)
    try:
        async with conn.transaction():
            await action(conn)
    finally:
        await conn.close()


def _tokens_create(args: argparse.Namespace) -> Callable[[database.Conn], Awaitable[None]]:
    async def run(conn: database.Conn) -> None:
        token, secret = await tokens.create(conn, args.tenant, "admin" if args.admin else "user", args.label)
        print(f"token {token.id} for tenant {token.tenant} ({token.role})")
        print(secret)

    return run


def _tokens_list(args: argparse.Namespace) -> Callable[[database.Conn], Awaitable[None]]:
    async def run(conn: database.Conn) -> None:
        for token in await tokens.live(conn):
            print(f"{token.id}\t{token.tenant}\t{token.role}\t{token.created_at.isoformat()}\t{token.label}")

    return run


def _tokens_revoke(args: argparse.Namespace) -> Callable[[database.Conn], Awaitable[None]]:
    async def run(conn: database.Conn) -> None:
        token = await tokens.revoke(conn, uuid.UUID(args.token_id))
        print(f"revoked token {token.id} of tenant {token.tenant}")

    return run


async def pin_all(conn: database.Conn, pins: list[dict[str, Any]]) -> list[launchers.Launcher]:
    return [
        await launchers.pin(
            conn,
            pin["minecraft"],
            pin["loader"],
            pin["installer"],
            pin["url"],
            pin["sha256"],
            pin.get("size"),
        )
        for pin in pins
    ]


def _launchers_pin(args: argparse.Namespace) -> Callable[[database.Conn], Awaitable[None]]:
    async def run(conn: database.Conn) -> None:
        pin = {
            "minecraft": args.minecraft,
            "loader": args.loader,
            "installer": args.installer,
            "url": args.url,
            "sha256": args.sha256.lower(),
            "size": args.size,
        }
        for launcher in await pin_all(conn, [pin]):
            triple = (launcher.minecraft_version, launcher.loader_version, launcher.installer_version)
            print("pinned " + " / ".join(triple))

    return run


def _launchers_load(args: argparse.Namespace) -> Callable[[database.Conn], Awaitable[None]]:
    try:
        pins = json.loads(Path(args.file).read_text())
    except (OSError, ValueError) as exc:
        raise errors.ConfigError(f"cannot read {args.file}: {exc}") from None

    async def run(conn: database.Conn) -> None:
        pinned = await pin_all(conn, pins)
        print(f"pinned {len(pinned)} launchers from {args.file}")

    return run


def _launchers_list(args: argparse.Namespace) -> Callable[[database.Conn], Awaitable[None]]:
    async def run(conn: database.Conn) -> None:
        for launcher in await launchers.all_pinned(conn):
            print(
                f"{launcher.minecraft_version}\t{launcher.loader_version}\t{launcher.installer_version}\t"
                f"{launcher.sha256}\t{launcher.url}"
            )

    return run


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="python -m zlh_actors", description="zlh-actors operator commands")
    root.add_argument("--database-url", default=os.environ.get("DATABASE_URL"))
    groups = root.add_subparsers(dest="group", required=True)
    token = groups.add_parser("tokens").add_subparsers(dest="command", required=True)
    create = token.add_parser("create", help="create an API token")
    create.add_argument("--tenant", required=True)
    create.add_argument("--admin", action="store_true")
    create.add_argument("--label", default="")
    create.set_defaults(action=_tokens_create)
    token.add_parser("list", help="list live API tokens: id, tenant, role, created, label").set_defaults(
        action=_tokens_list
    )
    revoke = token.add_parser("revoke", help="revoke an API token")
    revoke.add_argument("token_id")
    revoke.set_defaults(action=_tokens_revoke)
    launcher = groups.add_parser("launchers").add_subparsers(dest="command", required=True)
    pin = launcher.add_parser("pin", help="pin the Fabric launcher of a version triple")
    for flag in ("--minecraft", "--loader", "--installer", "--url", "--sha256"):
        pin.add_argument(flag, required=True)
    pin.add_argument("--size", type=int)
    pin.set_defaults(action=_launchers_pin)
    load = launcher.add_parser("load", help="pin every launcher of a JSON file")
    load.add_argument("file")
    load.set_defaults(action=_launchers_load)
    launcher.add_parser("list", help="list pinned launchers").set_defaults(action=_launchers_list)
    return root


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if not args.database_url:
        print("error: DATABASE_URL is not set (or pass --database-url)", file=sys.stderr)
        return 2
    try:
        asyncio.run(_with_conn(args.database_url, args.action(args)))
    except (errors.ZlhError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
