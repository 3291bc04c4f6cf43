"""The catalog of pinned Fabric launchers: (Minecraft, loader, installer) -> url and sha256.

Operators pin launchers (`python -m zlh_actors launchers pin ...`); a create that names an unpinned
triple is refused, so every server is built from bytes whose hash was known before it was asked for.
"""

from __future__ import annotations

import dataclasses
import datetime

from storage import database, queries


@dataclasses.dataclass(frozen=True)
class Launcher:
    minecraft_version: str
    loader_version: str
    installer_version: str
    url: str
    sha256: str
    size: int | None
    pinned_at: datetime.datetime


async def get(conn: database.Conn, minecraft: str, loader: str, installer: str) -> Launcher | None:
    record = await queries.fetchrow(conn, "get_launcher", minecraft, loader, installer)
    return None if record is None else database.row(Launcher, record)


async def pin(
    conn: database.Conn, minecraft: str, loader: str, installer: str, url: str, sha256: str, size: int | None
) -> Launcher:
    record = await queries.fetchrow(conn, "pin_launcher", minecraft, loader, installer, url, sha256, size)
    return database.row(Launcher, record)


async def all_pinned(conn: database.Conn) -> list[Launcher]:
    return [database.row(Launcher, record) for record in await queries.fetch(conn, "list_launchers")]
