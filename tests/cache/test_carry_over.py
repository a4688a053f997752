"""Carrying an ended session's outbox into the account's next session (a new
device, a new cache): the pure rule, and the two real encrypted caches."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ipc_schema import MessageAdded, OutboxUpdated
from skiffyd.cache import Cache
from skiffyd.cache.store import CARRIED_NO_ROOM, CacheReader
from skiffyd.core.outbox import CARRIED_MAYBE_SENT, OutboxItem, carry_over, heads
from skiffyd.core.sync import RoomSync, SyncPlan
from tests.cache.test_store import _send

if TYPE_CHECKING:
    from pathlib import Path

ME = "@me:x"
A, B, GONE = "!a:x", "!b:x", "!gone:x"


def _item(seq: int, room: str, kind: str = "event", **kw: Any) -> OutboxItem:
    fields: dict[str, Any] = {
        "txn_id": f"t{seq}",
        "event_type": None if kind != "event" else "m.room.message",
        "content": {"body": f"m{seq}"},
        "state": "queued",
    } | kw
    return OutboxItem(seq=seq, room_id=room, kind=kind, **fields)  # type: ignore[arg-type]


def test_only_the_oldest_item_of_a_room_is_in_doubt() -> None:
    items = [
        _item(1, A, attempts=3, last_error="M_UNKNOWN_TOKEN"),
        _item(2, A),
        _item(3, B, "receipt", target="$read", event_type=None),
        _item(4, B),
        _item(5, B, "redaction", target="t4", event_type=None, content={}),
        _item(6, "!c:x", state="failed", last_error="M_FORBIDDEN"),
        _item(7, "!c:x"),
    ]
    out = {i.txn_id: i for i in carry_over(reversed(items), lambda ref: None)}
    assert [i.txn_id for i in carry_over(items, lambda ref: None)] == [
        f"t{n}" for n in (1, 2, 4, 5, 6, 7)
    ]
    # A's oldest may have reached the server: the user decides.
    assert (out["t1"].state, out["t1"].last_error) == ("failed", CARRIED_MAYBE_SENT)
    assert out["t1"].attempts == 0
    # Never in flight: as they were.
    assert out["t2"].state == out["t4"].state == out["t5"].state == out["t7"].state == "queued"
    # A read receipt stays behind (the new session's sync has the markers),
    # but it was B's oldest: the message behind it was never in flight.
    assert "t3" not in out
    # A permanent failure keeps its reason.
    assert (out["t6"].state, out["t6"].last_error) == ("failed", "M_FORBIDDEN")
    # What waits behind a failed item stays held there (FIFO per room).
    assert [i.txn_id for i in heads(out.values())] == ["t4"]


def test_references_to_delivered_items_become_event_ids() -> None:
    delivered = {"t0": "$sent"}
    items = [
        _item(1, A, content={"m.relates_to": {"m.in_reply_to": {"event_id": "t0"}}}),
        _item(2, A, "redaction", target="t0", event_type=None, content={}),
        _item(
            3, A, target="t1", content={"m.relates_to": {"rel_type": "m.replace", "event_id": "t1"}}
        ),
    ]
    out = carry_over(items, delivered.get)
    assert out[0].content == {"m.relates_to": {"m.in_reply_to": {"event_id": "$sent"}}}
    assert out[1].target == "$sent"
    # t1 is carried itself: resolved once it has been sent.
    assert (out[2].target, out[2].content["m.relates_to"]["event_id"]) == ("t1", "t1")
    assert items[0].content["m.relates_to"]["m.in_reply_to"]["event_id"] == "t0"  # not mutated


def _joined(cache: Cache, *rooms: str) -> None:
    cache.apply_sync(
        SyncPlan(next_batch="s", rooms=[RoomSync(r, {"membership": "join"}) for r in rooms])
    )


def test_the_outbox_goes_from_the_old_cache_to_the_new_one(tmp_path: Path) -> None:
    old_key, new_key = secrets.token_hex(32), secrets.token_hex(32)
    old = Cache.open(tmp_path / "old.db", old_key, ME)
    _joined(old, A, B, GONE)
    _send(old, "delivered before", "ta0", A)
    old.mark_sent("ta0", "$a0")
    _send(old, "first", "ta1", A)
    _send(old, "second", "ta2", A)
    old.enqueue(
        room_id=A,
        txn_id="ta3",
        kind="redaction",
        event_type=None,
        content={},
        target="ta0",
        ts=1,
        echo=False,
    )
    _send(old, "to a room left meanwhile", "tg1", GONE)
    old.enqueue(
        room_id=B,
        txn_id="rb",
        kind="receipt",
        event_type=None,
        content={},
        target="$read",
        ts=1,
        echo=False,
    )
    assert old.unsent_messages() == 4  # a read receipt is no message
    old.close()

    reader = CacheReader.open(tmp_path / "old.db", old_key)
    carried = reader.carry_out()
    reader.close()
    assert [(i.txn_id, echo) for i, echo in carried] == [
        ("ta1", True),
        ("ta2", True),
        ("ta3", False),
        ("tg1", True),
    ]

    new = Cache.open(tmp_path / "new.db", new_key, ME)
    try:
        new.stash_carried(carried)
        # Counted as pending from the login on, before the first sync moves them.
        assert new.unsent_messages() == new.outbox_count() == 4
        assert new.outbox_items() == []
        _joined(new, A, B)  # the first sync: the account is no longer in GONE
        events = new.take_carried(now_ms=99)
        assert new.take_carried(now_ms=100) == []  # moved, not copied
        assert new.unsent_messages() == new.outbox_count() == 4

        items = {i.txn_id: i for i in new.outbox_items()}
        assert (items["ta1"].state, items["ta1"].last_error) == ("failed", CARRIED_MAYBE_SENT)
        assert items["ta2"].state == items["ta3"].state == "queued"
        assert items["ta3"].target == "$a0"  # the old cache knew what ta0 became
        assert (items["tg1"].state, items["tg1"].last_error) == ("failed", CARRIED_NO_ROOM)
        assert "rb" not in items  # read receipts stay behind
        # Local echoes in A, statuses as their items; none in a room not joined.
        rows = new.messages(A, 10)[0]
        assert [(m.txn_id, m.body, m.status) for m in rows] == [
            ("ta1", "first", "failed"),
            ("ta2", "second", "pending"),
        ]
        assert not new.has_room(GONE)
        # UIs hear of it: every item, and each echo.
        updated = [e.item.txn_id for e in events if isinstance(e, OutboxUpdated)]
        assert sorted(updated) == ["ta1", "ta2", "ta3", "tg1"]
        assert [e.message.txn_id for e in events if isinstance(e, MessageAdded)] == ["ta1", "ta2"]
        # Sent later, the carried item leaves the outbox as any other.
        new.retry("ta1")
        new.mark_sent("ta1", "$a1")
        assert [m.status for m in new.messages(A, 10)[0]] == ["sent", "pending"]
    finally:
        new.close()


def test_a_cache_that_carried_in_and_never_synced_passes_it_on(tmp_path: Path) -> None:
    """A session that ended before its first sync still holds the stash:
    the next one gets it, in front of that session's own outbox."""
    k1, k2, k3 = (secrets.token_hex(32) for _ in range(3))
    first = Cache.open(tmp_path / "1.db", k1, ME)
    _joined(first, A)
    _send(first, "one", "t1", A)
    first.close()
    r = CacheReader.open(tmp_path / "1.db", k1)
    carried = r.carry_out()
    r.close()

    second = Cache.open(tmp_path / "2.db", k2, ME)
    second.stash_carried(carried)
    assert second.unsent_messages() == 1
    second.close()
    r = CacheReader.open(tmp_path / "2.db", k2)
    again = r.carry_out()
    r.close()
    assert [(i.txn_id, i.state, e) for i, e in again] == [("t1", "failed", True)]

    third = Cache.open(tmp_path / "3.db", k3, ME)
    try:
        third.stash_carried(again)
        _joined(third, A)
        third.take_carried(now_ms=1)
        assert [(i.txn_id, i.state) for i in third.outbox_items()] == [("t1", "failed")]
    finally:
        third.close()


