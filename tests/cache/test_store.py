"""The encrypted cache, on a real SQLite3MC file."""

from __future__ import annotations

import secrets
from typing import TYPE_CHECKING, Any

import apsw
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ipc_schema import MessageAdded, MessageRemoved, MessageUpdated, RoomUpdated
from skiffyd.cache import Cache
from skiffyd.cache.migrations import MIGRATIONS
from skiffyd.cache.store import KEYINGS, CacheReader, CacheReads, ReaderBusy
from skiffyd.core.sync import RoomSync, SyncPlan
from skiffyd.core.timeline import TimelineItem, classify
from skiffyd.core.wire import ClientEvent, UnsignedData
from skiffyd.errors import CacheError, CacheWrongKeyError, UnknownRoomError

if TYPE_CHECKING:
    from pathlib import Path

ME = "@me:x"
ROOM = "!room:x"


@pytest.fixture
def key() -> str:
    return secrets.token_hex(32)


@pytest.fixture
def cache(tmp_path: Path, key: str) -> Cache:
    c = Cache.open(tmp_path / "cache.db", key, ME)
    yield c  # type: ignore[misc]
    c.close()


def _item(event: ClientEvent, decrypt: Any = None) -> TimelineItem:
    """``event`` in ROOM as the timeline keeps it."""
    item = classify(ROOM, event, decrypt)
    assert item is not None
    return item


def _msg(event_id: str, body: str, sender: str = "@a:x", txn_id: str | None = None) -> TimelineItem:
    return _item(
        ClientEvent(
            type="m.room.message",
            event_id=event_id,
            sender=sender,
            origin_server_ts=1,
            content={"msgtype": "m.text", "body": body},
            unsigned=UnsignedData(transaction_id=txn_id) if txn_id else None,
        )
    )


def _send(cache: Cache, body: str, txn_id: str, room_id: str = ROOM) -> list[Any]:
    """Queue a text message; the message events it logged (outbox events aside)."""
    events = cache.enqueue(
        room_id=room_id,
        txn_id=txn_id,
        kind="event",
        event_type="m.room.message",
        content={"msgtype": "m.text", "body": body},
        target=None,
        ts=5,
        echo=True,
    )
    return [e for e in events if isinstance(e, MessageAdded | MessageUpdated)]


def _messages_only(events: list[Any]) -> list[Any]:
    return [e for e in events if isinstance(e, MessageAdded | MessageUpdated)]


def _plan(token: str, *items: TimelineItem, name: str | None = None) -> SyncPlan:
    changes: dict[str, object] = {"membership": "join", "joined_count": 2}
    if name is not None:
        changes["name"] = name
    return SyncPlan(next_batch=token, rooms=[RoomSync(ROOM, changes, items=list(items))])


def test_sync_applies_rows_token_and_log(cache: Cache) -> None:
    events = cache.apply_sync(_plan("s1", _msg("$1", "one"), _msg("$2", "two"), name="Lounge"))
    assert [type(e) for e in events] == [RoomUpdated, MessageAdded, MessageAdded]
    assert [e.seq for e in events] == [1, 2, 3]
    assert cache.next_batch() == "s1"
    [room] = cache.rooms()
    assert (room.name, room.member_count) == ("Lounge", 2)
    assert [m.body for m in cache.messages(ROOM, 10)[0]] == ["one", "two"]
    # The same events again (a retried sync) change nothing and log nothing.
    assert cache.apply_sync(_plan("s2", _msg("$1", "one"), name="Lounge")) == []
    assert cache.next_batch() == "s2"


def _bodies(reader: CacheReader) -> list[str]:
    return [m.body for m in reader.read(lambda c: c.messages(ROOM, 10))[0]]


