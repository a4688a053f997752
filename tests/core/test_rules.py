"""Homeserver URL rules, identifiers, backoff and the outbox's decisions."""

from __future__ import annotations

import pytest

from skiffyd.core.backoff import Backoff
from skiffyd.core.homeserver import normalize_homeserver
from skiffyd.core.identifiers import check_room_id, check_room_id_or_alias
from skiffyd.core.outbox import GiveUp, OutboxItem, Retry, heads, on_failure
from skiffyd.errors import (
    ConfigError,
    HomeserverUnreachableError,
    InsecureHomeserverError,
    RequestFailedError,
    SkiffyError,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("matrix.org", "https://matrix.org"),
        ("https://Matrix.ORG/", "https://matrix.org"),
        ("http://127.0.0.1:8008", "http://127.0.0.1:8008"),
        ("http://127.9.9.9", "http://127.9.9.9"),
        ("http://localhost:8008/", "http://localhost:8008"),
        ("http://[::1]:8008", "http://[::1]:8008"),
    ],
)
def test_homeserver_accepted(url: str, expected: str) -> None:
    assert normalize_homeserver(url) == expected


@pytest.mark.parametrize(
    "url", ["http://matrix.org", "http://10.0.0.1", "http://localhost.evil.com"]
)
def test_plain_http_refused_off_loopback(url: str) -> None:
    with pytest.raises(InsecureHomeserverError):
        normalize_homeserver(url)


@pytest.mark.parametrize("url", ["", "ftp://x", "https://u:p@host", "https://host?x=1"])
def test_homeserver_garbage(url: str) -> None:
    with pytest.raises(ConfigError):
        normalize_homeserver(url)


def test_identifiers() -> None:
    assert check_room_id("!abc:example.org") == "!abc:example.org"
    assert check_room_id_or_alias("#room:example.org") == "#room:example.org"
    for bad in ["abc", "#alias:x", "!with space:x", ""]:
        with pytest.raises(SkiffyError) as info:
            check_room_id(bad)
        assert info.value.code == "SKIFFY_IPC_INVALID_ARGUMENT"


def test_backoff_grows_caps_and_honours_floor() -> None:
    b = Backoff(base=1.0, cap=8.0)
    delays = [b.next_delay(0.0) for _ in range(6)]
    assert delays == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    assert b.next_delay(0.999, at_least=20.0) == 20.0
    b.reset()
    assert b.next_delay(1.0) == 1.0


def _item(seq: int, room: str, state: str = "queued") -> OutboxItem:
    return OutboxItem(
        seq=seq,
        txn_id=f"t{seq}",
        room_id=room,
        kind="event",
        event_type="m.room.message",
        content={"msgtype": "m.text", "body": "x"},
        state=state,  # type: ignore[arg-type]
    )


def test_heads_fifo_per_room_and_failed_head_holds_room() -> None:
    items = [
        _item(3, "!a"),
        _item(1, "!a"),
        _item(2, "!b", "failed"),
        _item(4, "!b"),
        _item(5, "!c"),
    ]
    assert [i.txn_id for i in heads(items)] == ["t1", "t5"]


def test_failure_classification() -> None:
    b = Backoff()
    assert isinstance(on_failure(HomeserverUnreachableError("down"), b, 0.5), Retry)
    limited = RequestFailedError(
        "slow down", status=429, errcode="M_LIMIT_EXCEEDED", retry_after_ms=7000
    )
    decision = on_failure(limited, b, 0.0)
    assert isinstance(decision, Retry)
    assert decision.delay >= 7.0
    assert isinstance(
        on_failure(RequestFailedError("5xx", status=502, errcode=None), b, 0.0), Retry
    )
    forbidden = RequestFailedError("no", status=403, errcode="M_FORBIDDEN")
    assert on_failure(forbidden, b, 0.0) == GiveUp("403 M_FORBIDDEN")


def test_unauthorized_waits_for_the_session_instead_of_failing_the_message() -> None:
    expired = RequestFailedError("expired", status=401, errcode="M_UNKNOWN_TOKEN")
    assert isinstance(on_failure(expired, Backoff(), 0.0), Retry)


def test_logs_hash_user_ids_and_drop_secrets() -> None:
    from skiffyd.logs import _scrub, hash_user

    out = _scrub(None, "info", {"user_id": "@alice:x", "password": "pw", "body": "hi", "count": 3})
    assert out == {
        "user_id": hash_user("@alice:x"),
        "password": "<redacted>",
        "body": "<redacted>",
        "count": 3,
    }
    assert hash_user("@alice:x") != hash_user("@bob:x")
    assert "alice" not in hash_user("@alice:x")
