"""Messages both ways, against a peer nobody here wrote (matrix-nio's AsyncClient)."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import pytest

from skiffyd.devenv.wait import WaitTimeout, wait_for

if TYPE_CHECKING:
    from skiffyd.devenv.instance import SkiffyInstance, TailProcess
    from tests.conftest import Ready

pytestmark = pytest.mark.integration

MESSAGE_FIELDS = {"event_id", "room_id", "sender", "body", "ts", "status", "txn_id"}
ROOM_FIELDS = {"room_id", "name", "topic", "is_encrypted", "member_count", "unread_count"}


def unique(label: str) -> str:
    return f"{label}-{secrets.token_hex(6)}"


def wait_messages(
    inst: SkiffyInstance,
    room_id: str,
    bodies: list[str],
    *,
    status: str | None = "sent",
    timeout: float = 30,
) -> list[dict[str, Any]]:
    """Poll `skiffyd messages` until all ``bodies`` are there (with ``status``)."""

    def probe() -> list[dict[str, Any]] | None:
        msgs = inst.messages(room_id, limit=500)
        have = {m["body"] for m in msgs if status is None or m["status"] == status}
        return msgs if set(bodies) <= have else None

    return wait_for(
        probe,
        timeout=timeout,
        interval=0.2,
        what=f"{len(bodies)} messages in `skiffyd messages`",
        describe=inst.log_tail,
    )


def message_events(tail: TailProcess) -> list[dict[str, Any]]:
    return [e for e in tail.events() if e.get("type") == "message_added"]


def body_of(event: dict[str, Any]) -> str | None:
    message = event.get("message")
    body = message.get("body") if isinstance(message, dict) else None
    return body if isinstance(body, str) else None


def subscribe(ready: Ready, room_id: str, tail: TailProcess) -> None:
    """Make sure ``tail`` is subscribed: send warm-ups until one is printed.

    A tail started a moment ago may not be connected yet; the contract is that
    it misses nothing published after it is, so wait for that point.
    """

    def probe() -> bool:
        if not tail.alive():
            raise AssertionError(f"skiffyd tail exited: {tail.stderr()}")
        ready.peer.send_text(room_id, unique("warm-up"))
        try:
            wait_for(
                lambda: any(
                    (body_of(e) or "").startswith("warm-up-") for e in message_events(tail)
                ),
                timeout=5,
                interval=0.1,
            )
        except WaitTimeout:
            return False
        return True

    wait_for(probe, timeout=60, interval=0.1, what="`skiffyd tail` to print a warm-up")


def test_room_is_listed_with_the_contract_fields(ready: Ready) -> None:
    room_id = ready.shared_room("Listing room", "the topic")

    def joined() -> dict[str, Any] | None:
        for room in ready.daemon.rooms():
            if room["room_id"] == room_id and room["member_count"] == 2:
                return room
        return None

    room = wait_for(
        joined, timeout=30, what="the room with 2 members", describe=ready.daemon.log_tail
    )
    assert set(room) >= ROOM_FIELDS
    assert room["name"] == "Listing room"
    assert room["topic"] == "the topic"
    assert room["is_encrypted"] is False
    assert isinstance(room["unread_count"], int)


def test_unread_count_counts_the_peers_messages(ready: Ready) -> None:
    room_id = ready.shared_room("Unread room")
    bodies = [unique("unread") for _ in range(3)]
    for body in bodies:
        ready.peer.send_text(room_id, body)
    wait_messages(ready.daemon, room_id, bodies)

    def unread() -> int | None:
        room = next(r for r in ready.daemon.rooms() if r["room_id"] == room_id)
        return room["unread_count"] if room["unread_count"] >= 3 else None

    wait_for(unread, timeout=30, what="unread_count >= 3")


def test_peer_messages_arrive_in_order_and_are_published(ready: Ready) -> None:
    room_id = ready.shared_room("Order room")
    with ready.daemon.tail() as tail:
        subscribe(ready, room_id, tail)
        bodies = [unique(f"from-peer-{i}") for i in range(10)]
        event_ids = [ready.peer.send_text(room_id, body) for body in bodies]

        msgs = wait_messages(ready.daemon, room_id, bodies)
        ours = [m for m in msgs if m["body"] in bodies]
        assert [m["body"] for m in ours] == bodies, "not in the peer's order"
        assert [m["event_id"] for m in ours] == event_ids
        for m in ours:
            assert set(m) >= MESSAGE_FIELDS
            assert m["room_id"] == room_id
            assert m["sender"] == ready.peer.user_id
            assert m["status"] == "sent"
            assert isinstance(m["ts"], int)
            assert m["ts"] > 1_000_000_000_000  # milliseconds

        def published() -> list[dict[str, Any]] | None:
            events = [e for e in message_events(tail) if body_of(e) in bodies]
            return events if len(events) >= len(bodies) else None

        events = wait_for(published, timeout=30, what="message_added events in `skiffyd tail`")
        assert [body_of(e) for e in events] == bodies
        assert [e["message"]["event_id"] for e in events] == event_ids

        every = tail.events()
        for e in every:
            assert "seq" in e, e
            assert "type" in e, e
        logged = [e["seq"] for e in every if e["type"] != "session_state"]
        assert logged == sorted(set(logged)), "seqs are not strictly increasing"
        assert logged == list(range(logged[0], logged[0] + len(logged))), "a gap in the seqs"


def test_messages_limit_gives_the_latest_oldest_first(ready: Ready) -> None:
    room_id = ready.shared_room("Limit room")
    bodies = [unique(f"limit-{i}") for i in range(5)]
    for body in bodies:
        ready.peer.send_text(room_id, body)
    wait_messages(ready.daemon, room_id, bodies)
    latest = ready.daemon.messages(room_id, limit=2)
    assert [m["body"] for m in latest] == bodies[-2:]


def test_send_returns_a_txn_id_and_the_peer_sees_it_exactly_once(ready: Ready) -> None:
    room_id = ready.shared_room("Send room")
    bodies = [unique(f"from-skiffy-{i}") for i in range(5)]
    txn_ids = [ready.daemon.send(room_id, body) for body in bodies]
    assert len(set(txn_ids)) == len(txn_ids)

    msgs = wait_messages(ready.daemon, room_id, bodies, timeout=60)
    ours = [m for m in msgs if m["body"] in bodies]
    assert [m["body"] for m in ours] == bodies  # one row each, in send order
    assert [m["txn_id"] for m in ours] == txn_ids
    assert all(m["event_id"] and m["sender"] == ready.account.user_id for m in ours)

    wait_for(
        lambda: ready.daemon.status()["pending_outbox"] == 0,
        timeout=30,
        what="an empty outbox",
    )
    seen = ready.peer.wait_for_bodies(room_id, bodies)
    for body in bodies:
        assert sum(m.body == body for m in seen) == 1, "not delivered exactly once"
    assert [m.body for m in seen if m.body in bodies] == bodies, "not in send order"
    by_body = {m.body: m.event_id for m in seen}
    assert [m["event_id"] for m in ours] == [by_body[b] for b in bodies]

    # The local echo was reconciled with the synced event: still one row each
    # after further syncs.
    syncs = ready.daemon.status()["syncs"]
    ready.peer.send_text(room_id, unique("nudge"))
    wait_for(lambda: ready.daemon.status()["syncs"] > syncs, timeout=30, what="another sync")
    again = [m for m in ready.daemon.messages(room_id, limit=500) if m["body"] in bodies]
    assert [m["body"] for m in again] == bodies


def test_send_shows_a_pending_echo_at_once(ready: Ready) -> None:
    room_id = ready.shared_room("Echo room")
    body = unique("echo")
    txn_id = ready.daemon.send(room_id, body)
    # Straight from the cache: the row exists as soon as send returned.
    rows = [m for m in ready.daemon.messages(room_id, limit=500) if m["txn_id"] == txn_id]
    assert len(rows) == 1
    assert rows[0]["body"] == body
    assert rows[0]["status"] in ("pending", "sent")