def test_the_reader_sees_the_last_commit_while_a_sync_writes(
    tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The event loop's reader neither waits for the writer's open transaction
    nor sees any of it; it cannot write; a busy SQLite is ReaderBusy."""
    cache = Cache.open(tmp_path / "c.db", key, ME)
    reader = CacheReader.open(tmp_path / "c.db", key)
    try:
        cache.apply_sync(_plan("s1", _msg("$1", "one")))
        seen: list[list[str]] = []
        original = cache._store_batch

        def read_midway(*args: Any, **kwargs: Any) -> Any:
            stored = original(*args, **kwargs)  # "$2" written, not committed
            seen.append(_bodies(reader))
            return stored

        monkeypatch.setattr(cache, "_store_batch", read_midway)
        cache.apply_sync(_plan("s2", _msg("$2", "two")))
        assert seen == [["one"]]
        assert _bodies(reader) == ["one", "two"]
        assert reader.read(CacheReads.outbox_count) == 0
        with pytest.raises(apsw.ReadOnlyError):
            reader.read(lambda c: c._all("DELETE FROM messages"))
        assert _bodies(reader) == ["one", "two"]

        def busy(c: CacheReads) -> None:
            raise apsw.BusyError("database is locked")

        with pytest.raises(ReaderBusy):
            reader.read(busy)
        with pytest.raises(UnknownRoomError):
            reader.read(lambda c: c.messages("!elsewhere:x", 10))
    finally:
        reader.close()
        cache.close()


def _edit(event_id: str, target: str, body: str) -> TimelineItem:
    from tests.cache.test_fidelity import edit

    return _item(msgspec.convert(edit(event_id, target, body), ClientEvent))


def _reader(cache: Cache, path: Path, key: str, how: str, **kwargs: Any) -> CacheReader:
    """A reader that tells a change by the writer's commits (``commits``: the
    daemon's) or by asking SQLite (``data_version``)."""
    if how == "commits":
        return cache.open_reader(key, **kwargs)
    return CacheReader.open(path, key, **kwargs)


READERS = pytest.mark.parametrize("how", ["commits", "data_version"])


@READERS
def test_the_reader_reuses_an_answer_only_while_nothing_was_committed(
    tmp_path: Path, key: str, how: str
) -> None:
    """The same read twice with no commit between: one read (the same
    answer). Any commit, even one that changes a row in place (an edit), or
    one that lands during the read, and the next read is a new one."""
    cache = Cache.open(tmp_path / "c.db", key, ME)
    reader = _reader(cache, tmp_path / "c.db", key, how)
    try:
        cache.apply_sync(_plan("s1", _msg("$1", "one"), _msg("$2", "two")))
        first = reader.read(lambda c: c.messages(ROOM, 10))
        assert reader.read(lambda c: c.messages(ROOM, 10)) is first
        assert reader.read(lambda c: c.messages(ROOM, 1)) is not first  # its own key

        cache.apply_sync(_plan("s2", _edit("$3", "$1", "uno")))  # no new row
        edited = reader.read(lambda c: c.messages(ROOM, 10))
        assert [(m.body, m.edited) for m in edited[0]] == [("uno", True), ("two", False)]
        assert [(m.body, m.edited) for m in first[0]] == [("one", False), ("two", False)]

        # A commit during a read: that answer is not kept as current.
        original = reader._messages

        def commit_midway(room_id: str, limit: int) -> Any:
            found = original(room_id, limit)
            cache.apply_sync(_plan("s3", _msg("$4", "four")))
            return found

        reader._messages = commit_midway  # type: ignore[method-assign]
        midway = reader.read(lambda c: c.messages(ROOM, 9))
        reader._messages = original  # type: ignore[method-assign]
        assert [m.body for m in midway[0]] == ["uno", "two"]
        assert [m.body for m in reader.read(lambda c: c.messages(ROOM, 9))[0]] == [
            "uno",
            "two",
            "four",
        ]
    finally:
        reader.close()
        cache.close()


def test_a_reader_of_the_writers_commits_sees_every_kind_of_write(tmp_path: Path, key: str) -> None:
    """The commit count comes from SQLite's WAL hook, not from the methods
    that write: a statement outside any transaction, a transaction of a
    method, and one that changes a row in place all make the kept answer
    stale; a transaction rolled back changes nothing and leaves it."""
    cache = Cache.open(tmp_path / "c.db", key, ME)
    reader = cache.open_reader(key)
    try:
        cache.apply_sync(_plan("s1", _msg("$1", "one"), _msg("$2", "two")))
        first = reader.read(lambda c: c.messages(ROOM, 10))
        assert reader.read(lambda c: c.messages(ROOM, 10)) is first

        # Autocommit: one statement, no `with`, no method of the cache.
        cache._conn.execute("UPDATE messages SET body = 'uno' WHERE event_id = '$1'")
        second = reader.read(lambda c: c.messages(ROOM, 10))
        assert [m.body for m in second[0]] == ["uno", "two"]

        def rolled_back() -> None:
            with cache._conn:
                cache._conn.execute("UPDATE messages SET body = 'eins' WHERE event_id = '$1'")
                raise RuntimeError("rolled back")

        with pytest.raises(RuntimeError):
            rolled_back()
        assert reader.read(lambda c: c.messages(ROOM, 10)) is second

        _send(cache, "three", "txn1")  # the outbox's transaction
        third = reader.read(lambda c: c.messages(ROOM, 10))
        assert [m.body for m in third[0]] == ["uno", "two", "three"]
        assert cache.commits() >= 3
    finally:
        reader.close()
        cache.close()


def test_the_cache_still_checkpoints_its_wal(tmp_path: Path, key: str) -> None:
    """Counting commits takes SQLite's WAL hook, which replaces its automatic
    checkpoint: the cache checkpoints as SQLite would, so the WAL stays
    bounded however long the daemon writes."""
    cache = Cache.open(tmp_path / "c.db", key, ME)
    try:
        assert cache._checkpoint_pages == 1000  # SQLite's default, kept
        cache._checkpoint_pages = 8  # a small WAL for the test
        cache._conn.execute("CREATE TABLE filler (x BLOB)")
        page = cache._conn.execute("PRAGMA page_size").fetchone()[0]
        cache._conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_TRUNCATE)  # from an empty WAL
        for _ in range(60):  # ~3 pages a commit: ~180 without checkpoints
            cache._conn.execute("INSERT INTO filler VALUES (randomblob(?))", (page,))
        wal_pages = (tmp_path / "c.db-wal").stat().st_size // page
        assert wal_pages <= 16
        assert cache.commits() >= 61

        class Failing:
            """A checkpoint that fails (here: deciding on one)."""

            def __gt__(self, other: object) -> bool:
                raise MemoryError

        # A failed checkpoint does not make the commit look failed: apsw
        # would raise from a committed transaction if the hook raised.
        cache._checkpoint_pages = Failing()  # type: ignore[assignment]
        before = cache.commits()
        events = cache.apply_sync(_plan("s1", _msg("$1", "one")))
        assert [type(e) for e in events] == [RoomUpdated, MessageAdded]
        assert cache.commits() == before + 1
        assert [m.body for m in cache.messages(ROOM, 10)[0]] == ["one"]
    finally:
        cache.close()