_items = st.lists(
    st.tuples(
        st.sampled_from([A, B, "!c:x"]),
        st.sampled_from(["event", "redaction", "receipt"]),
        st.sampled_from(["queued", "failed"]),
        st.integers(0, 3),
    ),
    max_size=12,
)


@given(_items, st.randoms(use_true_random=False))
@settings(max_examples=300, deadline=None)
def test_carry_over_loses_nothing_and_doubts_at_most_one_item_per_room(
    spec: list[tuple[str, str, str, int]], rnd: Any
) -> None:
    items = [
        _item(
            n,
            room,
            kind,
            state=state,
            attempts=attempts,
            last_error="E" if state == "failed" else None,
        )
        for n, (room, kind, state, attempts) in enumerate(spec)
    ]
    shuffled = list(items)
    rnd.shuffle(shuffled)
    out = carry_over(shuffled, lambda ref: None)
    # Every message and redaction, once, in the order it was queued, whatever
    # order it was read in; no read receipt.
    kept = [i for i in items if i.kind != "receipt"]
    assert [i.txn_id for i in out] == [i.txn_id for i in kept]
    oldest = {}
    for i in items:
        oldest.setdefault(i.room_id, i)
    changed = [(a, b) for a, b in zip(kept, out, strict=True) if a.state != b.state]
    rooms = [b.room_id for _, b in changed]
    assert len(rooms) == len(set(rooms))  # at most one per room ...
    for before, after in changed:
        # ... its oldest, a queued message or redaction, now failed and in doubt.
        assert oldest[before.room_id] is before
        assert before.state == "queued"
        assert (after.state, after.last_error) == ("failed", CARRIED_MAYBE_SENT)
    # What goes out before the user decides was never in flight: in its room,
    # a read receipt came first.
    for head in heads(out):
        assert oldest[head.room_id].kind == "receipt"
