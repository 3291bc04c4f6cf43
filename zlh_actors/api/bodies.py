"""JSON in and out of handlers, one way for every endpoint."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from zlh_actors import errors

JSON = "application/json"


class UnsupportedMediaType(errors.Permanent):
    """A body labelled with a Content-Type other than application/json (answered 415).

    Attributes (in `details`): fields, naming the Content-Type header.
    """


def json_response(data: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    # orjson renders UUIDs and datetimes itself; anything else it does not know becomes its text.
    body = orjson.dumps(data, default=str)
    return web.Response(body=body, status=status, content_type=JSON, headers=headers)


async def read_json(request: web.Request) -> Any:
    """The decoded body; malformed JSON or invalid UTF-8 is a 400, never a 500.

    A body that is not JSON is a 400 whatever its label; JSON labelled as anything but
    application/json (or not labelled) is a 415, so a client that sends form data by mistake
    (`curl -d` does) hears so instead of having its bytes guessed at.
    """
    raw = await request.read()
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise errors.BadRequest("the body is not valid JSON (UTF-8)", fields={"": str(exc)}) from None
    if request.content_type != JSON:
        raise UnsupportedMediaType(
            f"the body must be sent as {JSON}", fields={"Content-Type": f"must be {JSON}"}
        )
    return data
