"""schemathesis hooks for `test_openapi.py`: loaded by the `schemathesis run` subprocess, not by pytest.

Three operations refuse some schema-valid requests for reasons a JSON Schema cannot state: a create
whose Minecraft, loader and installer versions have no pinned launcher (pins are data, not
schema), or that names one mod twice; a list `cursor` that this API did not issue (opaque); a
`GET /v1/stream` that is not a WebSocket upgrade (schemathesis cannot send one). For those
operations the built-in `positive_data_acceptance` is switched off in the run's configuration and
this check takes its place: a refusal of valid data must be exactly one of those, named by the
problem's `fields`, and nothing else. A key the generator happened to reuse with another body is
the documented 422.

The generator draws Idempotency-Keys from a small space and repeats them, so most valid creates
would be refused as a reused key (422) before their body was looked at; `before_call` gives each
call with a *valid* key a fresh one, so the body is what gets tested. Invalid keys are left alone.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import schemathesis

_VALID_KEY = re.compile(r"[!-~]{1,255}")

# Refusals of schema-valid data that are the contract, by operation: status -> a field rule.
_MOD_LISTED_TWICE = re.compile(r"mods\[[0-9]+\]\.name")
# servers/create.py's words (`fields["fabric"]`) for versions with no pinned launcher.
_UNPINNED = "unpinned triple; an operator pins launchers with `python -m zlh_actors launchers pin`"
_BUILT_IN_ALLOWED = frozenset({401, 403, 404, 409, 429})


def _create_refusal(status: int, fields: dict[str, str]) -> bool:
    if status == 422:
        return True  # the generator reused an Idempotency-Key with another body
    if status != 400 or not fields:
        return False
    return all(
        (name == "fabric" and reason == _UNPINNED)
        or (_MOD_LISTED_TWICE.fullmatch(name) and reason == "is listed twice")
        for name, reason in fields.items()
    )


def _list_refusal(status: int, fields: dict[str, str]) -> bool:
    return status == 400 and set(fields) == {"cursor"}


def _stream_refusal(status: int, fields: dict[str, str]) -> bool:
    return status == 400 and set(fields) <= {"since"}  # no fields: not a WebSocket upgrade


UNSTATED = {
    "POST /v1/servers": _create_refusal,
    "GET /v1/servers": _list_refusal,
    "GET /v1/stream": _stream_refusal,
}


@schemathesis.check
def valid_data_refused_only_by_unstated_rules(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case[Any]
) -> bool | None:
    rule = UNSTATED.get(case.operation.label)
    meta = case.meta
    if rule is None or meta is None or not meta.generation.mode.is_positive:
        return None
    status = response.status_code
    if status < 400 or status >= 500 or status in _BUILT_IN_ALLOWED:
        return None  # 5xx is `not_a_server_error`'s to report
    body = response.json()
    fields = body.get("fields", {}) if isinstance(body, dict) else {}
    if not rule(status, fields):
        raise AssertionError(f"schema-valid request refused with {status}: {response.text[:500]}")
    return None


@schemathesis.hook
def before_call(
    context: schemathesis.HookContext, case: schemathesis.Case[Any], kwargs: dict[str, Any]
) -> None:
    key = case.headers.get("Idempotency-Key") if case.headers else None
    if isinstance(key, str) and _VALID_KEY.fullmatch(key):
        case.headers["Idempotency-Key"] = str(uuid.uuid4())
