"""The HTTP side of the CLI: one aiohttp session, every failure turned into one line.

The service answers errors as RFC 9457 problem+json; `describe` folds a problem into a single line
(status, title, the invalid fields, the allowed events) because a script's log and a human's terminal
both want one line, not a JSON document. Transport failures become `ConnectionFailed` (exit 3), so a
caller can tell "the service said no" (exit 1) from "nobody answered". A peer that answers something
other than HTTP (an SSH banner on a mistyped port) counts as nobody answering: aiohttp reports it as
a `ClientResponseError`, which would otherwise read like a refusal.

The token is sent to the service only: `head_size` (mod sizes) uses a session of its own without it,
since mod URLs point at third-party hosts. It follows redirects, because release hosts (GitHub)
answer a download URL with a 302 whose own Content-Length is that of the redirect's body.
"""

from __future__ import annotations

import contextlib
import os
import urllib.parse
from collections.abc import AsyncIterator, Mapping
from typing import Any

import aiohttp
import orjson

from zlh_actors.cli import config, errors

TIMEOUT = aiohttp.ClientTimeout(total=60, sock_connect=10)


def describe(status: int, body: Any, reason: str = "") -> str:
    """One line for an error answer: "404 no such server", with fields and allowed events if any."""
    problem = body if isinstance(body, dict) else {}
    line = f"{status} {problem.get('title') or reason or 'error'}"
    fields = problem.get("fields")
    if isinstance(fields, dict) and fields:
        line += ": " + "; ".join(f"{name or 'body'} {text}" for name, text in fields.items())
    allowed = problem.get("allowed")
    if isinstance(allowed, list):
        line += f" (allowed: {', '.join(map(str, allowed)) or 'nothing'})"
    return " ".join(line.split())


def unreachable(url: str, exc: BaseException) -> errors.ConnectionFailed:
    """`ConnectionFailed` with the shortest useful reason (the OS's words when there are some)."""
    if isinstance(exc, TimeoutError):
        return errors.ConnectionFailed(f"{url} did not answer in time")
    if isinstance(exc, aiohttp.ClientConnectorDNSError):
        # The resolver's own words: its codes are not errno values (os.strerror(-2) is "Unknown error -2").
        return errors.ConnectionFailed(f"cannot reach {url}: {exc.strerror or exc.os_error}")
    if isinstance(exc, aiohttp.ClientConnectorError):
        # "Connection refused" rather than asyncio's "Connect call failed ('127.0.0.1', 8080)".
        reason = os.strerror(exc.errno) if exc.errno else exc.strerror or str(exc.os_error)
        return errors.ConnectionFailed(f"cannot reach {url}: {reason}")
    if isinstance(exc, aiohttp.TooManyRedirects):
        return errors.ConnectionFailed(f"{url} redirects too many times")
    if isinstance(exc, aiohttp.ClientResponseError):
        return errors.ConnectionFailed(f"{url} did not answer as HTTP")
    return errors.ConnectionFailed(f"lost the connection to {url}: {exc or type(exc).__name__}")


class Client:
    """Requests to one service with one token; `call` raises `ApiError` or `ConnectionFailed`."""

    def __init__(self, session: aiohttp.ClientSession, settings: config.Config) -> None:
        self.session = session
        self.url = settings.url
        self.headers = {"Authorization": f"Bearer {settings.token}"}

    @staticmethod
    def path(*parts: str) -> str:
        """A path from segments, each quoted: an id typed as `../admin` stays one segment."""
        return "/" + "/".join(urllib.parse.quote(part, safe="") for part in parts)

    async def call(
        self,
        method: str,
        path: str,
        *,
        body: Any = None,
        params: Mapping[str, str] | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> tuple[Any, Mapping[str, str]]:
        """The decoded JSON answer and its headers, for a 2xx; raises otherwise."""
        data = None if body is None else orjson.dumps(body)
        sent = {**self.headers, **(headers or {})}
        if data is not None:
            sent["Content-Type"] = "application/json"
        try:
            async with self.session.request(
                method, self.url + path, data=data, params=params, headers=sent
            ) as response:
                raw = await response.read()
                status, reason, answer_headers = response.status, response.reason or "", response.headers
        except (
            aiohttp.ClientConnectionError,
            aiohttp.ClientPayloadError,
            aiohttp.ClientResponseError,
            TimeoutError,
        ) as exc:
            raise unreachable(self.url, exc) from exc
        try:
            decoded = orjson.loads(raw) if raw else None
        except orjson.JSONDecodeError:
            decoded = None
            if status < 400:
                raise errors.ApiError(
                    status, f"{status} {method} {path} answered something not JSON"
                ) from None
        if status >= 400:
            raise errors.ApiError(status, describe(status, decoded, reason))
        return decoded, answer_headers

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        return (await self.call("GET", path, params=params))[0]


@contextlib.asynccontextmanager
async def connect(settings: config.Config) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        yield Client(session, settings)


async def head_size(url: str) -> int | None:
    """The Content-Length a HEAD of `url` announces, after redirects; None when it announces none.

    A length of 0 counts as none: a mod is never empty, and some hosts answer HEAD with 0 for
    "not computed". No token is sent. `url` has been checked by `commands.parse_mod` (http or https).
    """
    try:
        async with (
            aiohttp.ClientSession(timeout=TIMEOUT) as session,
            session.head(url, allow_redirects=True) as response,
        ):
            if response.status >= 400:
                raise errors.ApiError(response.status, f"{url}: {response.status} {response.reason or ''}")
            return response.content_length or None
    except (aiohttp.ClientConnectionError, aiohttp.ClientResponseError, TimeoutError) as exc:
        raise unreachable(url, exc) from exc
    except aiohttp.RedirectClientError as exc:
        target = exc.args[0] if exc.args else "an invalid URL"  # both kinds carry the target first
        raise errors.ConnectionFailed(f"{url} redirects to {target}, which the CLI cannot fetch") from None
    except aiohttp.InvalidURL as exc:
        raise errors.UsageError(f"{url!r} is not a URL the CLI can fetch: {exc}") from None
    except aiohttp.ClientError as exc:
        raise errors.ConnectionFailed(f"HEAD {url} failed: {exc or type(exc).__name__}") from None
