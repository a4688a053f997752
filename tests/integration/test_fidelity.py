"""Everything a room shows, end to end: a real Synapse, a matrix-nio peer, the CLI's JSON."""

from __future__ import annotations

import json
import secrets
from typing import TYPE_CHECKING, Any

import pytest

from skiffyd.devenv.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from skiffyd.devenv.instance import SkiffyInstance
    from tests.conftest import Ready

pytestmark = pytest.mark.integration


def unique(label: str) -> str:
    return f"{label}-{secrets.token_hex(5)}"


def row(inst: SkiffyInstance, room_id: str, event_id: str) -> dict[str, Any] | None:
    return next((m for m in inst.messages(room_id, limit=1000) if m["event_id"] == event_id), None)


def until(inst: SkiffyInstance, what: str, probe: Callable[[], Any], timeout: float = 30) -> Any:
    return wait_for(probe, timeout=timeout, interval=0.2, what=what, describe=inst.log_tail)


def test_edits_reactions_redactions_replies_threads_in_cli_json(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = ready.shared_room("Fidelity")
    original = unique("original")
    root = peer.send_text(room_id, original)
    edited = unique("edited")
    peer.edit(room_id, root, edited)
    reaction = peer.react(room_id, root, "👍")
    reply = peer.reply(room_id, root, unique("reply"))
    thread = peer.thread_reply(room_id, root, unique("thread"))
    notice = peer.send(room_id, "m.room.message", {"msgtype": "m.notice", "body": "a notice"})
    emote = peer.send(
        room_id,
        "m.room.message",
        {
            "msgtype": "m.emote",
            "body": "waves",
            "format": "org.matrix.custom.html",
            "formatted_body": "<b>waves</b>",
        },
    )
    image = peer.send(
        room_id,
        "m.room.message",
        {
            "msgtype": "m.image",
            "body": "cat.png",
            "url": "mxc://localhost/cat",
            "info": {"mimetype": "image/png"},
        },
    )

    m = until(
        inst,
        "the edit, reaction and thread on the root",
        lambda: (
            (r := row(inst, room_id, root))
            and r["edited"]
            and r["reactions"]
            and r["thread_count"]
            and r
        ),
    )
    assert m["body"] == edited
    assert m["reactions"] == {"👍": 1}
    assert m["my_reactions"] == []
    assert (m["thread_count"], m["thread_latest"]) == (1, thread)
    assert m["msgtype"] == "m.text"
    assert m["redacted"] is False
    assert row(inst, room_id, reply)["reply_to"] == root  # type: ignore[index]
    assert row(inst, room_id, thread)["thread_root"] == root  # type: ignore[index]
    assert row(inst, room_id, notice)["msgtype"] == "m.notice"  # type: ignore[index]
    e = row(inst, room_id, emote)
    assert e is not None
    assert (e["msgtype"], e["format"], e["formatted_body"]) == (
        "m.emote",
        "org.matrix.custom.html",
        "<b>waves</b>",
    )
    img = row(inst, room_id, image)
    assert img is not None
    assert img["msgtype"] == "m.image"
    assert img["content"]["url"] == "mxc://localhost/cat"
    ids = [x["event_id"] for x in inst.messages(room_id, limit=1000)]
    assert reaction not in ids, "a reaction is not a timeline row"

    peer.redact(room_id, reaction)
    until(inst, "the reaction undone", lambda: row(inst, room_id, root)["reactions"] == {})  # type: ignore[index]
    peer.redact(room_id, root, reason="oops")
    gone = until(
        inst, "the root redacted", lambda: (r := row(inst, room_id, root)) and r["redacted"] and r
    )
    assert gone["body"] == "(deleted)"
    assert gone["content"] == {}
    assert original not in json.dumps(inst.messages(room_id, limit=1000))


def test_renames_members_leaves_and_receipts(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = ready.shared_room("Before", topic="old topic")
    peer.put_state(room_id, "m.room.name", {"name": "After"})
    peer.put_state(room_id, "m.room.topic", {"topic": "new topic"})
    room = until(
        inst,
        "the rename",
        lambda: next(
            (
                r
                for r in inst.rooms()
                if r["room_id"] == room_id and r["name"] == "After" and r["topic"] == "new topic"
            ),
            None,
        ),
    )
    assert room["member_count"] == 2
    bodies = [m["body"] for m in inst.messages(room_id, limit=1000)]
    assert any("changed the room name to After" in b for b in bodies)
    assert any(b.endswith(" joined") for b in bodies)

    members = json.loads(inst.cli_ok("members", room_id, "--json"))
    assert {m["user_id"] for m in members} == {ready.account.user_id, peer.user_id}
    assert all(m["membership"] == "join" for m in members)

    # Unread counts follow the account's read receipt.
    sent = [peer.send_text(room_id, unique("unread")) for _ in range(3)]
    until(
        inst,
        "three unread",
        lambda: next(r for r in inst.rooms() if r["room_id"] == room_id)["unread_count"] == 3,
    )

    # The account reads up to the second message with its own client (a receipt
    # from another of its devices): the count follows.
    from skiffyd.devenv.peer import Peer

    own = Peer.logged_in(ready.synapse.base_url, ready.account.user_id, ready.account.password)
    try:
        own.send(room_id, "m.room.message", {"msgtype": "m.text", "body": "from my phone"})
        own._run(
            own.client.room_read_markers(room_id, fully_read_event=sent[1], read_event=sent[1])
        )
    finally:
        own.close()
    room = until(
        inst,
        "the receipt",
        lambda: (
            (r := next(r for r in inst.rooms() if r["room_id"] == room_id))["read_receipt"]
            == sent[1]
            and r
        ),
    )
    assert room["unread_count"] == 1
    assert room["fully_read"] == sent[1]

    # The peer leaves; the member list and the timeline say so.
    peer._run(peer.client.room_leave(room_id))
    until(
        inst,
        "the peer's leave",
        lambda: all(
            m["user_id"] != peer.user_id
            for m in json.loads(inst.cli_ok("members", room_id, "--json"))
        ),
    )
    assert any(b.endswith(" left") for b in (m["body"] for m in inst.messages(room_id, limit=1000)))


def test_invite_shows_inviter_and_leave_removes_the_room(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = peer.create_room("Invitation", "come in", invite=[ready.account.user_id])
    invite = until(
        inst,
        "the invite",
        lambda: next(
            (r for r in inst.rooms() if r["room_id"] == room_id and r["membership"] == "invite"),
            None,
        ),
    )
    assert invite["inviter"] == peer.user_id
    assert invite["name"] == "Invitation"
    inst.cli_ok("join", room_id)
    until(
        inst,
        "the join",
        lambda: any(r["room_id"] == room_id and r["membership"] == "join" for r in inst.rooms()),
    )
    peer.kick(room_id, ready.account.user_id, reason="bye")
    until(inst, "the room gone", lambda: all(r["room_id"] != room_id for r in inst.rooms()))


def test_backfill_hundreds_sent_before_joining(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = peer.create_room("History", "old stuff")
    peer.put_state(room_id, "m.room.history_visibility", {"history_visibility": "shared"})
    history = [f"old-{i:03d}" for i in range(300)]
    for body in history:
        peer.send_text(room_id, body)
    peer.invite(room_id, ready.account.user_id)
    inst.join_invited(room_id)
    latest = unique("latest")
    peer.send_text(room_id, latest)
    until(
        inst,
        "the latest message",
        lambda: any(m["body"] == latest for m in inst.messages(room_id, limit=50)),
    )
    have = {m["body"] for m in inst.messages(room_id, limit=1000)}
    assert not set(history) <= have, "the initial sync should not carry all history"

    result = json.loads(inst.cli_ok("backfill", room_id, "--limit", "1000", "--json"))
    assert result["reached_start"] is True
    again = json.loads(inst.cli_ok("backfill", room_id, "--json"))
    assert (again["added"], again["reached_start"]) == (0, True)

    rows = inst.messages(room_id, limit=1000)
    bodies = [m["body"] for m in rows if m["body"].startswith("old-")]
    assert bodies == history  # all of it, in order, once
    ids = [m["event_id"] for m in rows]
    assert len(ids) == len(set(ids))
    assert rows[0]["type"] == "m.room.create"
