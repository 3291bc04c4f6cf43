"""The enrollment and report shapes: strict, and naming the offending field."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.agent import test_manifest
from zlh_actors.agent import manifest, wire

SERVER_ID = "3f2b8c4e-1d2a-4b7c-9e8f-0a1b2c3d4e5f"


def body(**changes: object) -> dict[str, Any]:
    data: dict[str, Any] = {
        "server_id": SERVER_ID,
        "generation": 3,
        "token": "t" * 32,
        "callback_base": "http://10.0.0.2:8080/",
        "manifest": test_manifest.valid(),
    }
    data.update(changes)
    return data


def test_parse_enroll() -> None:
    enrollment = wire.parse_enroll(body(server_id=SERVER_ID.upper()))
    assert enrollment.server_id == SERVER_ID
    assert enrollment.generation == 3
    assert enrollment.callback_base == "http://10.0.0.2:8080"
    assert enrollment.report_url == f"http://10.0.0.2:8080/agent/v1/servers/{SERVER_ID}/status"
    assert enrollment.manifest_sha256 == manifest.manifest_sha256(test_manifest.valid())


def test_enroll_body_round_trips() -> None:
    enrollment = wire.parse_enroll(body())
    assert wire.parse_enroll(wire.enroll_body(enrollment)) == enrollment


@pytest.mark.parametrize(
    ("field", "changes"),
    [
        ("server_id", {"server_id": "server-1"}),
        ("generation", {"generation": 0}),
        ("generation", {"generation": True}),
        ("token", {"token": "short"}),
        ("token", {"token": "with space " * 3}),
        ("callback_base", {"callback_base": "http://control.example:8080"}),
        ("callback_base", {"callback_base": "ftp://10.0.0.2"}),
        ("callback_base", {"callback_base": "http://10.0.0.2:8080/?x=1"}),
        ("callback_base", {"callback_base": "http://10.0.0.2:99999"}),
        ("extra", {"extra": 1}),
    ],
)
def test_bad_enrollment_field_is_named(field: str, changes: dict[str, object]) -> None:
    with pytest.raises(wire.BadRequest) as exc:
        wire.parse_enroll(body(**changes))
    assert exc.value.field == field


def test_missing_enrollment_field_is_named() -> None:
    data = body()
    del data["token"]
    with pytest.raises(wire.BadRequest) as exc:
        wire.parse_enroll(data)
    assert exc.value.field == "token"


def test_manifest_errors_name_the_field_inside_the_enrollment() -> None:
    data = body()
    data["manifest"]["mods"][1]["sha512"] = "nope"
    with pytest.raises(manifest.ManifestInvalid) as exc:
        wire.parse_enroll(data)
    assert exc.value.field == "manifest.mods[1].sha512"
    with pytest.raises(manifest.ManifestInvalid) as exc:
        wire.parse_enroll(body(manifest=[]))
    assert exc.value.field == "manifest"


def test_game_request_names_the_generation() -> None:
    assert wire.parse_game_request({"generation": 4}) == 4
    bad_bodies: list[object] = [{}, {"generation": "4"}, {"generation": 4, "force": True}, []]
    for bad in bad_bodies:
        with pytest.raises(wire.BadRequest):
            wire.parse_game_request(bad)


def test_parse_report() -> None:
    report = {"generation": 2, "seq": 7, "state": "ready", "manifest_sha256": "f" * 64, "detail": ""}
    assert wire.parse_report(report) == report
    for field, value in (("state", "running"), ("seq", 0), ("detail", None), ("generation", -1)):
        with pytest.raises(wire.BadRequest) as exc:
            wire.parse_report({**report, field: value})
        assert exc.value.field == field
