"""Timeline classification, the redaction algorithm and relation aggregation."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from skiffyd.core.timeline import Relation, aggregate, classify, redact_content, summarize
from skiffyd.core.wire import ClientEvent, UnsignedData

ME = "@me:x"


def ev(
    event_id: str, type_: str = "m.room.message", sender: str = "@a:x", **content: Any
) -> ClientEvent:
    return ClientEvent(
        type=type_, event_id=event_id, sender=sender, origin_server_ts=1, content=content
    )


def test_message_reply_and_thread_fallback() -> None:
    reply = classify(
        "!r",
        ev(
            "$2",
            msgtype="m.text",
            body="re",
            **{"m.relates_to": {"m.in_reply_to": {"event_id": "$1"}}},
        ),
    )
    assert reply is not None
    assert reply.visible
    assert reply.reply_to == "$1"
    assert reply.relation is None
    thread = classify(
        "!r",
        ev(
            "$3",
            msgtype="m.text",
            body="in thread",
            **{
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": "$root",
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": "$2"},
                }
            },
        ),
    )
    assert thread is not None
    assert thread.visible
    assert thread.thread_root == "$root"
    assert thread.reply_to is None  # a thread fallback is not a real reply
    assert thread.relation is not None
    assert thread.relation.rel_type == "m.thread"


def test_edit_and_reaction_are_not_rows() -> None:
    edit = classify(
        "!r",
        ev(
            "$e",
            msgtype="m.text",
            body="* new",
            **{
                "m.new_content": {"msgtype": "m.text", "body": "new"},
                "m.relates_to": {"rel_type": "m.replace", "event_id": "$1"},
            },
        ),
    )
    assert edit is not None
    assert not edit.visible
    assert edit.relation is not None
    assert edit.relation.new_content == {
        "msgtype": "m.text",
        "body": "new",
    }
    reaction = classify(
        "!r",
        ev(
            "$x",
            "m.reaction",
            **{"m.relates_to": {"rel_type": "m.annotation", "event_id": "$1", "key": "👍"}},
        ),
    )
    assert reaction is not None
    assert not reaction.visible
    assert reaction.relation is not None
    assert reaction.relation.key == "👍"
    assert classify("!r", ev("$y", "m.reaction")) is None  # no relation: nothing to keep


def test_redaction_both_room_versions() -> None:
    old = ClientEvent(type="m.room.redaction", event_id="$r", sender="@a:x", redacts="$1")
    new = ev("$r2", "m.room.redaction", redacts="$2")
    assert classify("!r", old).redacts == "$1"  # type: ignore[union-attr]
    assert classify("!r", new).redacts == "$2"  # type: ignore[union-attr]


def test_server_redacted_event_is_marked() -> None:
    e = ClientEvent(
        type="m.room.message",
        event_id="$1",
        sender="@a:x",
        content={},
        unsigned=UnsignedData(redacted_because={"type": "m.room.redaction"}),
    )
    item = classify("!r", e)
    assert item is not None
    assert item.redacted
    assert item.visible


def test_redact_content_keeps_only_what_the_spec_keeps() -> None:
    assert redact_content("m.room.message", {"body": "secret", "msgtype": "m.text"}) == {}
    assert redact_content("m.room.member", {"membership": "join", "displayname": "A"}) == {
        "membership": "join"
    }
    assert redact_content("m.room.create", {"creator": "@a:x", "room_version": "11"}) == {
        "creator": "@a:x",
        "room_version": "11",
    }
    assert redact_content("m.room.join_rules", {"join_rule": "public", "x": 1}) == {
        "join_rule": "public"
    }


def rel(event_id: str, rel_type: str, sender: str = "@a:x", ts: int = 1, **kw: Any) -> Relation:
    return Relation(event_id=event_id, target="$1", rel_type=rel_type, sender=sender, ts=ts, **kw)


def test_latest_valid_edit_wins_and_foreign_edits_are_ignored() -> None:
    d = aggregate(
        event_type="m.room.message",
        sender="@a:x",
        content={"msgtype": "m.text", "body": "v0"},
        redacted=False,
        relations=[
            rel("$e1", "m.replace", ts=2, new_content={"msgtype": "m.text", "body": "v1"}),
            rel("$e2", "m.replace", ts=5, new_content={"msgtype": "m.text", "body": "v2"}),
            rel("$e3", "m.replace", sender="@mallory:x", ts=9, new_content={"body": "evil"}),
        ],
        own_user_id=ME,
    )
    assert d.edited
    assert d.content["body"] == "v2"


def test_reactions_count_distinct_senders_and_mine() -> None:
    d = aggregate(
        event_type="m.room.message",
        sender="@a:x",
        content={"body": "hi"},
        redacted=False,
        relations=[
            rel("$r1", "m.annotation", sender="@b:x", key="👍"),
            rel("$r2", "m.annotation", sender=ME, key="👍"),
            rel("$r3", "m.annotation", sender=ME, key="🎉"),
            rel("$r4", "m.annotation", sender="@b:x", key="👍"),  # duplicate: once
        ],
        own_user_id=ME,
    )
    assert d.reactions == {"🎉": 1, "👍": 2}
    assert d.my_reactions == ["🎉", "👍"]


def test_thread_summary_and_redacted_root() -> None:
    rels = [rel("$t1", "m.thread", ts=3), rel("$t2", "m.thread", ts=7)]
    d = aggregate(
        event_type="m.room.message",
        sender="@a:x",
        content={"body": "root"},
        redacted=False,
        relations=rels,
        own_user_id=ME,
    )
    assert (d.thread_count, d.thread_latest) == (2, "$t2")
    gone = aggregate(
        event_type="m.room.message",
        sender="@a:x",
        content={"body": "root"},
        redacted=True,
        relations=rels,
        own_user_id=ME,
    )
    assert gone.redacted
    assert gone.content == {}
    assert gone.reactions == {}


@settings(max_examples=200)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["m.replace", "m.annotation", "m.thread"]),
            st.sampled_from(["@a:x", "@b:x", ME]),
            st.integers(0, 5),
            st.sampled_from(["👍", "🎉"]),
        ),
        max_size=12,
    ),
    st.randoms(use_true_random=False),
)
def test_aggregation_does_not_depend_on_order(
    spec: list[tuple[str, str, int, str]], rnd: Any
) -> None:
    relations = [
        rel(
            f"$e{i}",
            rel_type,
            sender=sender,
            ts=ts,
            key=key if rel_type == "m.annotation" else None,
            new_content={"body": f"edit {i}"} if rel_type == "m.replace" else None,
        )
        for i, (rel_type, sender, ts, key) in enumerate(spec)
    ]
    shuffled = list(relations)
    rnd.shuffle(shuffled)
    kwargs: dict[str, Any] = {
        "event_type": "m.room.message",
        "sender": "@a:x",
        "content": {"body": "orig"},
        "redacted": False,
        "own_user_id": ME,
    }
    assert aggregate(relations=relations, **kwargs) == aggregate(relations=shuffled, **kwargs)


@pytest.mark.parametrize(
    ("type_", "state_key", "content", "prev", "expected"),
    [
        ("m.room.member", "@b:x", {"membership": "join"}, None, "@b:x joined"),
        (
            "m.room.member",
            "@b:x",
            {"membership": "leave"},
            {"membership": "join"},
            "@a:x removed @b:x",
        ),
        ("m.room.member", "@a:x", {"membership": "leave"}, {"membership": "join"}, "@a:x left"),
        ("m.room.member", "@b:x", {"membership": "invite"}, None, "@a:x invited @b:x"),
        (
            "m.room.member",
            "@a:x",
            {"membership": "join", "displayname": "Ann"},
            {"membership": "join", "displayname": "A"},
            "A changed their display name to Ann",
        ),
        ("m.room.name", "", {"name": "Hall"}, None, "@a:x changed the room name to Hall"),
        ("m.room.topic", "", {"topic": "t"}, None, "@a:x changed the topic to t"),
    ],
)
def test_state_summaries(
    type_: str, state_key: str, content: dict[str, Any], prev: dict[str, Any] | None, expected: str
) -> None:
    text = summarize(
        event_type=type_,
        sender="@a:x",
        state_key=state_key,
        content=content,
        prev_content=prev,
        redacted=False,
    )
    assert text == expected
