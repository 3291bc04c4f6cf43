"""Building blocks of the OpenAPI document's paths: operations, JSON answers, shared error responses.

`openapi.py` (the public API) and `openapi_auxiliary.py` (admin, agent, dashboard) both build their
paths from these, so an error status means the same response everywhere: each is one component
(`#/components/responses/...`), rendered as a problem+json document (`problems.py`).
"""

from __future__ import annotations

from typing import Any

from zlh_actors.api import openapi_schemas as schemas

PROBLEM = "application/problem+json"

# Status -> (the component's name, when a client gets it).
ERRORS: dict[str, tuple[str, str]] = {
    "400": ("BadRequest", "a malformed request: every invalid field is named in `fields`"),
    "401": ("Unauthorized", "no bearer token, or an invalid or revoked one"),
    "403": ("Forbidden", "the token may not do this (an admin endpoint, another server's agent token)"),
    "404": ("NotFound", "no such server or command, or one of another tenant"),
    "409": ("Conflict", "refused in the current state: `state` and `allowed` name it and what it accepts"),
    "413": ("TooLarge", "the body is larger than the service accepts (1 MiB)"),
    "415": ("UnsupportedMediaType", "a JSON body sent with a Content-Type other than application/json"),
    "422": ("KeyReused", "this Idempotency-Key was used with a different request"),
    "503": ("Unavailable", "temporarily unavailable (database, capacity, a full mailbox): retry later"),
}

SERVER_ID: schemas.Schema = {"$ref": "#/components/parameters/server_id"}


def response_components() -> dict[str, schemas.Schema]:
    """`components.responses`: one problem+json response per error status."""
    problem = {PROBLEM: {"schema": schemas.ref("Problem")}}
    return {name: {"description": text, "content": problem} for name, text in ERRORS.values()}


def errors(*statuses: str) -> dict[str, schemas.Schema]:
    """Shared error responses by status: "400" -> the `BadRequest` component, and so on."""
    return {status: {"$ref": f"#/components/responses/{ERRORS[status][0]}"} for status in statuses}


def json_answer(
    description: str, schema: schemas.Schema, headers: dict[str, Any] | None = None
) -> schemas.Schema:
    answer: schemas.Schema = {"description": description, "content": {"application/json": {"schema": schema}}}
    if headers:
        answer["headers"] = headers
    return answer


def operation(
    operation_id: str, summary: str, responses: dict[str, schemas.Schema], **extra: Any
) -> dict[str, Any]:
    return {"operationId": operation_id, "summary": summary, "responses": responses, **extra}


def integer_query(name: str, low: int, high: int, default: int | None, description: str) -> schemas.Schema:
    schema: schemas.Schema = {"type": "integer", "minimum": low, "maximum": high}
    if default is not None:
        schema["default"] = default
    return {"name": name, "in": "query", "required": False, "schema": schema, "description": description}
