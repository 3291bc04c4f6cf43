"""Signing: what the agent accepts, and every way a request can fail to be authentic."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from zlh_actors import errors
from zlh_actors.agent import signing

KEY = b"k" * 32
NOW = 1_700_000_000.0
BODY = b'{"server_id":"x"}'


def reason(exc: pytest.ExceptionInfo[signing.SignatureRejected]) -> str:
    return str(exc.value.details["reason"])


def test_signature_is_hmac_sha256_of_timestamp_method_path_and_body() -> None:
    headers = signing.sign(KEY, "post", "/v1/enroll", BODY, NOW + 0.9)
    expected = hmac.new(KEY, b"1700000000.POST./v1/enroll." + BODY, hashlib.sha256).hexdigest()
    assert headers == {"X-ZLH-Timestamp": "1700000000", "X-ZLH-Signature": "sha256=" + expected}


@pytest.mark.parametrize("delay", [0.0, 59.0, -59.0])
def test_valid_signature_within_the_skew_is_accepted(delay: float) -> None:
    headers = signing.sign(KEY, "POST", "/v1/enroll", BODY, NOW)
    signing.verify(KEY, "POST", "/v1/enroll", BODY, headers, NOW + delay)


def test_header_names_are_case_insensitive() -> None:
    headers = {
        name.lower(): value for name, value in signing.sign(KEY, "POST", "/v1/enroll", BODY, NOW).items()
    }
    signing.verify(KEY, "POST", "/v1/enroll", BODY, headers, NOW)


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "/v1/enroll", BODY + b" "),
        ("POST", "/v1/enroll", b'{"server_id":"y"}'),
        ("POST", "/v1/game/start", BODY),
        ("PUT", "/v1/enroll", BODY),
    ],
)
def test_any_change_to_the_request_breaks_the_signature(method: str, path: str, body: bytes) -> None:
    headers = signing.sign(KEY, "POST", "/v1/enroll", BODY, NOW)
    with pytest.raises(signing.SignatureRejected) as exc:
        signing.verify(KEY, method, path, body, headers, NOW)
    assert reason(exc) == "mismatch"


def test_wrong_key_is_rejected() -> None:
    headers = signing.sign(b"w" * 32, "POST", "/v1/enroll", BODY, NOW)
    with pytest.raises(signing.SignatureRejected) as exc:
        signing.verify(KEY, "POST", "/v1/enroll", BODY, headers, NOW)
    assert reason(exc) == "mismatch"


@pytest.mark.parametrize("delay", [61.0, -61.0, 3600.0])
def test_stale_or_future_timestamp_is_rejected(delay: float) -> None:
    headers = signing.sign(KEY, "POST", "/v1/enroll", BODY, NOW)
    with pytest.raises(signing.SignatureRejected) as exc:
        signing.verify(KEY, "POST", "/v1/enroll", BODY, headers, NOW + delay)
    assert reason(exc) == "stale"


def test_a_forged_signature_is_rejected_before_the_clock_is_revealed() -> None:
    headers = signing.sign(b"w" * 32, "POST", "/v1/enroll", BODY, NOW - 3600)
    with pytest.raises(signing.SignatureRejected) as exc:
        signing.verify(KEY, "POST", "/v1/enroll", BODY, headers, NOW)
    assert reason(exc) == "mismatch"


@pytest.mark.parametrize("missing", ["X-ZLH-Timestamp", "X-ZLH-Signature"])
def test_missing_headers_are_rejected(missing: str) -> None:
    headers = signing.sign(KEY, "POST", "/v1/enroll", BODY, NOW)
    del headers[missing]
    with pytest.raises(signing.SignatureRejected) as exc:
        signing.verify(KEY, "POST", "/v1/enroll", BODY, headers, NOW)
    assert reason(exc) == "missing"
    assert missing in exc.value.message


def test_unsigned_request_is_rejected() -> None:
    with pytest.raises(signing.SignatureRejected) as exc:
        signing.verify(KEY, "POST", "/v1/enroll", BODY, {}, NOW)
    assert reason(exc) == "missing"


@pytest.mark.parametrize(
    ("timestamp", "signature"),
    [("-1700000000", None), ("17e8", None), ("1" * 13, None), (None, "md5=abc"), (None, "")],
)
def test_malformed_headers_are_rejected(timestamp: str | None, signature: str | None) -> None:
    headers = signing.sign(KEY, "POST", "/v1/enroll", BODY, NOW)
    if timestamp is not None:
        headers["X-ZLH-Timestamp"] = timestamp
    if signature is not None:
        headers["X-ZLH-Signature"] = signature
    with pytest.raises(signing.SignatureRejected) as exc:
        signing.verify(KEY, "POST", "/v1/enroll", BODY, headers, NOW)
    assert reason(exc) == "malformed"


def test_rejection_is_a_permanent_error() -> None:
    assert issubclass(signing.SignatureRejected, errors.Permanent)


def test_short_keys_are_refused() -> None:
    with pytest.raises(errors.ConfigError):
        signing.check_key(b"x" * 31)
    signing.check_key(b"x" * 32)
