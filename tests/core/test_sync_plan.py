"""The pure sync planner: decoded /sync → room patches and messages."""

from __future__ import annotations

import msgspec
import pytest

from skiffyd.core.sync import plan_sync, room_display_name
from skiffyd.core.wire import sync_decoder
from skiffyd.errors import BadResponseError

ME = "@me:example.org"


def _sync(rooms: dict[str, object], next_batch: str = "s2") -> bytes:
    return msgspec.json.encode({"next_batch": next_batch, "rooms": rooms, "unknown_field": 1})


def _msg(
    event_id: str, body: str, sender: str = "@a:example.org", **extra: object
) -> dict[str, object]:
    return {
        "type": "m.room.message",
        "event_id": event_id,
        "sender": sender,
        "origin_server_ts": 1000,
        "content": {"msgtype": "m.text", "body": body},
        **extra,
    }


def test_joined_room_state_timeline_and_counts() -> None:
    body = _sync(
        {
            "join": {
                "!r:example.org": {
                    "state": {
                        "events": [
                            {"type": "m.room.name", "state_key": "", "content": {"name": "Lounge"}},
                            {"type": "m.room.topic", "state_key": "", "content": {"topic": "chat"}},
                        ]
                    },
                    "timeline": {
                        "events": [
                            _msg("$1", "first"),
                            {
                                "type": "m.room.encryption",
                                "state_key": "",
                                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                            },
                            _msg("$2", "second"),
                            {"type": "m.reaction", "event_id": "$3", "content": {}},
                        ]
                    },
                    "summary": {"m.joined_member_count": 3, "m.heroes": ["@a:example.org"]},
                    "unread_notifications": {"notification_count": 2},
                }
            }
        }
    )
    plan = plan_sync(sync_decoder.decode(body), ME)
    assert plan.next_batch == "s2"
    [patch] = plan.rooms
    assert patch.changes == {
        "membership": "join",
        "name": "Lounge",
        "topic": "chat",
        "is_encrypted": True,
        "heroes": ["@a:example.org"],
        "joined_count": 3,
        "notification_count": 2,
    }
    # The encryption event has no event id and the reaction no relation:
    # neither is kept; the two messages are rows, in order.
    assert [(i.event_id, i.content.get("body"), i.visible) for i in patch.items] == [
        ("$1", "first", True),
        ("$2", "second", True),
    ]


def test_own_echo_carries_transaction_id() -> None:
    body = _sync(
        {
            "join": {
                "!r:x": {
                    "timeline": {
                        "events": [_msg("$9", "mine", sender=ME, unsigned={"transaction_id": "t1"})]
                    }
                }
            }
        }
    )
    [msg] = plan_sync(sync_decoder.decode(body), ME).rooms[0].items
    assert msg.txn_id == "t1"
    assert msg.sender == ME


def test_invite_and_leave() -> None:
    body = _sync(
        {
            "invite": {
                "!i:x": {
                    "invite_state": {
                        "events": [
                            {"type": "m.room.name", "state_key": "", "content": {"name": "Party"}},
                            {
                                "type": "m.room.member",
                                "state_key": ME,
                                "sender": "@host:x",
                                "content": {"membership": "invite"},
                            },
                        ]
                    }
                }
            },
            "leave": {"!l:x": {}},
        }
    )
    plan = plan_sync(sync_decoder.decode(body), ME)
    by_id = {p.room_id: p.changes for p in plan.rooms}
    assert by_id["!i:x"] == {"name": "Party", "membership": "invite", "inviter": "@host:x"}
    assert by_id["!l:x"] == {"membership": "leave"}


def test_malformed_messages_are_skipped_not_fatal() -> None:
    body = _sync(
        {
            "join": {
                "!r:x": {
                    "timeline": {
                        "events": [
                            {"type": "m.room.message", "event_id": "$r", "content": {}},
                            {
                                "type": "m.room.message",
                                "event_id": "$n",
                                "content": {"body": 5, "msgtype": "m.text"},
                            },
                            _msg("$ok", "fine"),
                        ]
                    }
                }
            }
        }
    )
    items = plan_sync(sync_decoder.decode(body), ME).rooms[0].items
    # Malformed messages are still rows (a UI shows something); never a crash.
    assert [i.event_id for i in items] == ["$r", "$n", "$ok"]


def test_wrong_type_for_a_used_field_names_the_path() -> None:
    # Rooms are decoded as they are planned: the error names the path in the room.
    plan = plan_sync(
        sync_decoder.decode(_sync({"join": {"!r:x": {"timeline": {"events": "nope"}}}})), ME
    )
    with pytest.raises(BadResponseError, match=r"\$\.timeline\.events"):
        list(plan.rooms)
    with pytest.raises(msgspec.ValidationError, match=r"\$\.next_batch"):
        sync_decoder.decode(b'{"next_batch": 5}')


def test_rooms_are_planned_lazily_and_count_as_they_go() -> None:
    body = _sync({"join": {"!a:x": {"timeline": {"events": [_msg("$1", "a")]}}, "!b:x": {}}})
    plan = plan_sync(sync_decoder.decode(body), ME)
    assert len(plan.rooms) == 2
    assert plan.event_count == 0  # nothing decoded yet
    assert [r.room_id for r in plan.rooms] == ["!a:x", "!b:x"]
    assert plan.event_count == 1


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({"name": "Named", "canonical_alias": "#a:x"}, "Named"),
        ({"name": None, "canonical_alias": "#a:x"}, "#a:x"),
        ({"heroes": ["@bob:x"], "joined_count": 2}, "bob"),
        ({"heroes": ["@bob:x", "@carol:x"], "joined_count": 3}, "bob and carol"),
        ({"heroes": ["@bob:x", "@carol:x"], "joined_count": 5}, "bob, carol and 2 others"),
        ({"heroes": [ME], "joined_count": 1}, "Empty room"),
        ({}, "Empty room"),
    ],
)
def test_room_display_name(kwargs: dict[str, object], expected: str) -> None:
    args: dict[str, object] = {
        "name": None,
        "canonical_alias": None,
        "heroes": None,
        "joined_count": 0,
        "invited_count": 0,
        "own_user_id": ME,
    }
    args.update(kwargs)
    assert room_display_name(**args) == expected  # type: ignore[arg-type]
