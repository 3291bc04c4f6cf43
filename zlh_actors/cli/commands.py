"""The commands: each turns parsed flags into API calls and prints the answer.

`create` always sends an `Idempotency-Key` (a fresh UUID unless `--key` names one) and says which
whatever happens: when the answer is lost (a timeout, a reset), the same command with `--key` is
the safe retry, and the error line repeats the key for that reason. A replayed key answers with
the server the first request created. `create --wait` says the server's id and the key on stderr
as soon as the POST answers, before the wait that Ctrl-C or a lost stream may end: stderr because
stdout carries the one result (with `--json`, one document), which is printed when the wait ends.

Mods are `--mod NAME=URL#SHA512`, the form a mod page gives; the API also wants each file's size,
which the CLI asks the mod's host for with a HEAD request (without the token), unless it is given
as `NAME=URL#SHA512:SIZE`. The HEADs run in a task group: the first failure cancels the others.
"""

from __future__ import annotations

import argparse
import asyncio
import urllib.parse
import uuid
from typing import Any

from zlh_actors.cli import client, errors, render, watch


def parse_mod(text: str) -> tuple[str, str, str, int | None]:
    """`NAME=URL#SHA512[:SIZE]` as (name, url, sha512, size); the service checks each value."""
    name, eq, rest = text.partition("=")
    url, hash_mark, digest = rest.rpartition("#")
    if not eq or not name or not hash_mark or not url or not digest:
        raise errors.UsageError(f"--mod {text!r}: expected NAME=URL#SHA512 (or NAME=URL#SHA512:SIZE)")
    if not _fetchable(url):
        raise errors.UsageError(f"--mod {text!r}: the URL must be http:// or https://, with a valid port")
    sha512, colon, size = digest.partition(":")
    if not colon:
        return name, url, sha512.lower(), None
    if not size.isdigit():
        raise errors.UsageError(f"--mod {text!r}: the size after ':' must be a number of bytes")
    return name, url, sha512.lower(), int(size)


def _fetchable(url: str) -> bool:
    """An http(s) URL aiohttp will request (it raises errors of its own for the others)."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port  # out of range or not a number: ValueError
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and bool(parts.hostname) and port != 0 and " " not in url


async def mods(texts: list[str]) -> list[dict[str, Any]]:
    parsed = [parse_mod(text) for text in texts]

    async def sized(name: str, url: str, sha512: str, size: int | None) -> dict[str, Any]:
        if size is None:
            size = await client.head_size(url)
        if size is None:
            raise errors.UsageError(f"{url} does not announce its size; give it as {name}=URL#SHA512:SIZE")
        return {"name": name, "url": url, "sha512": sha512, "size": size}

    try:
        async with asyncio.TaskGroup() as group:
            tasks = [group.create_task(sized(*mod), name=f"head {mod[1]}") for mod in parsed]
    except ExceptionGroup as failed:
        raise failed.exceptions[0] from None  # one line for the first failure, as everywhere else
    return [task.result() for task in tasks]


def key_value(text: str, flag: str) -> tuple[str, str]:
    key, eq, value = text.partition("=")
    if not eq or not key:
        raise errors.UsageError(f"{flag} {text!r}: expected KEY=VALUE")
    return key, value


async def create(api: client.Client, console: render.Console, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {
        "name": args.name,
        "minecraft_version": args.minecraft,
        "fabric": {"loader": args.loader, "installer": args.installer},
        "mods": await mods(args.mod),
        "properties": dict(key_value(text, "--property") for text in args.property),
    }
    resources = {"memory_mb": args.memory, "cores": args.cores, "disk_gb": args.disk}
    body["resources"] = {name: value for name, value in resources.items() if value is not None}
    key = args.key or str(uuid.uuid4())
    if args.wait:
        async with watch.Stream(api, console) as stream:
            server, replayed = await _post(api, body, key)
            made = "replayed" if replayed else "created"
            console.warn(f"{made} {server['name']} {server['id']} (key {key}); waiting for it to settle")
            server = await watch.wait_settled(api, console, stream, server)
    else:
        server, replayed = await _post(api, body, key)
    if args.json:
        console.print(render.json_text({"server": server, "idempotency_key": key, "replayed": replayed}))
    else:
        lines = [("id", server["id"]), ("name", server["name"]), ("state", server["state"])]
        if render.address(server):
            lines.append(("address", render.address(server)))
        lines.append(("key", key))
        if replayed:
            lines.append(("replayed", "yes: this key created the server before; nothing new was made"))
        console.print(render.pairs(lines))
    if args.wait and server["state"] != "running":
        raise errors.ServerFailed(
            f"{server['name']} is {server['state']}: {server.get('last_error') or 'no error recorded'}"
        )
    return 0


async def _post(api: client.Client, body: dict[str, Any], key: str) -> tuple[dict[str, Any], bool]:
    try:
        server, headers = await api.call("POST", "/v1/servers", body=body, headers={"Idempotency-Key": key})
    except errors.ConnectionFailed as exc:
        raise errors.ConnectionFailed(
            f"{exc.message}; the server may exist: repeat with --key {key}"
        ) from None
    except errors.ApiError as exc:
        if exc.status >= 500:
            raise errors.ApiError(exc.status, f"{exc.message}; repeat with --key {key}") from None
        raise
    return server, headers.get("Idempotent-Replayed") == "true"


async def ls(api: client.Client, console: render.Console, args: argparse.Namespace) -> int:
    """Every server the token may see (following the pages), optionally by state or state prefix."""
    items: list[dict[str, Any]] = []
    params = {"limit": "100", **({"state": args.state} if args.state else {})}
    while True:
        page = await api.get("/v1/servers", params)
        items.extend(page["items"])
        if not page.get("next_cursor"):
            break
        params["cursor"] = page["next_cursor"]
    console.print(render.json_text(items) if args.json else render.servers(items))
    return 0


async def show(api: client.Client, console: render.Console, args: argparse.Namespace) -> int:
    server = await api.get(api.path("v1", "servers", args.server_id))
    console.print(render.json_text(server) if args.json else render.server(server))
    return 0


async def action(api: client.Client, console: render.Console, args: argparse.Namespace) -> int:
    """start, stop, restart, retry or delete: accepted (202) or refused naming what is allowed (409)."""
    path = api.path("v1", "servers", args.server_id)
    if args.action == "delete":
        answer, _ = await api.call("DELETE", path)
    else:
        answer, _ = await api.call("POST", f"{path}/{args.action}")
    if args.json:
        console.print(render.json_text(answer))
    else:
        command = answer.get("command") or {}
        told = f" (command {command['id']}: {command['status']})" if command else ""
        console.print(
            f"{args.action} accepted for {answer['name']} {answer['id']}, now {answer['state']}{told}"
        )
    return 0


async def admin(api: client.Client, console: render.Console, args: argparse.Namespace) -> int:
    answer = await api.get(f"/admin/v1/{args.view}")
    if args.json:
        console.print(render.json_text(answer))
    else:
        console.print(
            {"actors": render.actors, "shards": render.shards, "drift": render.drift}[args.view](answer)
        )
    return 0
