"""HMAC request signing between the control plane and the agents (pure: no I/O, no clock).

Only the control plane may enroll an agent or drive its game, and the agent cannot rely on DNS or on
TLS certificates naming it (it is addressed by its container IP). Both sides therefore share one
secret, the enrollment key, and every state-changing request carries

    X-ZLH-Timestamp: <unix seconds>
    X-ZLH-Signature: sha256=<hex HMAC-SHA256(key, "<timestamp>.<METHOD>.<path>.<body bytes>")>

The signed message binds the method and path (a signed stop cannot be replayed as a start) and the
exact body bytes (the manifest cannot be swapped). The timestamp bounds replays to `MAX_SKEW` seconds
either side of the agent's clock; within that window a replay repeats the same request, which the
agent's handlers make harmless (enrollment is idempotent per generation, start and stop name the
generation they are for and are no-ops when already done).

The current time is an argument rather than read here so that both sides, and the tests, decide what
"now" is; `verify` compares digests with `hmac.compare_digest` so the comparison time does not leak
how many leading characters of a forged signature were right.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

from zlh_actors import errors

TIMESTAMP_HEADER = "X-ZLH-Timestamp"
SIGNATURE_HEADER = "X-ZLH-Signature"
SCHEME = "sha256="
MAX_SKEW = 60.0
# A shorter key is guessable offline from one captured request; 32 bytes matches the HMAC block strength.
MIN_KEY_BYTES = 32
# Unix seconds fit in 11 digits until the year 5138; a longer value is garbage, not a timestamp.
_MAX_TIMESTAMP_DIGITS = 12


class SignatureRejected(errors.Permanent):
    """The request is not signed by the enrollment key, or not recently enough.

    Attributes (in `details`): reason, one of "missing", "malformed", "mismatch", "stale".
    """


def check_key(key: bytes) -> None:
    """Raise `ConfigError` when `key` is too short to be an enrollment key."""
    if len(key) < MIN_KEY_BYTES:
        raise errors.ConfigError(f"the enrollment key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}")


def message(timestamp: str, method: str, path: str, body: bytes) -> bytes:
    """The exact bytes that are signed."""
    return b".".join((timestamp.encode("ascii"), method.upper().encode("ascii"), path.encode("utf-8"), body))


def signature(key: bytes, timestamp: str, method: str, path: str, body: bytes) -> str:
    """The `X-ZLH-Signature` value for these request parts."""
    digest = hmac.new(key, message(timestamp, method, path, body), hashlib.sha256).hexdigest()
    return SCHEME + digest


def sign(key: bytes, method: str, path: str, body: bytes, now: float) -> dict[str, str]:
    """The headers that authenticate a request of `method` to `path` with `body`, sent at `now`."""
    timestamp = str(int(now))
    return {
        TIMESTAMP_HEADER: timestamp,
        SIGNATURE_HEADER: signature(key, timestamp, method, path, body),
    }


def verify(
    key: bytes,
    method: str,
    path: str,
    body: bytes,
    headers: Mapping[str, str],
    now: float,
    *,
    max_skew: float = MAX_SKEW,
) -> None:
    """Return when the headers sign this request with `key` within `max_skew` seconds of `now`.

    Raises `SignatureRejected` naming the reason otherwise. The signature is checked before the
    clock so that an unauthenticated caller learns nothing about the agent's clock.
    """
    timestamp = _header(headers, TIMESTAMP_HEADER)
    given = _header(headers, SIGNATURE_HEADER)
    if timestamp is None or given is None:
        missing = TIMESTAMP_HEADER if timestamp is None else SIGNATURE_HEADER
        raise SignatureRejected(f"request is not signed: {missing} header missing", reason="missing")
    if not (timestamp.isascii() and timestamp.isdigit() and len(timestamp) <= _MAX_TIMESTAMP_DIGITS):
        raise SignatureRejected(f"{TIMESTAMP_HEADER} must be unix seconds", reason="malformed")
    if not given.startswith(SCHEME):
        raise SignatureRejected(f"{SIGNATURE_HEADER} must start with {SCHEME!r}", reason="malformed")
    expected = signature(key, timestamp, method, path, body)
    if not hmac.compare_digest(expected.encode("ascii"), given.encode("utf-8", "surrogateescape")):
        raise SignatureRejected("request signature does not match", reason="mismatch")
    skew = now - int(timestamp)
    if abs(skew) > max_skew:
        direction = "old" if skew > 0 else "ahead"
        raise SignatureRejected(
            f"request timestamp is {abs(skew):.0f}s {direction}, more than {max_skew:.0f}s",
            reason="stale",
        )


def _header(headers: Mapping[str, str], name: str) -> str | None:
    # aiohttp's headers are case-insensitive, a plain dict (tests, other clients) is not.
    value = headers.get(name)
    if value is not None:
        return value
    lowered = name.lower()
    for key, candidate in headers.items():
        if key.lower() == lowered:
            return candidate
    return None