def test_the_readers_kept_answers_are_bounded_in_messages(tmp_path: Path, key: str) -> None:
    cache = Cache.open(tmp_path / "c.db", key, ME)
    reader = CacheReader.open(tmp_path / "c.db", key, answer_rows=4)
    off = CacheReader.open(tmp_path / "c.db", key, answer_rows=0)
    try:
        cache.apply_sync(_plan("s1", *(_msg(f"${i}", str(i)) for i in range(5))))

        def read(limit: int) -> Any:
            return reader.read(lambda c: c.messages(ROOM, limit))

        two = read(2)
        three = read(3)  # 5 messages kept > 4: the oldest answer (`two`) goes
        assert read(3) is three
        assert read(2) is not two  # kept again; `three` goes (2 + 3 > 4)
        assert read(3) is not three
        three = read(3)
        assert read(5) is not read(5)  # bigger than all: never kept...
        assert read(3) is three  # ...and pushes nothing out
        # The least recently used goes first: `one`, read again, stays.
        one, two = read(1), read(2)
        assert read(1) is one
        read(3)  # 1 + 2 + 3 > 4: `two` goes
        assert read(1) is one
        assert read(2) is not two
        assert sum(len(a[0]) for _, a, _ in reader._answers.values()) <= 4
        # answer_rows=0 keeps nothing: every read is one.
        assert off.read(lambda c: c.messages(ROOM, 2)) is not off.read(
            lambda c: c.messages(ROOM, 2)
        )
    finally:
        off.close()
        reader.close()
        cache.close()


