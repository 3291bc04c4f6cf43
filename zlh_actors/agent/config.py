"""The agent's settings: command-line flags, each with a `ZLH_AGENT_*` environment variable.

A flag wins over its variable, which wins over the default. Everything is checked before the agent
does anything, and every problem is one `ConfigError` line naming the flag or variable: an agent
in a container is started by systemd, and an operator reads its journal, not a traceback. A
`ZLH_AGENT_*` variable that is not a known setting is an error too, because a misspelled setting that
is silently ignored leaves the agent running with a default nobody chose.

The enrollment key is read from a file (`--enrollment-key-file`, e.g. a systemd credential) or from
`ZLH_AGENT_ENROLLMENT_KEY`, never from a flag value: command lines are visible to every user in `ps`.
"""

from __future__ import annotations

import argparse
import dataclasses
import ipaddress
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

from zlh_actors import errors
from zlh_actors.agent import game, signing, wire

PREFIX = "ZLH_AGENT_"
KEY_ENV = "ZLH_AGENT_ENROLLMENT_KEY"
DEFAULT_STATE_DIR = Path("/var/lib/zlh-agent")
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Settings:
    listen_ip: str
    listen_port: int
    state_dir: Path
    game_dir: Path
    enrollment_key: bytes = dataclasses.field(repr=False)
    game_command: game.CommandTemplate
    stop_timeout: float
    log_level: str
    # The interpreter running the agent, for the `{python}` placeholder (the lab's stand-in game).
    python: str = sys.executable


# flag -> (environment variable, help)
_OPTIONS: dict[str, tuple[str, str]] = {
    "--listen": ("ZLH_AGENT_LISTEN", f"the container's own IP[:PORT] to serve on (port {wire.DEFAULT_PORT})"),
    "--state-dir": (
        "ZLH_AGENT_STATE_DIR",
        f"enrollment, seq and applied manifest (default {DEFAULT_STATE_DIR})",
    ),
    "--game-dir": ("ZLH_AGENT_GAME_DIR", "where the game is installed (default <state-dir>/game)"),
    "--enrollment-key-file": (
        "ZLH_AGENT_ENROLLMENT_KEY_FILE",
        f"file holding the HMAC key (or set {KEY_ENV})",
    ),
    "--game-command": ("ZLH_AGENT_GAME_COMMAND", f"game command template (default {game.DEFAULT_COMMAND!r})"),
    "--stop-timeout": ("ZLH_AGENT_STOP_TIMEOUT", "seconds between SIGTERM and SIGKILL (default 30)"),
    "--log-level": ("ZLH_AGENT_LOG_LEVEL", "DEBUG, INFO, WARNING or ERROR (default INFO)"),
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # argparse would print the usage and exit; one line through the normal error path is clearer.
        raise errors.ConfigError(message)


def parser() -> argparse.ArgumentParser:
    result = _Parser(
        prog="zlh-agent",
        description="ZeroLagHub agent: installs and runs one Minecraft Fabric server in its container.",
        epilog=f"Each flag may also be given as its {PREFIX}* environment variable.",
    )
    for flag, (env, text) in _OPTIONS.items():
        result.add_argument(flag, metavar=env.removeprefix(PREFIX), help=f"{text} [{env}]")
    return result


def load(argv: Sequence[str], environ: Mapping[str, str]) -> Settings:
    """Settings from `argv` and `environ`; `ConfigError` with one line naming the problem."""
    known = {env for env, _ in _OPTIONS.values()} | {KEY_ENV}
    unknown = sorted(name for name in environ if name.startswith(PREFIX) and name not in known)
    if unknown:
        raise errors.ConfigError(f"unknown setting {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    args = vars(parser().parse_args(list(argv)))

    def setting(flag: str, default: str | None = None) -> tuple[str, str | None]:
        """(where the value came from, the value) for `flag`: the flag, else its variable, else default."""
        env = _OPTIONS[flag][0]
        given = args[flag.removeprefix("--").replace("-", "_")]
        if given is not None:
            return flag, given
        if environ.get(env):
            return env, environ[env]
        return env, default

    source, listen = setting("--listen")
    if listen is None:
        raise errors.ConfigError(f"--listen (or {source}) is required: the container's own IP")
    ip, port = _parse(source, listen, parse_listen)
    state_dir = Path(setting("--state-dir", str(DEFAULT_STATE_DIR))[1] or DEFAULT_STATE_DIR)
    game_dir = setting("--game-dir")[1]
    command = setting("--game-command", game.DEFAULT_COMMAND)
    timeout = setting("--stop-timeout", "30")
    level = setting("--log-level", "INFO")
    return Settings(
        listen_ip=ip,
        listen_port=port,
        state_dir=state_dir,
        game_dir=Path(game_dir) if game_dir else state_dir / "game",
        enrollment_key=_key(setting("--enrollment-key-file"), environ.get(KEY_ENV)),
        game_command=_parse(command[0], command[1] or "", game.CommandTemplate.parse),
        stop_timeout=_parse(timeout[0], timeout[1] or "", _seconds),
        log_level=_parse(level[0], level[1] or "", _log_level),
    )


def parse_listen(text: str) -> tuple[str, int]:
    """`IP`, `IP:PORT` or `[IPv6]:PORT` -> (ip, port); the IP must be a specific address, not a name."""
    host, port_text = text, str(wire.DEFAULT_PORT)
    if text.startswith("["):
        host, bracket, rest = text[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise ValueError("expected [IPv6]:PORT")
        port_text = rest[1:] or port_text
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"{host!r} is not an IP address (the agent never relies on DNS)") from None
    if address.is_unspecified:
        raise ValueError("must be the container's own IP, not a wildcard address")
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} must be between 0 and 65535")
    return str(address), int(port_text)


def _parse(source: str, text: str, parse: Callable[[str], T]) -> T:
    try:
        return parse(text)
    except ValueError as exc:
        raise errors.ConfigError(f"{source}={text!r} is invalid: {exc}") from None


def _key(file_setting: tuple[str, str | None], inline: str | None) -> bytes:
    source, path = file_setting
    if path is not None and inline:
        raise errors.ConfigError(f"give the enrollment key once: {source} or {KEY_ENV}, not both")
    if path is not None:
        try:
            key = Path(path).read_bytes().strip()
        except OSError as exc:
            raise errors.ConfigError(
                f"{source}={path!r}: cannot read the enrollment key: {exc.strerror}"
            ) from None
    elif inline:
        key = inline.strip().encode("utf-8")
    else:
        raise errors.ConfigError(f"no enrollment key: set --enrollment-key-file or {KEY_ENV}")
    signing.check_key(key)
    return key


def _seconds(text: str) -> float:
    value = float(text)
    if not 0 < value < 3600:
        raise ValueError("must be a number of seconds between 0 and 3600")
    return value


def _log_level(text: str) -> str:
    if text.upper() not in LOG_LEVELS:
        raise ValueError(f"must be one of {', '.join(LOG_LEVELS)}")
    return text.upper()
