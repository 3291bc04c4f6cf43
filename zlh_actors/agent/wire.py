"""The agent protocol's wire shapes and their strict parsers (pure: no I/O).

The control plane and the agent are separate programs released on separate schedules; this module is
the one place both import to agree on paths, request bodies and the status reports the agent posts
back. Everything an agent receives is parsed strictly (unknown fields are errors that name the field)
because an enrollment that is half-understood would install or report for the wrong thing.

Addresses are IP literals on purpose: the control plane reaches the agent at the container's IP, and
the agent calls back to `callback_base`, which must also be an IP, so no step depends on DNS.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import re
import urllib.parse
import uuid
from typing import Any, Literal, TypedDict, get_args

from zlh_actors import errors
from zlh_actors.agent import manifest

ENROLL_PATH = "/v1/enroll"
STATUS_PATH = "/v1/status"
START_PATH = "/v1/game/start"
STOP_PATH = "/v1/game/stop"
DEFAULT_PORT = 8770

ReportState = Literal["installing", "installed", "install_failed", "starting", "ready", "stopped", "crashed"]
REPORT_STATES: tuple[ReportState, ...] = get_args(ReportState)
# What GET /v1/status may say besides the reported states: not enrolled yet, or a stop in progress.
AgentState = ReportState | Literal["unenrolled", "stopping"]

# Visible ASCII only: the token travels in an Authorization header.
_TOKEN = re.compile(r"[\x21-\x7e]{16,512}")


class EnrollRequest(TypedDict):
    server_id: str
    generation: int
    token: str
    callback_base: str
    manifest: manifest.ManifestWire


class GameRequest(TypedDict):
    """Body of POST /v1/game/start and /v1/game/stop: the generation the caller means to drive."""

    generation: int


class Report(TypedDict):
    """Body of POST {callback_base}/agent/v1/servers/{server_id}/status (Authorization: Bearer token)."""

    generation: int
    seq: int
    state: ReportState
    manifest_sha256: str
    detail: str


class GameStatus(TypedDict):
    pid: int | None
    running: bool


class Status(TypedDict):
    """Body of GET /v1/status. `manifest_sha256` is the applied manifest, which lags the enrolled one."""

    server_id: str | None
    generation: int | None
    state: AgentState
    manifest_sha256: str | None
    enrolled_manifest_sha256: str | None
    game: GameStatus
    last_error: str | None
    detail: str
    seq: int


class BadRequest(errors.Permanent):
    """A request body breaks the protocol.

    Attributes (in `details`): field, the offending field's name.
    """

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}", field=field)
        self.field = field


@dataclasses.dataclass(frozen=True)
class Enrollment:
    """What the control plane handed the agent for one server generation."""

    server_id: str
    generation: int
    token: str
    callback_base: str
    manifest: manifest.Manifest

    @property
    def manifest_sha256(self) -> str:
        return manifest.manifest_sha256(self.manifest)

    @property
    def report_url(self) -> str:
        return report_url(self.callback_base, self.server_id)


def report_url(callback_base: str, server_id: str) -> str:
    return f"{callback_base}/agent/v1/servers/{server_id}/status"


def parse_enroll(data: object) -> Enrollment:
    """The enrollment in a decoded POST /v1/enroll body; `BadRequest` or `ManifestInvalid` if bad."""
    body = _fields(data, EnrollRequest)
    try:
        parsed_manifest = manifest.parse(body["manifest"])
    except manifest.ManifestInvalid as exc:
        field = exc.field if exc.field == "manifest" else f"manifest.{exc.field}"
        raise manifest.ManifestInvalid(field, exc.problem) from None
    return Enrollment(
        server_id=_server_id(body["server_id"]),
        generation=generation(body["generation"]),
        token=_token(body["token"]),
        callback_base=_callback_base(body["callback_base"]),
        manifest=parsed_manifest,
    )


def enroll_body(enrollment: Enrollment) -> EnrollRequest:
    """The wire form of `enrollment` (what the control plane sends and the agent persists)."""
    return {
        "server_id": enrollment.server_id,
        "generation": enrollment.generation,
        "token": enrollment.token,
        "callback_base": enrollment.callback_base,
        "manifest": manifest.to_wire(enrollment.manifest),
    }


def parse_game_request(data: object) -> int:
    """The generation named by a start or stop body."""
    return generation(_fields(data, GameRequest)["generation"])


def parse_report(data: object) -> Report:
    """A decoded status report, checked (for the control plane's callback handler)."""
    body = _fields(data, Report)
    state = body["state"]
    if state not in REPORT_STATES:
        raise BadRequest("state", f"must be one of {', '.join(REPORT_STATES)}")
    seq = body["seq"]
    if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
        raise BadRequest("seq", "must be a positive integer")
    sha, detail = body["manifest_sha256"], body["detail"]
    if not isinstance(sha, str):
        raise BadRequest("manifest_sha256", "must be a string")
    if not isinstance(detail, str):
        raise BadRequest("detail", "must be a string")
    return {
        "generation": generation(body["generation"]),
        "seq": seq,
        "state": state,
        "manifest_sha256": sha,
        "detail": detail,
    }


def generation(value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise BadRequest("generation", "must be a positive integer")
    return value


def _fields(data: object, shape: type[Any]) -> dict[str, object]:
    if not isinstance(data, dict):
        raise BadRequest("body", "must be a JSON object")
    required: frozenset[str] = shape.__required_keys__
    missing = sorted(required - data.keys())
    if missing:
        raise BadRequest(missing[0], "is required")
    unknown = sorted(data.keys() - required, key=str)
    if unknown:
        raise BadRequest(str(unknown[0]), "is not a known field")
    return data


def _server_id(value: object) -> str:
    if not isinstance(value, str):
        raise BadRequest("server_id", "must be a UUID string")
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise BadRequest("server_id", "must be a UUID string") from None


def _token(value: object) -> str:
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise BadRequest("token", "must be 16 to 512 visible ASCII characters")
    return value


def _callback_base(value: object) -> str:
    problem = "must be an http(s) URL whose host is an IP address, with no query or fragment"
    if not isinstance(value, str):
        raise BadRequest("callback_base", problem)
    parts = urllib.parse.urlsplit(value)
    if parts.scheme not in ("http", "https") or parts.query or parts.fragment or parts.username:
        raise BadRequest("callback_base", problem)
    try:
        ipaddress.ip_address(parts.hostname or "")
        _ = parts.port  # raises ValueError on a bad port
    except ValueError:
        raise BadRequest("callback_base", problem) from None
    return value.rstrip("/")
