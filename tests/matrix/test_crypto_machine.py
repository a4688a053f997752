"""The Olm machine wrapper with a real nio store on disk, no network."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from skiffyd.core.sync import MemberChange
from skiffyd.core.wire import ClientEvent
from skiffyd.matrix.crypto import Crypto

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ROOM = "!room:example.org"
ME = "@me:example.org"


@pytest.fixture
def crypto(tmp_path: Path) -> Iterator[Crypto]:
    c = Crypto.load(
        tmp_path / "crypto", user_id=ME, device_id="DEVICE", access_token="t", pickle_key="k" * 32
    )
    yield c
    c.close()


def send(c: Crypto, body: str) -> dict[str, object]:
    shares = c.share_payloads(ROOM, [ME])
    c.mark_shared(ROOM, {w for sharing, _ in shares for w in sharing})
    return c.encrypt(ROOM, "m.room.message", {"msgtype": "m.text", "body": body})


def event(content: dict[str, object], event_id: str) -> ClientEvent:
    return ClientEvent(
        type="m.room.encrypted", content=content, sender=ME, event_id=event_id, origin_server_ts=1
    )


def test_own_messages_round_trip_and_keep_relations_in_the_clear(crypto: Crypto) -> None:
    content = send(crypto, "hello")
    assert "hello" not in str(content)
    plain = crypto.decrypt(ROOM, event(content, "$1"))
    assert plain is not None
    assert (plain.type, plain.content["body"], plain.event_id) == ("m.room.message", "hello", "$1")
    relates = {"rel_type": "m.annotation", "event_id": "$1", "key": "👍"}
    reaction = crypto.encrypt(ROOM, "m.reaction", {"m.relates_to": relates})
    assert reaction["m.relates_to"] == relates


def test_unknown_session_or_garbage_is_not_decrypted(crypto: Crypto) -> None:
    content = send(crypto, "hello")
    content["session_id"] = "not-a-session"
    assert crypto.decrypt(ROOM, event(content, "$1")) is None
    assert crypto.decrypt(ROOM, event({"algorithm": "m.megolm.v1.aes-sha2"}, "$2")) is None
    odd = {"algorithm": "m.megolm.v1.aes-sha2", "ciphertext": 5, "session_id": [], "sender_key": {}}
    assert crypto.decrypt(ROOM, event(odd, "$3")) is None


def test_a_member_leaving_rotates_the_session_a_join_does_not(crypto: Crypto) -> None:
    crypto.set_members(ROOM, [ME, "@b:example.org"])
    first = send(crypto, "one")["session_id"]
    crypto.note_members(ROOM, [MemberChange("@c:example.org", "join", None, None)])
    assert send(crypto, "two")["session_id"] == first
    crypto.note_members(ROOM, [MemberChange("@b:example.org", "leave", None, None)])
    assert send(crypto, "three")["session_id"] != first


def test_the_rooms_message_count_rotates_the_session(crypto: Crypto) -> None:
    crypto.set_rotation(ROOM, 7 * 24 * 3600 * 1000, 2)
    ids = [send(crypto, f"m{i}")["session_id"] for i in range(5)]
    assert ids[0] == ids[1] != ids[2] == ids[3] != ids[4]


def test_one_time_key_count_from_sync_asks_for_more(crypto: Crypto) -> None:
    full = crypto._olm.account.max_one_time_keys
    crypto.upload_answered({"one_time_key_counts": {"signed_curve25519": full}})
    assert not crypto.should_upload_keys
    crypto.receive([], [], [], {"signed_curve25519": 3})  # others claimed most of them
    assert crypto.should_upload_keys
    crypto.receive([], [], [], {"signed_curve25519": full})
    assert not crypto.should_upload_keys


def test_export_then_import_into_another_device(crypto: Crypto, tmp_path: Path) -> None:
    content = send(crypto, "kept")
    other = Crypto.load(
        tmp_path / "other", user_id=ME, device_id="OTHER", access_token="t", pickle_key="q" * 32
    )
    try:
        assert other.decrypt(ROOM, event(content, "$1")) is None
        added, skipped = other.import_sessions(crypto.export_sessions())
        assert (len(added), skipped) == (1, 0)
        assert added[0].room_id == ROOM
        plain = other.decrypt(ROOM, event(content, "$1"))
        assert plain is not None
        assert plain.content["body"] == "kept"
        assert other.import_sessions(crypto.export_sessions()) == ([], 1)
        assert other.import_sessions([{"algorithm": "nope"}, {}]) == ([], 2)
    finally:
        other.close()


def test_device_list_changes_follow_tracked_users_only(crypto: Crypto) -> None:
    olm = crypto._olm
    olm.tracked_users.update({"@b:example.org", "@c:example.org"})
    crypto.receive([], ["@b:example.org", "@stranger:example.org"], [], {})
    assert crypto.users_to_query() == ["@b:example.org"]
    crypto.receive([], [], ["@b:example.org", "@c:example.org"], {})
    assert crypto.users_to_query() == []
    assert olm.tracked_users == set()
    crypto.track(["@c:example.org"])  # a room shared again: asked again
    assert crypto.users_to_query() == ["@c:example.org"]


def test_malformed_to_device_events_are_skipped_not_fatal(crypto: Crypto) -> None:
    garbage = [
        {"type": "m.room.encrypted"},  # no content at all
        {"type": "m.room_key_request", "content": {"action": "request"}},  # fields missing
        {"type": "m.key.verification.start", "sender": 5, "content": {"x": 1}},
        {"type": "m.room.encrypted", "sender": "@x:y", "content": {"algorithm": "nope"}},
        {"content": {"transaction_id": "t"}},
    ]
    assert crypto.receive(garbage, [], [], {}) == []
    assert crypto.verification.infos() == []
