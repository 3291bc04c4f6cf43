"""Service configuration: environment variables, checked once at start-up.

Every setting has a name, a type, a default and a one-line description in `SETTINGS`; the README's
table of settings and `systemd/zlh-actors.env.example` list the same ones. Any environment variable
that starts with `ZLH_` but is not a known setting is an error, because a misspelled setting that is
silently ignored is how a replica ends up running with a default nobody chose. A bad value stops the
service with one line naming the variable.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from zlh_actors import errors

PREFIX = "ZLH_"


@dataclasses.dataclass(frozen=True)
class Setting:
    env: str
    field: str
    parse: Callable[[str], Any]
    default: Any
    description: str


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise ValueError("must be a TCP port between 0 and 65535")
    return value


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise ValueError("must be a whole number of at least 1")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise ValueError("must be a positive number of seconds")
    return value


def _log_level(text: str) -> str:
    level = text.upper()
    if level not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ValueError("must be one of DEBUG, INFO, WARNING, ERROR")
    return level


def _database_url(text: str) -> str:
    if not text.startswith(("postgresql://", "postgres://")):
        raise ValueError("must be a postgresql:// URL")
    return text


@dataclasses.dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: Path = Path(".zlh")
    log_level: str = "INFO"
    db_pool_size: int = 10
    db_connect_timeout: float = 10.0


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "DATABASE_URL",
        "database_url",
        _database_url,
        None,
        "PostgreSQL URL; unset: a private server under ZLH_DATA_DIR/pg",
    ),
    Setting("ZLH_HOST", "host", str, "127.0.0.1", "address the HTTP API listens on"),
    Setting("ZLH_PORT", "port", _port, 8080, "port the HTTP API listens on (--port overrides)"),
    Setting(
        "ZLH_DATA_DIR", "data_dir", Path, Path(".zlh"), "directory for local state (the private database)"
    ),
    Setting("ZLH_LOG_LEVEL", "log_level", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Setting("ZLH_DB_POOL_SIZE", "db_pool_size", _positive, 10, "connections in the shared database pool"),
    Setting(
        "ZLH_DB_CONNECT_TIMEOUT",
        "db_connect_timeout",
        _seconds,
        10.0,
        "seconds to wait for the database at start-up",
    ),
)


def load(environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Settings from the environment, then explicit overrides (command-line flags); `ConfigError` if bad."""
    known = {setting.env for setting in SETTINGS}
    unknown = sorted(name for name in environ if name.startswith(PREFIX) and name not in known)
    if unknown:
        raise errors.ConfigError(
            f"unknown setting {', '.join(unknown)}; known settings: {', '.join(sorted(known))}"
        )
    values: dict[str, Any] = {}
    for setting in SETTINGS:
        raw = overrides.get(setting.field)
        source = f"--{setting.field.replace('_', '-')}"
        if raw is None:
            raw, source = environ.get(setting.env), setting.env
        if raw is None or raw == "":
            continue
        try:
            values[setting.field] = setting.parse(str(raw))
        except ValueError as exc:
            raise errors.ConfigError(f"{source}={raw!r} is invalid: {exc}") from None
    return Settings(**values)
