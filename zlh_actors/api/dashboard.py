"""The dashboard's static files: `GET /` is the page, `GET /ui/{name}` its script modules and style sheet.

The page holds no data, so these routes need no token (the auth middleware guards only `/v1/` and
`/admin/`); everything it shows comes from API calls that carry the token the user typed. Only the
files listed in `FILES` are served, read once from the package: a release ships them, so a new
release means a new process, and a name from the URL never reaches the file system.

Every answer carries a Content-Security-Policy that allows this origin only: no other origin's
scripts, styles, images or connections, no inline script, no framing. A browser treats `'self'` as
covering `ws:`/`wss:` only under CSP Level 3, so the WebSocket stream's origin is also named
explicitly, from the Host the browser used (when it is a plain host[:port]). Files are answered with
an ETag and `Cache-Control: no-cache`: the names carry no version, so a browser must revalidate
them to never pair a new page with an old script; an unchanged file costs a 304.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib.resources
import re

from aiohttp import web

from zlh_actors import errors

PACKAGE = "zlh_actors.dashboard"
ASSET_PREFIX = "/ui/"
FILES = {
    "index.html": "text/html",
    "app.js": "text/javascript",
    "api.js": "text/javascript",
    "dom.js": "text/javascript",
    "render.js": "text/javascript",
    "session.js": "text/javascript",
    "stream.js": "text/javascript",
    "style.css": "text/css",
}
_HOST = re.compile(r"(?:[A-Za-z0-9.-]+|\[[0-9A-Fa-f:.]+\])(?::[0-9]{1,5})?")
_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src {connect}; "
    "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@dataclasses.dataclass(frozen=True)
class File:
    body: bytes
    content_type: str
    etag: str


@functools.cache
def load(name: str) -> File:
    body = importlib.resources.files(PACKAGE).joinpath(name).read_bytes()
    return File(body, FILES[name], f'"{hashlib.sha256(body).hexdigest()[:32]}"')


def policy(host: str) -> str:
    """The CSP for a page the browser fetched from `host` (the request's Host header)."""
    connect = "'self'"
    if _HOST.fullmatch(host):
        connect += f" ws://{host} wss://{host}"
    return _POLICY.format(connect=connect)


def _answer(request: web.Request, name: str) -> web.Response:
    file = load(name)
    headers = {
        "Cache-Control": "no-cache",
        "ETag": file.etag,
        "Content-Security-Policy": policy(request.host),
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
    }
    if file.etag in (tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")):
        return web.Response(status=304, headers=headers)
    return web.Response(body=file.body, content_type=file.content_type, charset="utf-8", headers=headers)


async def index(request: web.Request) -> web.Response:
    return _answer(request, "index.html")


async def asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in FILES or name == "index.html":
        raise errors.NotFound("no such dashboard file", name=name)
    return _answer(request, name)
