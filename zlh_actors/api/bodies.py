"""JSON in and out of handlers, one way for every endpoint."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from zlh_actors import errors


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # orjson renders UUIDs and datetimes itself; anything else it does not know becomes its text.
    return web.Response(
        body=orjson.dumps(data, default=str), status=status, content_type="application/json", headers=headers
    )


async def read_json(request: web.Request) -> Any:
    """The decoded body; malformed JSON or invalid UTF-8 is a 400, never a 500."""
    raw = await request.read()
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.BadRequest("the body is not valid JSON (UTF-8)", fields={"": str(exc)}) from None
