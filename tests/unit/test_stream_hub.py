"""The stream hub's wake-ups: a notification for an entry already sent, or its own replica's
announcement (it was woken directly), spares a read; nothing else does."""

from __future__ import annotations

import uuid

import orjson

from storage import journal
from zlh_actors.api import stream
from zlh_actors.runtime import announcer

CHANNEL = announcer.CHANNEL


def _hub(head: journal.Cursor, announcements: announcer.Announcer | None = None) -> stream.Hub:
    hub = stream.Hub(
        "postgresql://unused",
        None,  # type: ignore[arg-type]
        server_settings={},
        announcements=announcements,
    )
    hub.head = head
    return hub


def _payload(txid: int, position: int) -> str:
    return orjson.dumps({"position": position, "txid": str(txid), "server_id": "x", "tenant": "t"}).decode()


def test_a_notification_at_or_before_the_head_does_not_wake_the_hub() -> None:
    hub = _hub(journal.Cursor(100, 50))
    for txid, position in ((100, 50), (100, 49), (99, 70)):
        hub._notified(None, 0, CHANNEL, _payload(txid, position))
        assert not hub._wake.is_set(), (txid, position)


def test_a_notification_after_the_head_or_without_a_cursor_wakes_the_hub() -> None:
    for payload in (_payload(100, 51), _payload(101, 1), "", "not json", '{"txid": "1"}', "[]"):
        hub = _hub(journal.Cursor(100, 50))
        hub._notified(None, 0, CHANNEL, payload)
        assert hub._wake.is_set(), payload


def test_its_own_replicas_announcement_does_not_wake_the_hub_a_peers_does() -> None:
    ours = announcer.Announcer(None, uuid.uuid4())  # type: ignore[arg-type]
    hub = _hub(journal.Cursor(100, 50), ours)
    hub._notified(None, 0, CHANNEL, announcer.payload(ours.replica_id))
    assert not hub._wake.is_set()
    hub._notified(None, 0, CHANNEL, announcer.payload(uuid.uuid4()))  # a peer's
    assert hub._wake.is_set()