@READERS
def test_a_write_makes_the_answers_last_asked_for_again(
    tmp_path: Path, key: str, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    """run_then_answer: after a call that changed rows, the given answers as
    a fresh read gives them (a room gone is left out); after one that
    changed nothing, or closed the cache, none. The reader adopts them as
    current until the next commit, and only for keys it still keeps.
    watched(): the most recently asked-for keys, within the window."""
    cache = Cache.open(tmp_path / "c.db", key, ME)
    reader = _reader(cache, tmp_path / "c.db", key, how)
    fresh = CacheReader.open(tmp_path / "c.db", key, answer_rows=0)
    try:
        cache.apply_sync(_plan("s1", _msg("$1", "one"), _msg("$2", "two")))
        clock = [1000.0]
        monkeypatch.setattr("skiffyd.cache.store.time.monotonic", lambda: clock[0])
        reader.read(lambda c: c.messages(ROOM, 10))
        clock[0] += 5
        reader.read(lambda c: c.messages(ROOM, 1))
        assert reader.watched() == [(ROOM, 1), (ROOM, 10)]
        assert reader.watched(most=1) == [(ROOM, 1)]
        assert reader.watched(window_s=4) == [(ROOM, 1)]
        clock[0] += 3
        reader.read(lambda c: c.messages(ROOM, 10))  # asked again: most recent
        assert reader.watched(window_s=4) == [(ROOM, 10), (ROOM, 1)]

        keys = [(ROOM, 10), (ROOM, 1), ("!gone:x", 5)]
        assert cache.run_then_answer(cache.next_batch, (), keys) == ("s1", {})
        events, answers = cache.run_then_answer(
            cache.apply_sync, (_plan("s2", _msg("$3", "three")),), keys
        )
        assert [type(e) for e in events] == [MessageAdded]
        assert set(answers) == {(ROOM, 10), (ROOM, 1)}
        for k, answer in answers.items():
            assert answer == fresh.read(lambda c, k=k: c.messages(*k))
        assert [m.body for m in answers[(ROOM, 10)][0]] == ["one", "two", "three"]

        taken = reader.adopt({**answers, (ROOM, 3): answers[(ROOM, 1)]})
        assert sorted(taken) == [(ROOM, 1), (ROOM, 10)]
        assert reader.read(lambda c: c.messages(ROOM, 10)) is answers[(ROOM, 10)]
        assert reader.read(lambda c: c.messages(ROOM, 1)) is answers[(ROOM, 1)]
        assert (ROOM, 3) not in reader._answers  # not asked for: not taken
        # The next commit makes adopted answers stale like any other.
        cache.apply_sync(_plan("s3", _msg("$4", "four")))
        after = reader.read(lambda c: c.messages(ROOM, 10))
        assert [m.body for m in after[0]] == ["one", "two", "three", "four"]

        other = Cache.open(tmp_path / "c.db", key, ME)
        assert other.run_then_answer(other.close, (), keys) == (None, {})
    finally:
        fresh.close()
        reader.close()
        cache.close()


def test_adopted_answers_keep_the_bound_and_their_place(tmp_path: Path, key: str) -> None:
    cache = Cache.open(tmp_path / "c.db", key, ME)
    reader = CacheReader.open(tmp_path / "c.db", key, answer_rows=4)
    try:
        cache.apply_sync(_plan("s1", _msg("$1", "one"), _msg("$2", "two")))
        one = reader.read(lambda c: c.messages(ROOM, 1))
        two = reader.read(lambda c: c.messages(ROOM, 2))
        _, answers = cache.run_then_answer(
            cache.apply_sync,
            (_plan("s2", *(_msg(f"${i}", str(i)) for i in range(3, 6))),),
            [(ROOM, 1), (ROOM, 2)],
        )
        # (ROOM, 1) stays the least recently asked for (an adoption is not
        # a use); the answers now hold 1 + 2 messages, under the bound.
        reader.adopt({(ROOM, 2): answers[(ROOM, 2)], (ROOM, 1): answers[(ROOM, 1)]})
        assert list(reader._answers) == [(ROOM, 1), (ROOM, 2)]
        assert reader.read(lambda c: c.messages(ROOM, 1)) is answers[(ROOM, 1)]
        assert reader.read(lambda c: c.messages(ROOM, 2)) is answers[(ROOM, 2)]
        assert one is not answers[(ROOM, 1)]
        assert two is not answers[(ROOM, 2)]
        # A kept answer that the write made bigger than the bound on its
        # own is dropped, not kept, and pushes nothing out.
        small = CacheReader.open(tmp_path / "c.db", key, answer_rows=6)
        try:
            small.read(lambda c: c.messages(ROOM, 1))
            small.read(lambda c: c.messages(ROOM, 7))  # 5 rows of 7: kept
            assert small._answer_rows == 6
            _, grown = cache.run_then_answer(
                cache.apply_sync,
                (_plan("s3", _msg("$6", "six"), _msg("$7", "seven")),),
                [(ROOM, 7), (ROOM, 1)],
            )
            assert small.adopt(grown) == [(ROOM, 1)]
            assert list(small._answers) == [(ROOM, 1)]
            assert small._answer_rows == 1
            assert small.read(lambda c: c.messages(ROOM, 1)) is grown[(ROOM, 1)]
        finally:
            small.close()
    finally:
        reader.close()
        cache.close()


def test_last_seq_counts_a_transaction_only_once_it_commits(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """last_seq is read from the event loop while the cache thread writes:
    seqs assigned inside an open transaction are not reported yet."""
    cache.apply_sync(_plan("s1", _msg("$1", "one")))
    assert cache.last_seq == 2
    seen: list[int] = []
    original = cache._append_changelog

    def append_then_look(events: list[Any]) -> None:
        original(events)  # seqs 3 and on handed out, not committed
        seen.append(cache.last_seq)

    monkeypatch.setattr(cache, "_append_changelog", append_then_look)
    cache.apply_sync(_plan("s2", _msg("$2", "two")))
    assert seen == [2]
    assert cache.last_seq == 3

    def fail_after(events: list[Any]) -> None:
        original(events)
        raise apsw.IOError("disk went away")

    monkeypatch.setattr(cache, "_append_changelog", fail_after)
    with pytest.raises(CacheError):
        cache.apply_sync(_plan("s3", _msg("$3", "three")))
    assert cache.last_seq == 3
    monkeypatch.setattr(cache, "_append_changelog", original)
    assert [e.seq for e in cache.apply_sync(_plan("s3", _msg("$3", "three")))] == [4]


def test_a_failed_apply_leaves_nothing_behind(
    cache: Cache, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache.apply_sync(_plan("s1", _msg("$1", "one")))
    original = cache._store_batch
    calls = 0

    def explode(work: object, room_id: str, items: list[TimelineItem], **kw: Any) -> object:
        nonlocal calls
        calls += 1
        if calls == 2:
            raise apsw.IOError("disk went away")
        return original(work, room_id, items, **kw)  # type: ignore[arg-type]

    monkeypatch.setattr(cache, "_store_batch", explode)
    # Two rooms in one response: the first is written, the second fails.
    plan = _plan("s2", _msg("$2", "two"))
    other = [
        classify(
            "!other:x",
            ClientEvent(
                type="m.room.message",
                event_id="$3",
                sender="@a:x",
                content={"msgtype": "m.text", "body": "three"},
            ),
        )
    ]
    plan.rooms.append(RoomSync("!other:x", {"membership": "join"}, items=other))  # type: ignore[arg-type]
    with pytest.raises(CacheError) as info:
        cache.apply_sync(plan)
    assert isinstance(info.value.__cause__, apsw.IOError)
    assert calls == 2
    monkeypatch.undo()
    assert cache.next_batch() == "s1"
    assert [m.event_id for m in cache.messages(ROOM, 10)[0]] == ["$1"]
    assert not cache.has_room("!other:x")
    # The seq counter rolled back too: the next change continues the log.
    [event] = cache.apply_sync(_plan("s3", _msg("$4", "four")))
    assert event.seq == cache.last_seq == 3


def test_local_echo_reconciled_from_sync_or_send(cache: Cache) -> None:
    cache.apply_sync(_plan("s1"))
    [added] = _send(cache, "hi", "t1")
    assert isinstance(added, MessageAdded)
    assert added.message.status == "pending"
    assert added.message.event_id is None
    assert cache.outbox_count() == 1
    # Sync brings our event back before the PUT answered.
    [updated] = _messages_only(
        cache.apply_sync(_plan("s2", _msg("$e", "hi", sender=ME, txn_id="t1")))
    )
    assert isinstance(updated, MessageUpdated)
    assert (updated.message.event_id, updated.message.status) == ("$e", "sent")
    assert cache.outbox_count() == 0
    # The PUT's answer arrives after: nothing changes, nothing duplicated.
    assert _messages_only(cache.mark_sent("t1", "$e")) == []
    assert [(m.event_id, m.status) for m in cache.messages(ROOM, 10)[0]] == [("$e", "sent")]


def test_mark_sent_then_sync_echo(cache: Cache) -> None:
    cache.apply_sync(_plan("s1"))
    _send(cache, "hi", "t1")
    [updated] = _messages_only(cache.mark_sent("t1", "$e"))
    assert updated.message.status == "sent"
    # The server's copy reconciles the echo (its timestamp wins), never adds a row.
    events = cache.apply_sync(_plan("s2", _msg("$e", "hi", sender=ME, txn_id="t1")))
    assert [type(e).__name__ for e in events] == ["MessageUpdated"]
    [row] = cache.messages(ROOM, 10)[0]
    assert (row.event_id, row.ts, row.status) == ("$e", 1, "sent")
    # The same copy again changes nothing.
    assert cache.apply_sync(_plan("s3", _msg("$e", "hi", sender=ME, txn_id="t1"))) == []


def test_outbox_failure_and_unknown_room(cache: Cache) -> None:
    with pytest.raises(UnknownRoomError):
        _send(cache, "hi", "t0", room_id="!nope:x")
    cache.apply_sync(_plan("s1"))
    _send(cache, "a", "t1")
    _send(cache, "b", "t2")
    assert [i.txn_id for i in cache.outbox_items()] == ["t1", "t2"]
    [failed] = _messages_only(cache.mark_failed("t1", "403 M_FORBIDDEN"))
    assert failed.message.status == "failed"
    assert [(i.txn_id, i.state) for i in cache.outbox_items()] == [
        ("t1", "failed"),
        ("t2", "queued"),
    ]


def test_changes_since(cache: Cache) -> None:
    cache.apply_sync(_plan("s1", *[_msg(f"${i}", f"m{i}") for i in range(5)]))
    assert cache.last_seq == 6
    page = cache.changes_since(2, limit=2)
    assert [e.seq for e in page.events] == [3, 4]
    assert page.more
    assert not page.reset
    rest = cache.changes_since(4, limit=100)
    assert [e.seq for e in rest.events] == [5, 6]
    assert not rest.more
    assert cache.changes_since(6, 10).events == []
    assert cache.changes_since(99, 10).reset  # a seq from another instance


def test_wrong_key_is_a_clear_error(tmp_path: Path, key: str) -> None:
    Cache.open(tmp_path / "c.db", key, ME).close()
    with pytest.raises(CacheWrongKeyError) as info:
        Cache.open(tmp_path / "c.db", secrets.token_hex(32), ME)
    assert info.value.code == "SKIFFY_CACHE_WRONG_KEY"
    with pytest.raises(CacheError):
        Cache.open(tmp_path / "c.db", "not-hex", ME)


@pytest.mark.parametrize("generation", range(len(KEYINGS)))
def test_caches_of_every_keying_open_and_keep_their_cipher(
    tmp_path: Path, key: str, generation: int
) -> None:
    """A new cache is made with the newest keying (AEGIS-256, raw key); one
    made with an older keying opens with it, for writer and reader alike,
    and refuses another key."""
    path = tmp_path / "c.db"
    if generation:
        conn = apsw.Connection(str(path))
        for pragma in KEYINGS[generation]:
            conn.execute(pragma.format(key=key))
        conn.execute("CREATE TABLE made_before(x)")
        conn.close()
    c = Cache.open(path, key, ME)
    reader = c.open_reader(key)  # keyed as the writer found, not searched again
    try:
        cipher = "aegis" if generation == 0 else "chacha20"
        assert c._scalar("PRAGMA cipher") == cipher
        assert reader._scalar("PRAGMA cipher") == cipher
        c.apply_sync(_plan("s1", _msg("$1", "one")))
        assert _bodies(reader) == ["one"]
    finally:
        reader.close()
        c.close()
    c = Cache.open(path, key, ME)
    assert c.next_batch() == "s1"
    c.close()
    # Every digit of the key counts (a raw key is not cut short).
    for at in (0, 63):
        other = key[:at] + ("1" if key[at] == "0" else "0") + key[at + 1 :]
        with pytest.raises(CacheWrongKeyError):
            Cache.open(path, other, ME)


def test_the_key_is_not_kept_in_the_statement_cache(tmp_path: Path, key: str) -> None:
    c = Cache.open(tmp_path / "c.db", key, ME)
    reader = c.open_reader(key)
    try:
        for conn in (c._conn, reader._conn):
            stats = conn.cache_stats(True)
            assert stats["entries"], "the statement cache is in use"
            assert not [e for e in stats["entries"] if key in e["query"]]
    finally:
        reader.close()
        c.close()


def test_file_holds_no_plaintext_and_is_private(tmp_path: Path, key: str) -> None:
    marker = "plaintext-marker-" + secrets.token_hex(8)
    c = Cache.open(tmp_path / "c.db", key, ME)
    c.apply_sync(_plan("s1", _msg("$1", marker), name="Secret room " + marker))
    _send(c, marker + "-out", "t")
    c.close()
    for f in tmp_path.iterdir():
        assert marker.encode() not in f.read_bytes(), f.name
    assert (tmp_path / "c.db").stat().st_mode & 0o777 == 0o600


def test_migrations_run_once_and_reopen_keeps_data(tmp_path: Path, key: str) -> None:
    c = Cache.open(tmp_path / "c.db", key, ME)
    c.apply_sync(_plan("s1", _msg("$1", "one")))
    c.close()
    c = Cache.open(tmp_path / "c.db", key, ME)
    assert c._scalar("PRAGMA user_version") == len(MIGRATIONS)
    assert c.next_batch() == "s1"
    assert c.last_seq == 2
    c.close()


@settings(max_examples=30, deadline=None)
@given(st.lists(st.lists(st.integers(0, 30), max_size=6), max_size=8))
def test_change_log_never_skips_or_repeats(
    tmp_path_factory: pytest.TempPathFactory, batches: list[list[int]]
) -> None:
    path = tmp_path_factory.mktemp("log") / "c.db"
    c = Cache.open(path, secrets.token_hex(32), ME)
    seen: list[int] = []
    for n, ids in enumerate(batches):
        events = c.apply_sync(_plan(f"s{n}", *[_msg(f"${i}", f"m{i}") for i in ids]))
        seen.extend(e.seq for e in events)
    assert seen == list(range(1, len(seen) + 1))
    replay = c.changes_since(0, 10_000)
    assert [e.seq for e in replay.events] == seen
    c.close()


def test_an_initial_sync_stores_messages_without_logging_each(cache: Cache) -> None:
    plan = _plan("s1", _msg("$1", "one"), _msg("$2", "two"))
    plan.initial = True
    events = cache.apply_sync(plan)
    assert [type(e).__name__ for e in events] == ["RoomUpdated"]
    assert [m.body for m in cache.messages(ROOM, 10)[0]] == ["one", "two"]
    # After it, every message is logged and published again.
    later = cache.apply_sync(_plan("s2", _msg("$3", "three")))
    assert [type(e).__name__ for e in later] == ["MessageAdded"]
    assert cache.changes_since(0, 100).events[-1].message.body == "three"  # type: ignore[union-attr]


def test_m_direct_and_a_new_room_in_one_sync(cache: Cache) -> None:
    """A new room the stored m.direct names, and a new m.direct that drops it, in ONE
    response: the new map wins although the room's row is written only at the end."""
    cache.apply_sync(SyncPlan(next_batch="s1", rooms=[], direct={"@bob:x": [ROOM]}))
    plan = _plan("s2", _msg("$1", "one"))
    plan.direct = {"@carol:x": ["!other:x"]}
    cache.apply_sync(plan)
    [room] = cache.rooms()
    assert (room.is_direct, room.direct_user) == (False, None)
    # And a room both maps name keeps the newer map's user.
    plan = SyncPlan(
        next_batch="s3",
        rooms=[RoomSync("!other:x", {"membership": "join"})],
        direct={"@dave:x": ["!other:x"]},
    )
    cache.apply_sync(plan)
    other = next(r for r in cache.rooms() if r.room_id == "!other:x")
    assert (other.is_direct, other.direct_user) == (True, "@dave:x")


def test_a_cancelled_echos_row_number_is_not_reused(cache: Cache) -> None:
    """The change log names message rows by number: a row deleted (a cancelled
    echo) must not lend its number to the next message a sync stores."""
    cache.apply_sync(_plan("s1", _msg("$1", "one")))
    _send(cache, "oops", "t1")
    cache.cancel("t1")
    _send(cache, "again", "t2")  # an echo numbered by SQL, not by a sync
    cache.cancel("t2")
    cache.apply_sync(_plan("s2", _msg("$2", "two")))
    _send(cache, "three", "t3")
    bodies = [
        e.message.body
        for e in cache.changes_since(0, 100).events
        if isinstance(e, MessageAdded | MessageUpdated)
    ]
    assert bodies == ["one", "two", "three"]


def _cache_at_version(path: Path, key: str, version: int) -> apsw.Connection:
    """A cache file as a skiffyd of schema ``version`` left it (SQLite3MC's
    default keying, as those had), open for the test to add rows."""
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA hexkey='{key}'")
    for step in MIGRATIONS[:version]:
        conn.execute(step)
    conn.execute(f"PRAGMA user_version = {version}")
    return conn


def test_row_numbers_stay_unique_across_the_autoincrement_migration(
    tmp_path: Path, key: str
) -> None:
    """Migration 3 drops AUTOINCREMENT: the highest number it had handed out
    (a deleted row's, above every stored one) must still not be reused."""
    path = tmp_path / "c.db"
    conn = _cache_at_version(path, key, 2)
    conn.execute(
        "INSERT INTO messages(room_id, pos, event_id, type, sender, ts, status, content, body) "
        "VALUES ('!room:x', 0, '$old', 'm.room.message', '@a:x', 1, 'sent', x'80', 'old'), "
        "('!room:x', 1, NULL, 'm.room.message', '@me:x', 2, 'pending', x'80', 'gone')"
    )
    conn.execute("DELETE FROM messages WHERE body = 'gone'")  # ord 2, above MAX(ord) = 1
    conn.close()
    c = Cache.open(path, key, ME)
    try:
        assert c._scalar("PRAGMA user_version") == len(MIGRATIONS)
        assert c._scalar("SELECT body FROM messages WHERE ord = 1") == "old"
        c.apply_sync(_plan("s1", _msg("$new", "new")))
        assert c._scalar("SELECT ord FROM messages WHERE event_id = '$new'") == 3
        _send(c, "queued", "t1")
        assert c._scalar("SELECT ord FROM messages WHERE txn_id = 't1'") == 4
    finally:
        c.close()


def test_the_status_check_migration_keeps_rows_numbers_and_the_check(
    tmp_path: Path, key: str
) -> None:
    """Migration 4 rebuilds messages to respell its status CHECK: the rows and
    their numbers stay, the delete trigger comes back, and the CHECK still refuses."""
    path = tmp_path / "c.db"
    conn = _cache_at_version(path, key, 3)
    conn.execute(
        "INSERT INTO messages(ord, room_id, pos, event_id, type, sender, ts, status, content, body) "
        "VALUES (7, '!room:x', 0, '$old', 'm.room.message', '@a:x', 1, 'sent', x'80', 'old')"
    )
    conn.close()
    c = Cache.open(path, key, ME)
    try:
        assert c._scalar("PRAGMA user_version") == len(MIGRATIONS) >= 4
        assert c._scalar("SELECT body FROM messages WHERE ord = 7") == "old"
        for status in ("pending", "failed"):
            c._conn.execute(
                "INSERT INTO messages(room_id, pos, type, sender, ts, status, content, body) "
                "VALUES ('!room:x', 1, 'm.room.message', '@me:x', 2, ?, x'80', 'ok')",
                (status,),
            )
        with pytest.raises(apsw.ConstraintError):
            c._conn.execute(
                "INSERT INTO messages(room_id, pos, type, sender, ts, status, content, body) "
                "VALUES ('!room:x', 1, 'm.room.message', '@me:x', 2, 'lost', x'80', 'no')"
            )
        c._conn.execute("DELETE FROM messages WHERE body = 'ok'")  # ords 8 and 9
        c.apply_sync(_plan("s1", _msg("$new", "new")))
        assert c._scalar("SELECT ord FROM messages WHERE event_id = '$new'") == 10
    finally:
        c.close()


class _Keys:
    """A stand-in crypto machine: knows the plaintext of the sessions it was given."""

    def __init__(self) -> None:
        self.known: dict[str, tuple[str, dict[str, Any]]] = {}

    def decrypt(self, room_id: str, ev: ClientEvent) -> ClientEvent | None:
        found = self.known.get(str(ev.content.get("session_id")))
        if found is None:
            return None
        kind, content = found
        return ClientEvent(
            type=kind,
            content=content,
            sender=ev.sender,
            event_id=ev.event_id,
            origin_server_ts=ev.origin_server_ts,
        )

    def note_members(self, room_id: str, changes: object) -> None:
        pass


def _encrypted(event_id: str, session: str, keys: _Keys) -> TimelineItem:
    return _item(
        ClientEvent(
            type="m.room.encrypted",
            event_id=event_id,
            sender="@a:x",
            origin_server_ts=1,
            content={"algorithm": "m.megolm.v1.aes-sha2", "session_id": session, "ciphertext": "x"},
        ),
        keys.decrypt,
    )


def test_rows_whose_key_comes_later_are_read_then(cache: Cache) -> None:
    keys = _Keys()
    cache.apply_sync(_plan("t1", _msg("$seen", "in the clear")))
    cache.apply_sync(_plan("t2", _encrypted("$m", "S1", keys), _encrypted("$e", "S1", keys)))
    rows = {m.event_id: m for m in cache.messages(ROOM, 10)[0]}
    assert rows["$m"].body == rows["$e"].body == "** unable to decrypt **"
    assert rows["$m"].encrypted
    assert cache.undecrypted_count() == 2
    assert cache.undecrypted_sessions() == []  # no sender_key in these contents

    keys.known["S1"] = ("m.room.message", {"msgtype": "m.text", "body": "hello"})
    # Only a key for another session: nothing changes, nothing is logged.
    assert cache.apply_decrypted(keys, [(ROOM, "S2")]) == []
    events = cache.apply_decrypted(keys, [(ROOM, "S1")])
    assert cache.undecrypted_count() == 0
    rows = {m.event_id: m for m in cache.messages(ROOM, 10)[0]}
    assert rows["$m"].body == "hello"
    assert rows["$m"].encrypted
    assert rows["$m"].type == "m.room.message"
    updated = [e.message.event_id for e in events if isinstance(e, MessageUpdated)]
    assert set(updated) == {"$m", "$e"}
    assert [e.seq for e in events] == sorted(e.seq for e in events)


def test_an_unreadable_edit_becomes_an_edit_when_read(cache: Cache) -> None:
    keys = _Keys()
    keys.known["S1"] = ("m.room.message", {"msgtype": "m.text", "body": "original"})
    cache.apply_sync(_plan("t1", _encrypted("$m", "S1", keys), _encrypted("$e", "S2", keys)))
    rows = {m.event_id: m for m in cache.messages(ROOM, 10)[0]}
    assert rows["$m"].body == "original"
    assert rows["$e"].body == "** unable to decrypt **"
    keys.known["S2"] = (
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* changed",
            "m.new_content": {"msgtype": "m.text", "body": "changed"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$m"},
        },
    )
    events = cache.apply_decrypted(keys, [(ROOM, "S2")])
    rows = {m.event_id: m for m in cache.messages(ROOM, 10)[0]}
    assert "$e" not in rows
    assert rows["$m"].body == "changed"
    assert rows["$m"].edited
    assert [e.event_id for e in events if isinstance(e, MessageRemoved)] == ["$e"]
    assert any(isinstance(e, MessageUpdated) and e.message.event_id == "$m" for e in events)
    # The change log replays the same (a UI catching up sees the removal).
    replay = cache.changes_since(events[0].seq - 1, 100).events
    assert [type(e).__name__ for e in replay] == [type(e).__name__ for e in events]


def test_reactions_written_by_json_dumps_are_not_seen_as_changed() -> None:
    """Rows stored before reactions were encoded by msgspec (compact, UTF-8)
    hold json.dumps's spacing and escapes: re-deriving them is no change."""
    import json

    from skiffyd.cache.store import _json, _same_derived

    reactions, mine = {"👍": 2, "ok": 1}, ["👍"]
    old = ("hi", "m.text", None, 0, json.dumps(reactions), json.dumps(mine), 0, None)
    new = ("hi", "m.text", None, 0, _json(reactions), _json(mine), 0, None)
    assert old[4] != new[4]
    assert _same_derived(old, new)
    assert not _same_derived(old, (*new[:4], _json({"👍": 3, "ok": 1}), *new[5:]))
    assert not _same_derived(old, (*new[:5], None, *new[6:]))
    assert not _same_derived(old, ("bye", *new[1:]))


def _reaction(event_id: str, target: str, sender: str) -> TimelineItem:
    return _item(
        ClientEvent(
            type="m.reaction",
            event_id=event_id,
            sender=sender,
            origin_server_ts=2,
            content={"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": "👍"}},
        )
    )


def test_a_reacted_row_stores_no_display_and_an_old_copy_is_no_change(cache: Cache) -> None:
    """A row only reacted to shows its content as it is: no display column
    (rows written before stored a copy of the content there; re-deriving
    one is not a change to publish)."""
    cache.apply_sync(_plan("s1", _msg("$1", "one")))
    cache.apply_sync(_plan("s2", _reaction("$r1", "$1", "@b:x")))
    assert cache._scalar("SELECT display FROM messages WHERE event_id = '$1'") is None
    assert cache.messages(ROOM, 10)[0][0].reactions == {"👍": 1}
    cache._conn.execute("UPDATE messages SET display = content WHERE event_id = '$1'")
    # The same reaction again, by the same sender: the row shows the same.
    events = cache.apply_sync(_plan("s3", _reaction("$r2", "$1", "@b:x")))
    assert not [e for e in events if isinstance(e, MessageUpdated)]
    events = cache.apply_sync(_plan("s4", _reaction("$r3", "$1", "@c:x")))
    [updated] = [e for e in events if isinstance(e, MessageUpdated)]
    assert updated.message.reactions == {"👍": 2}
