"""Rooms, members, relations, receipts and gaps in the encrypted cache."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from skiffyd.cache import Cache
from skiffyd.core.sync import plan_sync
from skiffyd.core.timeline import classify
from skiffyd.core.wire import ClientEvent, sync_decoder

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

ME = "@me:x"
ROOM = "!room:x"
_tokens = iter(range(1, 1_000_000))


@pytest.fixture
def cache(tmp_path: Path) -> Iterator[Cache]:
    c = Cache.open(tmp_path / "cache.db", secrets.token_hex(32), ME)
    yield c
    c.close()


def msg(
    event_id: str, body: str, sender: str = "@a:x", ts: int = 1, **extra: Any
) -> dict[str, Any]:
    return {
        "type": "m.room.message",
        "event_id": event_id,
        "sender": sender,
        "origin_server_ts": ts,
        "content": {"msgtype": "m.text", "body": body, **extra},
    }


def edit(
    event_id: str, target: str, body: str, sender: str = "@a:x", ts: int = 2
) -> dict[str, Any]:
    return msg(
        event_id,
        "* " + body,
        sender,
        ts,
        **{
            "m.new_content": {"msgtype": "m.text", "body": body},
            "m.relates_to": {"rel_type": "m.replace", "event_id": target},
        },
    )


def react(event_id: str, target: str, key: str, sender: str = "@b:x") -> dict[str, Any]:
    return {
        "type": "m.reaction",
        "event_id": event_id,
        "sender": sender,
        "content": {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": key}},
    }


def redaction(event_id: str, target: str) -> dict[str, Any]:
    return {
        "type": "m.room.redaction",
        "event_id": event_id,
        "sender": "@a:x",
        "redacts": target,
        "content": {},
    }


def state(
    type_: str,
    content: dict[str, Any],
    state_key: str = "",
    sender: str = "@a:x",
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "type": type_,
        "state_key": state_key,
        "sender": sender,
        "event_id": event_id or f"$s{next(_tokens)}",
        "content": content,
    }


def sync(
    cache: Cache,
    room: dict[str, Any] | None = None,
    *,
    room_id: str = ROOM,
    section: str = "join",
    **top: Any,
) -> list[Any]:
    body: dict[str, Any] = {
        "next_batch": f"s{next(_tokens)}",
        "rooms": {section: {room_id: room or {}}},
        **top,
    }
    return cache.apply_sync(plan_sync(sync_decoder.decode(__import__("json").dumps(body)), ME))


def rows(cache: Cache, room_id: str = ROOM) -> list[Any]:
    return cache.messages(room_id, 1000)[0]


def by_id(cache: Cache, event_id: str) -> Any:
    return next(m for m in rows(cache) if m.event_id == event_id)


def test_edits_reactions_redactions_replies_threads(cache: Cache) -> None:
    sync(
        cache,
        {
            "timeline": {
                "events": [
                    msg("$1", "hello"),
                    msg("$2", "reply", **{"m.relates_to": {"m.in_reply_to": {"event_id": "$1"}}}),
                ]
            }
        },
    )
    sync(
        cache,
        {
            "timeline": {
                "events": [
                    edit("$e1", "$1", "hello, edited"),
                    edit("$e2", "$1", "not yours", sender="@b:x", ts=9),
                    react("$r1", "$1", "👍"),
                    react("$r2", "$1", "👍", sender=ME),
                    msg(
                        "$t1",
                        "thread reply",
                        **{"m.relates_to": {"rel_type": "m.thread", "event_id": "$1"}},
                    ),
                ]
            }
        },
    )
    first = by_id(cache, "$1")
    assert (first.body, first.edited) == ("hello, edited", True)
    assert first.reactions == {"👍": 2}
    assert first.my_reactions == ["👍"]
    assert (first.thread_count, first.thread_latest) == (1, "$t1")
    assert by_id(cache, "$2").reply_to == "$1"
    assert by_id(cache, "$t1").thread_root == "$1"
    assert [m.event_id for m in rows(cache)] == ["$1", "$2", "$t1"]  # edits/reactions are not rows
    # Redacting the edit and a reaction undoes them; redacting the message strips it.
    events = sync(
        cache, {"timeline": {"events": [redaction("$x1", "$e1"), redaction("$x2", "$r2")]}}
    )
    first = by_id(cache, "$1")
    assert (first.body, first.edited, first.reactions, first.my_reactions) == (
        "hello",
        False,
        {"👍": 1},
        [],
    )
    assert [type(e).__name__ for e in events] == ["MessageUpdated"]
    sync(cache, {"timeline": {"events": [redaction("$x3", "$1")]}})
    first = by_id(cache, "$1")
    assert first.redacted
    assert first.body == "(deleted)"
    assert first.content == {}
    assert first.reactions == {}


EVENTS = [
    msg("$1", "v0", ts=1),
    edit("$e1", "$1", "v1", ts=2),
    edit("$e2", "$1", "v2", ts=3),
    react("$r1", "$1", "👍"),
    react("$r2", "$1", "🎉", sender=ME),
    redaction("$x1", "$e2"),
    redaction("$x2", "$r1"),
]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.permutations(EVENTS), st.sampled_from([1, 2, 3, len(EVENTS)]), st.booleans())
def test_any_arrival_order_gives_the_same_row(
    tmp_path_factory: pytest.TempPathFactory,
    order: list[dict[str, Any]],
    per_sync: int,
    seeded: bool,
) -> None:
    """In any order, in syncs of any size; the first sync into an empty cache
    takes the fresh-transaction path (no lookups of what it did not store
    itself), a cache that already holds relations and redactions does not."""
    c = Cache.open(tmp_path_factory.mktemp("o") / "c.db", secrets.token_hex(32), ME)
    if seeded:
        other = [msg("$o1", "other"), react("$o2", "$o1", "👍"), redaction("$o3", "$o2")]
        sync(c, {"timeline": {"events": other}}, room_id="!other:x")
    for i in range(0, len(order), per_sync):
        sync(c, {"timeline": {"events": order[i : i + per_sync]}})
    m = by_id(c, "$1")
    assert (m.body, m.edited, m.reactions, m.my_reactions, m.redacted) == (
        "v1",
        True,
        {"🎉": 1},
        ["🎉"],
        False,
    )
    c.close()


def test_room_fields_members_and_hero_names(cache: Cache) -> None:
    sync(
        cache,
        {
            "state": {
                "events": [
                    state(
                        "m.room.member",
                        {"membership": "join", "displayname": "Bobby"},
                        "@bob:x",
                        "@bob:x",
                    ),
                    state("m.room.avatar", {"url": "mxc://x/a"}),
                    state("m.room.join_rules", {"join_rule": "invite"}),
                    state("m.room.create", {"predecessor": {"room_id": "!old:x"}}),
                ]
            },
            "summary": {"m.heroes": ["@bob:x"], "m.joined_member_count": 2},
            "unread_notifications": {"notification_count": 3, "highlight_count": 1},
            "account_data": {
                "events": [{"type": "m.tag", "content": {"tags": {"m.favourite": {}}}}]
            },
        },
    )
    [room] = cache.rooms()
    assert room.name == "Bobby"  # heroes by display name
    assert (room.avatar_url, room.join_rule, room.predecessor) == ("mxc://x/a", "invite", "!old:x")
    assert (room.notification_count, room.highlight_count, room.tags) == (3, 1, ["m.favourite"])
    assert [(m.user_id, m.display_name) for m in cache.members(ROOM)] == [("@bob:x", "Bobby")]
    sync(
        cache, {"timeline": {"events": [state("m.room.tombstone", {"replacement_room": "!new:x"})]}}
    )
    assert cache.rooms()[0].successor == "!new:x"
    # A state change is a timeline row with a sentence for people.
    assert rows(cache)[-1].body == "@a:x upgraded this room"


def test_direct_chats_follow_m_direct(cache: Cache) -> None:
    sync(cache, {})
    sync(cache, {}, account_data={"events": [{"type": "m.direct", "content": {"@bob:x": [ROOM]}}]})
    assert (cache.rooms()[0].is_direct, cache.rooms()[0].direct_user) == (True, "@bob:x")
    sync(cache, {}, account_data={"events": [{"type": "m.direct", "content": {}}]})
    assert cache.rooms()[0].is_direct is False


def test_invite_leave_and_inviter(cache: Cache) -> None:
    sync(
        cache,
        {
            "invite_state": {
                "events": [
                    {
                        "type": "m.room.name",
                        "state_key": "",
                        "sender": "@h:x",
                        "content": {"name": "Party"},
                    },
                    {
                        "type": "m.room.member",
                        "state_key": ME,
                        "sender": "@h:x",
                        "content": {"membership": "invite"},
                    },
                ]
            }
        },
        section="invite",
    )
    [room] = cache.rooms()
    assert (room.membership, room.inviter, room.name) == ("invite", "@h:x", "Party")
    sync(cache, {}, section="leave")
    assert cache.rooms() == []  # left rooms are not listed


def test_unread_follows_the_own_read_receipt(cache: Cache) -> None:
    sync(
        cache,
        {
            "timeline": {
                "events": [
                    msg("$1", "a"),
                    msg("$2", "b"),
                    msg("$3", "mine", sender=ME),
                    msg("$4", "c"),
                ]
            },
            "unread_notifications": {"notification_count": 7},
        },
    )
    assert cache.rooms()[0].unread_count == 7  # no receipt yet: the server's count
    receipt = {"type": "m.receipt", "content": {"$2": {"m.read": {ME: {"ts": 10}}}}}
    sync(cache, {"ephemeral": {"events": [receipt]}})
    room = cache.rooms()[0]
    assert (room.unread_count, room.read_receipt) == (1, "$2")  # $4 only; $3 is ours
    sync(
        cache,
        {
            "ephemeral": {
                "events": [{"type": "m.receipt", "content": {"$4": {"m.read": {ME: {"ts": 20}}}}}]
            }
        },
    )
    assert cache.rooms()[0].unread_count == 0
    sync(
        cache,
        {"account_data": {"events": [{"type": "m.fully_read", "content": {"event_id": "$4"}}]}},
    )
    assert cache.rooms()[0].fully_read == "$4"


_RECEIPT_TARGETS = ["$1", "$2", "$3", "$4", "$gone", "$gone2"]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(_RECEIPT_TARGETS),
            st.sampled_from(["m.read", "m.read.private"]),
            st.integers(1, 3),
        ),
        min_size=1,
        max_size=4,
    )
)
# Two receipts the cache cannot place, at the same time: the tie-break decides.
@example([("$gone", "m.read.private", 2), ("$gone2", "m.read", 2)])
@example([("$gone", "m.read", 1), ("$gone2", "m.read.private", 3)])
def test_own_receipts_in_a_first_sync_give_what_a_later_sync_gives(
    tmp_path_factory: pytest.TempPathFactory, receipts: list[tuple[str, str, int]]
) -> None:
    """A new cache's first sync finds the newest own receipt and the unread
    count from what it stored in memory; a cache that already holds rows
    and receipts reads them from the tables: the same answer, ties included."""
    timeline = [msg("$1", "a"), msg("$2", "b"), msg("$3", "mine", sender=ME), msg("$4", "c")]
    ephemeral = [
        {"type": "m.receipt", "content": {target: {kind: {ME: {"ts": ts}}}}}
        for target, kind, ts in receipts
    ]
    room = {
        "timeline": {"events": timeline},
        "ephemeral": {"events": ephemeral},
        "unread_notifications": {"notification_count": 7},
    }
    seen = []
    for seeded in (False, True):
        c = Cache.open(tmp_path_factory.mktemp("r") / "c.db", secrets.token_hex(32), ME)
        if seeded:
            other = {
                "timeline": {"events": [msg("$o1", "other")]},
                "ephemeral": {
                    "events": [
                        {"type": "m.receipt", "content": {"$o1": {"m.read": {ME: {"ts": 1}}}}}
                    ]
                },
            }
            sync(c, other, room_id="!other:x")
        sync(c, room)
        info = next(r for r in c.rooms() if r.room_id == ROOM)
        seen.append((info.read_receipt, info.unread_count))
        c.close()
    assert seen[0] == seen[1]


def _page(cache: Cache, events: list[dict[str, Any]], end: str | None) -> tuple[int, bool]:
    gap = cache.newest_gap(ROOM)
    assert gap is not None
    items = [classify(ROOM, ClientEvent(**{"content": {}, **e})) for e in events]
    _, added, closed = cache.apply_backfill(gap, items, [], end)
    return added, closed


def test_limited_sync_leaves_a_gap_backfill_fills_it_in_order(cache: Cache) -> None:
    sync(
        cache,
        {
            "timeline": {
                "events": [msg("$10", "m10"), msg("$11", "m11")],
                "limited": True,
                "prev_batch": "t1",
            }
        },
    )
    _, gaps = cache.messages(ROOM, 50)
    assert [(g.after, g.before) for g in gaps] == [(None, "$10")]
    # History comes newest first, in pages.
    assert _page(cache, [msg("$9", "m9"), msg("$8", "m8")], "t2") == (2, False)
    assert _page(cache, [msg("$7", "m7"), state("m.room.create", {}, event_id="$0")], None) == (
        2,
        True,
    )
    assert [m.event_id for m in rows(cache)] == ["$0", "$7", "$8", "$9", "$10", "$11"]
    assert cache.newest_gap(ROOM) is None
    # A limited sync after an outage leaves a gap in the middle, closed when
    # backfill meets known history, without duplicates.
    sync(cache, {"timeline": {"events": [msg("$20", "m20")], "limited": True, "prev_batch": "t3"}})
    gap = cache.newest_gap(ROOM)
    assert gap is not None
    assert (gap.after_id, gap.before_id) == ("$11", "$20")
    assert _page(cache, [msg("$13", "m13"), msg("$12", "m12"), msg("$11", "m11")], "t4") == (
        2,
        True,
    )
    assert [m.event_id for m in rows(cache)][-5:] == ["$10", "$11", "$12", "$13", "$20"]


def test_new_room_with_its_create_event_has_no_gap(cache: Cache) -> None:
    sync(
        cache,
        {"timeline": {"events": [state("m.room.create", {}), msg("$1", "hi")], "prev_batch": "t0"}},
    )
    assert cache.newest_gap(ROOM) is None
