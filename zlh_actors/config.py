"""Service configuration: environment variables, checked once at start-up.

Every setting has a name, a type, a default and a one-line description in `SETTINGS`; the README's
table of settings and `systemd/zlh-actors.env.example` list the same ones. Any environment variable
that starts with `ZLH_` but is not a known setting is an error, because a misspelled setting that is
silently ignored is how a replica ends up running with a default nobody chose. A bad value stops the
service with one line naming the variable.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from zlh_actors import errors

PREFIX = "ZLH_"
# The `zlh` command line's own variables: exported in an operator's shell, they are not a misspelling.
CLIENT_VARIABLES = frozenset({"ZLH_URL", "ZLH_TOKEN", "ZLH_CONFIG"})
# The default container subnet is on loopback, where the lab's containers live.
LAB_SUBNET = ipaddress.IPv4Network("127.20.0.0/16")


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


def _count(text: str) -> int:
    value = int(text)
    if value < 0:
        raise ValueError("must be a whole number of at least 0")
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


def _log_format(text: str) -> str:
    value = text.strip().lower()
    if value not in ("json", "text"):
        raise ValueError("must be json or text")
    return value


def _flag(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise ValueError("must be true or false")


def _range(text: str) -> tuple[int, int]:
    low, sep, high = text.partition("-")
    if not sep:
        raise ValueError("must be a range LOW-HIGH")
    bounds = int(low), int(high)
    if not 0 < bounds[0] <= bounds[1]:
        raise ValueError("must be a range LOW-HIGH with 0 < LOW <= HIGH")
    return bounds


def _subnet(text: str) -> ipaddress.IPv4Network:
    network = ipaddress.IPv4Network(text, strict=True)
    if network.num_addresses < 4:
        raise ValueError("must hold at least two host addresses")
    return network


def _address(text: str) -> ipaddress.IPv4Address:
    return ipaddress.IPv4Address(text)


def _http_url(text: str) -> str:
    if not text.startswith(("http://", "https://")):
        raise ValueError("must be an http:// or https:// URL")
    return text.rstrip("/")


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
    log_format: str = "json"
    db_pool_size: int = 10
    db_connect_timeout: float = 10.0
    shards: int = 64
    heartbeat_interval: float = 0.5
    lease_timeout: float = 3.0
    pve_host: str | None = None
    pve_port: int = 8006
    pve_user: str = "root@pam"
    pve_token_name: str | None = None
    pve_token_value: str | None = None
    pve_ca_file: Path | None = None
    pve_verify_tls: bool = True
    pve_template_vmid: int = 9000
    pve_lock_wait: float = 120.0
    enrollment_key_file: Path | None = None
    vmid_range: tuple[int, int] = (10000, 19999)
    ip_subnet: ipaddress.IPv4Network = LAB_SUBNET
    ip_gateway: ipaddress.IPv4Address | None = None
    game_ports: tuple[int, int] = (25565, 26564)
    agent_port: int = 8770
    memory_mb: tuple[int, int] = (512, 32768)
    max_cores: int = 16
    max_disk_gb: int = 500
    allow_http_urls: bool = False
    step_timeout: float = 300.0
    install_timeout: float = 900.0
    idempotency_ttl: float = 86400.0
    command_retention: float = 604800.0
    lab_warmup: float = 1.0
    callback_url: str | None = None
    reconcile_interval: float = 30.0
    orphan_grace: float = 300.0
    crash_restarts: int = 3
    crash_window: float = 600.0
    crash_backoff: float = 5.0
    env_file: Path | None = None


SETTINGS: tuple[Setting, ...] = (
    Setting(
        "DATABASE_URL",
        "database_url",
        _database_url,
        None,
        "PostgreSQL URL; unset: a private server under ZLH_DATA_DIR/pg",
    ),
    Setting("ZLH_HOST", "host", str, "127.0.0.1", "address the HTTP API listens on (--host overrides)"),
    Setting("ZLH_PORT", "port", _port, 8080, "port the HTTP API listens on (--port overrides)"),
    Setting(
        "ZLH_DATA_DIR",
        "data_dir",
        Path,
        Path(".zlh"),
        "directory for local state (the private database, the in-process lab)",
    ),
    Setting("ZLH_LOG_LEVEL", "log_level", _log_level, "INFO", "DEBUG, INFO, WARNING or ERROR"),
    Setting(
        "ZLH_LOG_FORMAT",
        "log_format",
        _log_format,
        "json",
        "json (one object per line, for journald and shippers) or text (for a terminal)",
    ),
    Setting("ZLH_DB_POOL_SIZE", "db_pool_size", _positive, 10, "connections in the shared database pool"),
    Setting(
        "ZLH_DB_CONNECT_TIMEOUT",
        "db_connect_timeout",
        _seconds,
        10.0,
        "seconds to wait for the database at start-up",
    ),
    Setting("ZLH_SHARDS", "shards", _positive, 64, "number of ownership shards; the same on every replica"),
    Setting(
        "ZLH_HEARTBEAT_INTERVAL", "heartbeat_interval", _seconds, 0.5, "seconds between lease heartbeats"
    ),
    Setting(
        "ZLH_LEASE_TIMEOUT",
        "lease_timeout",
        _seconds,
        3.0,
        "seconds without a heartbeat before a replica is presumed dead and its shards taken",
    ),
    Setting("ZLH_PVE_HOST", "pve_host", str, None, "Proxmox VE API host; unset: run the lab in-process"),
    Setting("ZLH_PVE_PORT", "pve_port", _port, 8006, "Proxmox VE API port"),
    Setting("ZLH_PVE_USER", "pve_user", str, "root@pam", "user of the API token"),
    Setting("ZLH_PVE_TOKEN_NAME", "pve_token_name", str, None, "API token name"),
    Setting("ZLH_PVE_TOKEN_VALUE", "pve_token_value", str, None, "API token secret"),
    Setting("ZLH_PVE_CA_FILE", "pve_ca_file", Path, None, "CA certificate file to verify Proxmox's TLS"),
    Setting("ZLH_PVE_VERIFY_TLS", "pve_verify_tls", _flag, True, "verify Proxmox's TLS certificate"),
    Setting(
        "ZLH_PVE_TEMPLATE_VMID", "pve_template_vmid", _positive, 9000, "the Fabric LXC template to clone"
    ),
    Setting(
        "ZLH_PVE_LOCK_WAIT",
        "pve_lock_wait",
        _seconds,
        120.0,
        "seconds a Proxmox call waits out a foreign config lock before the step retries later",
    ),
    Setting(
        "ZLH_ENROLLMENT_KEY_FILE",
        "enrollment_key_file",
        Path,
        None,
        "file holding the HMAC key agents trust for enrollment",
    ),
    Setting("ZLH_VMID_RANGE", "vmid_range", _range, (10000, 19999), "VMIDs the control plane may allocate"),
    Setting(
        "ZLH_IP_SUBNET",
        "ip_subnet",
        _subnet,
        ipaddress.IPv4Network("127.20.0.0/16"),
        "subnet of the containers' static addresses",
    ),
    Setting(
        "ZLH_IP_GATEWAY", "ip_gateway", _address, None, "default gateway of the containers (never allocated)"
    ),
    Setting("ZLH_GAME_PORTS", "game_ports", _range, (25565, 26564), "game ports, unique per node"),
    Setting("ZLH_AGENT_PORT", "agent_port", _port, 8770, "port of the agent inside each container"),
    Setting("ZLH_MEMORY_MB", "memory_mb", _range, (512, 32768), "allowed memory per server (MiB)"),
    Setting("ZLH_MAX_CORES", "max_cores", _positive, 16, "maximum cores per server"),
    Setting("ZLH_MAX_DISK_GB", "max_disk_gb", _positive, 500, "maximum disk per server (GiB)"),
    Setting(
        "ZLH_ALLOW_HTTP_URLS",
        "allow_http_urls",
        _flag,
        False,
        "accept http:// mod URLs (the lab serves http on loopback); production wants https only",
    ),
    Setting("ZLH_STEP_TIMEOUT", "step_timeout", _seconds, 300.0, "seconds a lifecycle step may take"),
    Setting(
        "ZLH_INSTALL_TIMEOUT", "install_timeout", _seconds, 900.0, "seconds the agent's install may take"
    ),
    Setting(
        "ZLH_IDEMPOTENCY_TTL",
        "idempotency_ttl",
        _seconds,
        86400.0,
        "seconds an idempotency key replays its first answer",
    ),
    Setting(
        "ZLH_COMMAND_RETENTION",
        "command_retention",
        _seconds,
        604800.0,
        "seconds a settled (done or rejected) command is kept (at least ZLH_IDEMPOTENCY_TTL); "
        "its effect stays in the journal",
    ),
    Setting(
        "ZLH_LAB_WARMUP",
        "lab_warmup",
        _seconds,
        1.0,
        "in-process lab: seconds the stand-in game takes to boot",
    ),
    Setting(
        "ZLH_CALLBACK_URL",
        "callback_url",
        _http_url,
        None,
        "base URL agents post reports to (default http://ZLH_HOST:ZLH_PORT)",
    ),
    Setting(
        "ZLH_RECONCILE_INTERVAL",
        "reconcile_interval",
        _seconds,
        30.0,
        "seconds between reconciliation passes over the shards a replica owns",
    ),
    Setting(
        "ZLH_ORPHAN_GRACE",
        "orphan_grace",
        _seconds,
        300.0,
        "seconds a container of a deleted or unknown server is left alone before it is destroyed",
    ),
    Setting(
        "ZLH_CRASH_RESTARTS",
        "crash_restarts",
        _count,
        3,
        "game crashes restarted within ZLH_CRASH_WINDOW; one more and the server fails",
    ),
    Setting(
        "ZLH_CRASH_WINDOW",
        "crash_window",
        _seconds,
        600.0,
        "seconds over which game crashes are counted",
    ),
    Setting(
        "ZLH_CRASH_BACKOFF",
        "crash_backoff",
        _seconds,
        5.0,
        "seconds before restarting a crashed game, doubled for each crash in the window",
    ),
    Setting("ZLH_ENV_FILE", "env_file", Path, None, "a KEY=value file of settings (the environment wins)"),
)


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=value lines; blank lines and # comments are skipped."""
    values: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError as exc:
        raise errors.ConfigError(f"ZLH_ENV_FILE={str(path)!r} cannot be read: {exc.strerror}") from None
    for number, line in enumerate(lines, start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.partition("=")
        if not sep:
            raise errors.ConfigError(f"{path}:{number}: expected KEY=value")
        values[key.strip()] = value.strip()
    return values


def load(environ: Mapping[str, str], **overrides: Any) -> Settings:
    """Settings from the environment, then explicit overrides (command-line flags); `ConfigError` if bad."""
    if environ.get("ZLH_ENV_FILE"):
        environ = {**read_env_file(Path(environ["ZLH_ENV_FILE"])), **environ}
    known = {setting.env for setting in SETTINGS}
    unknown = sorted(
        name for name in environ if name.startswith(PREFIX) and name not in known | CLIENT_VARIABLES
    )
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
    settings = Settings(**values)
    if settings.command_retention < settings.idempotency_ttl:
        # A replayed create answers with its `create` command: it must not name one already forgotten.
        raise errors.ConfigError(
            f"ZLH_COMMAND_RETENTION={settings.command_retention:g} is shorter than "
            f"ZLH_IDEMPOTENCY_TTL={settings.idempotency_ttl:g}: a replayed create would name a "
            "command already forgotten"
        )
    return settings
