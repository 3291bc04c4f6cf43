"""The lab's file server: mod jars and the launcher, with real sizes and hashes, on loopback.

Agents in the lab install manifests the same way they would in production (stream, verify size and
digest, rename), so they need files whose sizes and hashes are real and stable:

- `fake_mod_jar(name)` builds a valid zip with a `fabric.mod.json`, its content seeded by the name
  (fixed timestamps, stored without compression), so the same name gives the same bytes and hash on
  every machine and run, and tests can pin them;
- the launcher is the bytes of `standin_game.py`, the stand-in game the agent runs in the lab;
- a mod can be added "tampered": advertised with the digest (and size) of its real bytes but served
  with different bytes of the same size, or with extra bytes, to prove the agent refuses it.

`serve()` runs it on a loopback address (port 0: any free port) for the life of an `async with`
block. `FileServer.catalog()` (also at GET /catalog.json) lists what it serves, and
`FileServer.manifest()` builds an install manifest from it; `hits()` counts downloads per file so a
test can tell a re-install that downloaded nothing from one that downloaded everything.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import hashlib
import io
import ipaddress
import json
import re
import zipfile
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

from aiohttp import web

STANDIN_GAME = Path(__file__).with_name("standin_game.py")
LAUNCHER_PATH = "/launcher/fabric-server-launch.jar"
# 1980-01-01 is the earliest date a zip can hold; any fixed date makes the archive reproducible.
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)

Tamper = Literal["bytes", "size"]


@dataclasses.dataclass(frozen=True)
class ModFile:
    name: str
    url: str
    size: int
    sha512: str

    def wire(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.url, "size": self.size, "sha512": self.sha512}


@dataclasses.dataclass(frozen=True)
class LauncherFile:
    url: str
    size: int
    sha256: str

    def wire(self) -> dict[str, Any]:
        return {"url": self.url, "size": self.size, "sha256": self.sha256}


def fake_mod_jar(name: str, payload_bytes: int = 4096) -> bytes:
    """A deterministic, valid Fabric mod jar for `name` (e.g. "lithium.jar")."""
    mod_id = re.sub(r"[^a-z0-9_]", "_", name.removesuffix(".jar").lower()) or "mod"
    metadata = {
        "schemaVersion": 1,
        "id": mod_id,
        "version": "1.0.0",
        "name": name,
        "description": "ZeroLagHub lab stand-in mod",
        "environment": "*",
    }
    payload = bytearray()
    block = hashlib.sha256(name.encode("utf-8")).digest()
    while len(payload) < payload_bytes:
        payload += block
        block = hashlib.sha256(block).digest()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_STORED) as archive:
        entries = (
            ("fabric.mod.json", json.dumps(metadata, sort_keys=True, indent=2).encode("utf-8")),
            ("data.bin", bytes(payload[:payload_bytes])),
        )
        for filename, data in entries:
            info = zipfile.ZipInfo(filename, date_time=_ZIP_DATE)
            info.create_system = 3  # Unix; the default depends on the platform that builds the zip
            info.external_attr = 0o644 << 16
            archive.writestr(info, data)
    return buffer.getvalue()


class FileServer:
    """What `serve()` yields: add files, read the catalog, count downloads."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url
        self._bodies: dict[str, bytes] = {}
        self._hits: collections.Counter[str] = collections.Counter()
        self.mods: dict[str, ModFile] = {}
        launcher = STANDIN_GAME.read_bytes()
        self._bodies[LAUNCHER_PATH] = launcher
        self.launcher = LauncherFile(
            url=base_url + LAUNCHER_PATH, size=len(launcher), sha256=hashlib.sha256(launcher).hexdigest()
        )

    def add_mod(self, name: str, *, payload_bytes: int = 4096, tamper: Tamper | None = None) -> ModFile:
        """Serve a fake mod jar; with `tamper`, its advertised size and sha512 do not match what is served."""
        content = fake_mod_jar(name, payload_bytes)
        path = f"/mods/{name}"
        mod = ModFile(
            name=name, url=self.base_url + path, size=len(content), sha512=hashlib.sha512(content).hexdigest()
        )
        if tamper == "bytes":
            # Same length, last byte flipped: only the digest can catch it.
            content = content[:-1] + bytes([content[-1] ^ 0xFF])
        elif tamper == "size":
            content += b"\0" * 16
        self._bodies[path] = content
        self.mods[name] = mod
        return mod

    def hits(self, url: str) -> int:
        """How many times the file at `url` (or its path) was downloaded."""
        return self._hits[url.removeprefix(self.base_url)]

    def catalog(self) -> dict[str, Any]:
        return {
            "launcher": self.launcher.wire(),
            "mods": {name: mod.wire() for name, mod in sorted(self.mods.items())},
        }

    def manifest(
        self,
        mods: Iterable[str] | None = None,
        *,
        game_port: int,
        memory_mb: int = 1024,
        properties: Mapping[str, str | int | bool] | None = None,
        minecraft_version: str = "1.20.1",
        loader: str = "0.15.11",
        installer: str = "1.0.1",
    ) -> dict[str, Any]:
        """An install manifest (wire form) for the launcher and `mods` (default: every mod added)."""
        names = sorted(self.mods) if mods is None else list(mods)
        return {
            "minecraft_version": minecraft_version,
            "fabric": {"loader": loader, "installer": installer},
            "launcher": self.launcher.wire(),
            "mods": [self.mods[name].wire() for name in names],
            "properties": dict(properties or {"motd": "A ZeroLagHub lab server", "max-players": 20}),
            "game_port": game_port,
            "memory_mb": memory_mb,
        }

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/catalog.json":
            return web.json_response(self.catalog())
        body = self._bodies.get(request.path)
        if body is None:
            raise web.HTTPNotFound()
        if request.method == "GET":
            self._hits[request.path] += 1
        return web.Response(body=body, content_type="application/java-archive")


@contextlib.asynccontextmanager
async def serve(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[FileServer]:
    """A running file server on `host`:`port` (a loopback address; port 0 picks a free one)."""
    if not ipaddress.ip_address(host).is_loopback:
        raise ValueError(f"the lab file server listens on loopback only, not {host}")
    app = web.Application()
    holder: list[FileServer] = []

    async def route(request: web.Request) -> web.Response:
        return await holder[0].handle(request)

    app.router.add_get("/{tail:.*}", route)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        shown = f"[{host}]" if ":" in host else host
        holder.append(FileServer(f"http://{shown}:{bound_port}"))
        yield holder[0]
    finally:
        await runner.cleanup()
