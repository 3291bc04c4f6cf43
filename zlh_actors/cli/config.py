"""Where the CLI finds the service and its token: flags, then the environment, then a file.

Each value is taken from the first source that has it: `--url`/`--token`, then `ZLH_URL`/`ZLH_TOKEN`,
then the configuration file. The file is `--config`, else `$ZLH_CONFIG`, else
`$XDG_CONFIG_HOME/zlh/config.toml` (`~/.config/zlh/config.toml`), TOML with two keys:

    url = "https://zlh.example.net"
    token = "zlh_..."

A file named explicitly must exist; the default one is optional. Unknown keys are errors, as in the
service's own settings: a misspelled `tokne` silently ignored would surface later as a confusing
"no token". Everything wrong here is a `UsageError` (exit status 2).
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
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise errors.UsageError(f"{source}: {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


def load(*, url: str | None, token: str | None, path: str | None, environ: Mapping[str, str]) -> Config:
    """The configuration, or `UsageError` naming what is missing and where it could be given."""
    explicit = path or environ.get("ZLH_CONFIG")
    file_path = Path(explicit).expanduser() if explicit else default_path(environ)
    from_file = read_file(file_path, required=bool(explicit))
    chosen: dict[str, tuple[str, str]] = {}
    for key, flag, env in (("url", url, "ZLH_URL"), ("token", token, "ZLH_TOKEN")):
        for value, source in (
            (flag, f"--{key}"),
            (environ.get(env), env),
            (from_file.get(key), str(file_path)),
        ):
            if value:
                chosen[key] = (value, source)
                break
        else:
            raise errors.UsageError(f'no {key}: give --{key}, set {env}, or put {key} = "..." in {file_path}')
    return Config(url=check_url(*chosen["url"]), token=chosen["token"][0].strip())
