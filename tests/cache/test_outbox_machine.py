"""A hypothesis state machine over the outbox: the pure decisions plus the real cache.

Enqueue, deliver (the server may lose its answer), fail transiently or
permanently, retry, cancel, crash and reload, in any order. Invariants:
each item is sent under one txnId only and the server never holds two events
for it; per room, the server gets items in the order they were queued;
nothing is lost (every item is queued, failed, delivered or cancelled).
"""

from __future__ import annotations

import secrets
import shutil
import tempfile
from pathlib import Path
from typing import Any

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from skiffyd.cache import Cache
from skiffyd.core.outbox import Unresolved, heads, request_for
from skiffyd.core.sync import RoomSync, SyncPlan

ME = "@me:x"
ROOMS = ["!a:x", "!b:x", "!c:x"]


class FakeServer:
    """Idempotent per txnId, as Synapse is for one device."""

    def __init__(self) -> None:
        self.by_txn: dict[str, str] = {}
        self.timeline: dict[str, list[str]] = {r: [] for r in ROOMS}
        self.paths: dict[str, set[str]] = {}

    def put(self, room: str, txn: str, path: str) -> str:
        self.paths.setdefault(txn, set()).add(path)
        if txn not in self.by_txn:
            self.by_txn[txn] = f"$ev{len(self.by_txn)}"
            self.timeline[room].append(txn)
        return self.by_txn[txn]


class OutboxMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="obx"))
        self.key = secrets.token_hex(32)
        self.cache = Cache.open(self.dir / "c.db", self.key, ME)
        self.cache.apply_sync(
            SyncPlan(next_batch="s0", rooms=[RoomSync(r, {"membership": "join"}) for r in ROOMS])
        )
        self.server = FakeServer()
        self.queued_order: dict[str, list[str]] = {r: [] for r in ROOMS}
        self.cancelled: set[str] = set()
        self.n = 0

    def teardown(self) -> None:
        self.cache.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _items(self) -> list[Any]:
        return self.cache.outbox_items()

    @rule(room=st.sampled_from(ROOMS), kind=st.sampled_from(["message", "edit", "react"]))
    def enqueue(self, room: str, kind: str) -> None:
        self.n += 1
        txn = f"skf{self.n:04d}"
        target = None
        content: dict[str, Any] = {"msgtype": "m.text", "body": f"b{self.n}"}
        event_type = "m.room.message"
        mine = [t for t in self.queued_order[room] if t not in self.cancelled]
        if kind != "message" and mine:
            target = mine[-1]  # a txn id, or an event id once it was sent
            ref = self.server.by_txn.get(target, target)
            if kind == "edit":
                content = {
                    "msgtype": "m.text",
                    "body": "* e",
                    "m.new_content": {"body": "e"},
                    "m.relates_to": {"rel_type": "m.replace", "event_id": ref},
                }
            else:
                event_type = "m.reaction"
                content = {
                    "m.relates_to": {"rel_type": "m.annotation", "event_id": ref, "key": "k"}
                }
        self.cache.enqueue(
            room_id=room,
            txn_id=txn,
            kind="event",
            event_type=event_type,
            content=content,
            target=None,
            ts=self.n,
            echo=event_type == "m.room.message" and kind == "message",
        )
        self.queued_order[room].append(txn)

    def _send_head(self, room: str, *, answer: bool) -> str | None:
        head = next((h for h in heads(self._items()) if h.room_id == room), None)
        if head is None:
            return None
        try:
            req = request_for(head, self.cache.event_id_for_txn)
        except Unresolved:
            self.cache.mark_failed(head.txn_id, "never sent")
            return None
        assert head.txn_id in req.path
        event_id = self.server.put(room, head.txn_id, req.path)
        if answer:
            self.cache.mark_sent(head.txn_id, event_id)
        else:
            self.cache.record_attempt(head.txn_id, "SKIFFY_MATRIX_UNREACHABLE")
        return head.txn_id

    @rule(room=st.sampled_from(ROOMS))
    def deliver(self, room: str) -> None:
        self._send_head(room, answer=True)

    @rule(room=st.sampled_from(ROOMS))
    def answer_lost(self, room: str) -> None:
        self._send_head(room, answer=False)

    @rule(room=st.sampled_from(ROOMS))
    def fail_permanently(self, room: str) -> None:
        head = next((h for h in heads(self._items()) if h.room_id == room), None)
        if head is not None and head.txn_id not in self.server.by_txn:
            self.cache.mark_failed(head.txn_id, "403 M_FORBIDDEN")

    @precondition(lambda self: any(i.state == "failed" for i in self._items()))
    @rule(data=st.data())
    def retry(self, data: st.DataObject) -> None:
        failed = [i for i in self._items() if i.state == "failed"]
        self.cache.retry(data.draw(st.sampled_from(failed)).txn_id)

    @precondition(lambda self: bool(self._items()))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        item = data.draw(st.sampled_from(self._items()))
        if item.txn_id in self.server.by_txn:
            return  # the server has it: in flight at the moment of a crash; not cancellable
        before = {i.txn_id for i in self._items()}
        self.cache.cancel(item.txn_id)
        self.cancelled |= before - {i.txn_id for i in self._items()}

    @rule()
    def crash_and_reload(self) -> None:
        self.cache.close()
        self.cache = Cache.open(self.dir / "c.db", self.key, ME)

    @invariant()
    def one_event_per_txn_and_one_path(self) -> None:
        for txn, paths in self.server.paths.items():
            assert len(paths) == 1, f"{txn} was sent under different requests"
        for room, txns in self.server.timeline.items():
            assert len(txns) == len(set(txns)), room

    @invariant()
    def order_per_room(self) -> None:
        for room, txns in self.server.timeline.items():
            expected = [t for t in self.queued_order[room] if t in set(txns)]
            assert txns == expected, room

    @invariant()
    def nothing_lost(self) -> None:
        pending = {i.txn_id for i in self._items()}
        for room in ROOMS:
            for txn in self.queued_order[room]:
                assert txn in pending or txn in self.server.by_txn or txn in self.cancelled, txn

    @invariant()
    def at_most_one_head_per_room(self) -> None:
        hs = heads(self._items())
        assert len({h.room_id for h in hs}) == len(hs)


OutboxMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
TestOutboxMachine = OutboxMachine.TestCase
