"""Where the CLI finds the service and its token: flags, then the environment, then a file.

Each value is taken from the first source that has it: `--url`/`--token`, then `ZLH_URL`/`ZLH_TOKEN`,
then the configuration file. The file is `--config`, else `$ZLH_CONFIG`, else
`$XDG_CONFIG_HOME/zlh/config.toml` (`~/.config/zlh/config.toml`), TOML with two keys:

    url = "https://zlh.example.net"
    token = "zlh_..."

A file named explicitly must exist, and is read and checked even when the flags and the environment
give both values: naming a file is a request to use it, and one that is absent or broken is a
mistake worth hearing about. The default file is optional and read only when a value is still
missing, so a broken `~/.config/zlh/config.toml` never stands in the way of `--url U --token T`.
Unknown keys are errors, as in the service's own settings: a misspelled `tokne` silently ignored
would surface later as a confusing "no token". Everything wrong here is a `UsageError` (exit
status 2), including a URL that aiohttp would refuse later with an error of its own.
"""

from __future__ import annotations

import dataclasses
import tomllib
import urllib.parse
from collections.abc import Mapping
from pathlib import Path

from zlh_actors.cli import errors

KEYS = frozenset({"url", "token"})


@dataclasses.dataclass(frozen=True)
class Config:
    """The service's base URL (no trailing slash) and the bearer token to present."""

    url: str
    token: str = dataclasses.field(repr=False)


def default_path(environ: Mapping[str, str]) -> Path:
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME") or Path.home()) / ".config")
    return Path(base) / "zlh" / "config.toml"


def read_file(path: Path, *, required: bool) -> dict[str, str]:
    """The file's url and token (either may be missing); {} for an absent optional file."""
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        if required:
            raise errors.UsageError(f"configuration file {path} does not exist") from None
        return {}
    except OSError as exc:
        raise errors.UsageError(f"cannot read {path}: {exc.strerror}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise errors.UsageError(f"{path} is not valid TOML: {exc}") from None
    unknown = sorted(set(data) - KEYS)
    if unknown:
        raise errors.UsageError(f"{path}: unknown key {', '.join(unknown)} (known: url, token)")
    bad = sorted(key for key, value in data.items() if not isinstance(value, str))
    if bad:
        raise errors.UsageError(f"{path}: {', '.join(bad)} must be a string")
    return dict(data)


def check_url(url: str, source: str) -> str:
    """`url` without its trailing slash: the base every API path is appended to, so it may have a path
    but no query or fragment (`http://h/?` + `/v1/servers` would be a query)."""

    def refuse(why: str) -> errors.UsageError:
        return errors.UsageError(f"{source}: {url!r} {why}")

    if any(char.isspace() for char in url):
        raise refuse("contains white space")
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # an unbalanced IPv6 bracket
        raise refuse("is not an http:// or https:// URL") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise refuse("is not an http:// or https:// URL")
    try:
        port = parts.port
    except ValueError:  # out of range or not a number
        port = 0
    if port == 0:
        raise refuse("has an invalid port (1-65535)")
    if "?" in url or "#" in url:
        raise refuse("has a query or fragment: give the service's base URL, e.g. http://HOST:PORT")
    return url.rstrip("/")


def load(*, url: str | None, token: str | None, path: str | None, environ: Mapping[str, str]) -> Config:
    """The configuration, or `UsageError` naming what is missing and where it could be given."""
    explicit = path or environ.get("ZLH_CONFIG")
    file_path = Path(explicit).expanduser() if explicit else default_path(environ)
    from_file = read_file(file_path, required=True) if explicit else None
    chosen: dict[str, tuple[str, str]] = {}
    for key, flag, env in (("url", url, "ZLH_URL"), ("token", token, "ZLH_TOKEN")):
        for value, source in ((flag, f"--{key}"), (environ.get(env), env)):
            if value:
                chosen[key] = (value, source)
                break
        else:
            if from_file is None:
                from_file = read_file(file_path, required=False)
            value = from_file.get(key)
            if not value:
                raise errors.UsageError(
                    f'no {key}: give --{key}, set {env}, or put {key} = "..." in {file_path}'
                )
            chosen[key] = (value, str(file_path))
    base = check_url(*chosen["url"])
    secret, source = chosen["token"][0].strip(), chosen["token"][1]
    if not secret:
        # Sent as "Bearer " it would read as no token at all: the stream would wait for an auth message.
        raise errors.UsageError(f"{source}: the token is blank")
    return Config(url=base, token=secret)
