"""Daemon.answer_now: small reads answered at once (on the IPC server's
command thread) through the reader; status through it on the event loop."""

from __future__ import annotations

import itertools
import secrets
import threading
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import pytest
import trio

import ipc_schema as wire
from skiffyd.cache import Cache
from skiffyd.cache.store import (
    AnswerKey,
    CacheReader,
    CacheReads,
    MessagesAnswer,
    ReaderBusy,
)
from skiffyd.core.sync import RoomSync, SyncPlan
from skiffyd.daemon import INLINE_READ_ROWS, REPLY_MEMO, Daemon
from skiffyd.errors import SkiffyError, UnknownRoomError
from skiffyd.ipc import codec
from tests.cache.test_store import _msg
from tests.ipc.conftest import short_paths, wait_until

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

ROOM = "!room:x"


def _messages(frame: object) -> wire.MessagesResult:
    """The MessagesResult in a reply frame from answer_now."""
    assert isinstance(frame, bytes)
    reply = codec.decode_reply(frame)
    assert reply.error is None
    assert isinstance(reply.result, wire.MessagesResult)
    return reply.result


class _Reader:
    """The real reader, counting reads; or one SQLite calls busy."""

    def __init__(self, inner: CacheReader, *, busy: bool = False) -> None:
        self.inner, self.busy, self.reads = inner, busy, 0

    def read(self, fn: Callable[[CacheReads], Any]) -> Any:
        self.reads += 1
        if self.busy:
            raise ReaderBusy
        return self.inner.read(fn)

    def watched(self) -> list[AnswerKey]:
        return self.inner.watched()

    def adopt(self, answers: dict[AnswerKey, MessagesAnswer]) -> list[AnswerKey]:
        return self.inner.adopt(answers)


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[tuple[Daemon, Cache, CacheReader]]:
    key = secrets.token_hex(32)
    cache = Cache.open(tmp_path / "c.db", key, "@me:x")
    cache.apply_sync(
        SyncPlan(next_batch="s1", rooms=[RoomSync(ROOM, {}, items=[_msg("$1", "one")])])
    )
    reader = CacheReader.open(tmp_path / "c.db", key)
    d = Daemon(short_paths(tmp_path))
    yield d, cache, reader
    reader.close()
    cache.close()


def _session(cache: Cache, reader: Any) -> Any:
    creds = SimpleNamespace(
        user_id="@me:x",
        homeserver="http://hs",
        device_id="D",
        refresh_token=None,
        expires_at_ms=None,
    )
    return SimpleNamespace(
        cache=cache,
        reader=reader,
        creds=creds,
        tokens=SimpleNamespace(refreshes=0),
        sync=None,
        crypto=None,
        crypto_service=None,
        server_versions=[],
    )


async def test_small_reads_are_answered_at_once_through_the_reader(
    daemon: tuple[Daemon, Cache, CacheReader],
) -> None:
    d, cache, real = daemon
    reader = _Reader(real)
    d.session = _session(cache, reader)
    frame = d.answer_now(wire.Messages(room_id=ROOM, limit=INLINE_READ_ROWS))
    answer = _messages(frame)
    assert [m.body for m in answer.messages] == ["one"]
    assert d.answer_now(wire.Status()) is None  # on the event loop, through the reader:
    status = await d.handle(wire.Status())
    assert isinstance(status, wire.StatusResult)
    assert (status.user_id, status.pending_outbox, status.last_seq) == ("@me:x", 0, 2)
    assert reader.reads == 2
    # The same read again is the same answer, down to its frame; after a
    # commit, the new one.
    again = d.answer_now(wire.Messages(room_id=ROOM, limit=INLINE_READ_ROWS))
    assert again is frame
    cache.apply_sync(
        SyncPlan(next_batch="s2", rooms=[RoomSync(ROOM, {}, items=[_msg("$2", "two")])])
    )
    after = _messages(d.answer_now(wire.Messages(room_id=ROOM, limit=INLINE_READ_ROWS)))
    assert [m.event_id for m in after.messages] == ["$1", "$2"]
    # Not small, not logged in, or a bad room: the usual way (or its error).
    assert d.answer_now(wire.Messages(room_id=ROOM, limit=INLINE_READ_ROWS + 1)) is None
    assert d.answer_now(wire.Rooms()) is None
    assert reader.reads == 4
    with pytest.raises(SkiffyError) as info:
        d.answer_now(wire.Messages(room_id="not-a-room", limit=5))
    assert info.value.code == wire.ErrorCode.IPC_INVALID_ARGUMENT
    with pytest.raises(UnknownRoomError):
        d.answer_now(wire.Messages(room_id="!elsewhere:x", limit=5))
    d.session = None
    assert d.answer_now(wire.Messages(room_id=ROOM, limit=5)) is None


async def test_reply_frames_are_made_once_per_answer_and_bounded(
    daemon: tuple[Daemon, Cache, CacheReader],
) -> None:
    d, cache, real = daemon
    d.session = _session(cache, real)
    first = d.answer_now(wire.Messages(room_id=ROOM, limit=1))
    # The frame is the answer's own encoding, as a fresh read gives it.
    messages, gaps = cache.messages(ROOM, 1)
    assert first == codec.result_reply(wire.MessagesResult(messages=messages, gaps=gaps))
    assert d.answer_now(wire.Messages(room_id=ROOM, limit=1)) is first
    # At most REPLY_MEMO frames, the most recently used.
    for limit in range(2, REPLY_MEMO + 2):
        d.answer_now(wire.Messages(room_id=ROOM, limit=limit))
    assert len(d._replies) == REPLY_MEMO
    assert (ROOM, 1) not in d._replies
    again = d.answer_now(wire.Messages(room_id=ROOM, limit=1))
    assert again == first
    assert again is not first
    # A reader that keeps no answers hands out a new one every time: each
    # gets its own frame, never one made for another object.
    d.session = _session(cache, CacheReader(real._conn, answer_rows=0))
    one = d.answer_now(wire.Messages(room_id=ROOM, limit=1))
    two = d.answer_now(wire.Messages(room_id=ROOM, limit=1))
    assert one == two == first
    assert one is not two


async def test_closing_the_session_drops_its_reply_frames(
    daemon: tuple[Daemon, Cache, CacheReader],
) -> None:
    d, cache, real = daemon
    session = _session(cache, real)
    session.cancel_scope = trio.CancelScope()
    session.transport = SimpleNamespace(aclose=trio.lowlevel.checkpoint)
    d.session = session
    assert isinstance(d.answer_now(wire.Messages(room_id=ROOM, limit=5)), bytes)
    assert d._replies
    await d._close_session(session)
    # No message of a closed session is kept in the daemon's memory.
    assert not d._replies
    assert d.session is None


async def test_a_busy_reader_sends_the_command_the_usual_way(
    daemon: tuple[Daemon, Cache, CacheReader],
) -> None:
    d, cache, real = daemon
    busy = _Reader(real, busy=True)
    d.session = _session(cache, busy)
    for request in (wire.Messages(room_id=ROOM, limit=5), wire.Status()):
        assert d.answer_now(request) is None
        assert await d.handle(request) is not None  # on the cache thread
    assert busy.reads == 2
    answer = await d.handle(wire.Messages(room_id=ROOM, limit=5))
    assert isinstance(answer, wire.MessagesResult)
    assert [m.body for m in answer.messages] == ["one"]


async def test_a_write_through_db_leaves_the_rooms_uis_read_answered_from_memory(
    daemon: tuple[Daemon, Cache, CacheReader], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Daemon.db: after a write, what UIs read last is made again on the
    cache thread and kept as current, so the read after the event that
    tells a UI of the change does not touch SQLite; a read-only call, or a
    write with nothing read yet, makes nothing."""
    d, cache, real = daemon
    d.session = _session(cache, real)
    sqlite_reads: list[tuple[str, int]] = []
    read_rows = real._messages

    def counting(room_id: str, limit: int) -> Any:
        sqlite_reads.append((room_id, limit))
        return read_rows(room_id, limit)

    monkeypatch.setattr(real, "_messages", counting)
    made: list[list[Any]] = []
    run_then_answer = cache.run_then_answer

    def spy(fn: Any, args: Any, keys: list[Any]) -> Any:
        made.append(keys)
        return run_then_answer(fn, args, keys)

    monkeypatch.setattr(cache, "run_then_answer", spy)
    # Adopting is right only while no other write can commit: the cache
    # limiter must still be held when the reader adopts.
    held: list[int] = []
    adopt = real.adopt

    def adopt_checked(answers: Any) -> Any:
        held.append(d._limiter.statistics().borrowed_tokens)
        return adopt(answers)

    monkeypatch.setattr(real, "adopt", adopt_checked)

    def bodies() -> list[str]:
        result = _messages(d.answer_now(wire.Messages(room_id=ROOM, limit=5)))
        return [m.body for m in result.messages]

    # Nothing read yet: a write makes nothing.
    await d.db(cache.apply_sync, SyncPlan(next_batch="s2", rooms=[RoomSync(ROOM, {}, items=[])]))
    assert made == []
    assert bodies() == ["one"]
    assert sqlite_reads == [(ROOM, 5)]

    events = await d.db(
        cache.apply_sync,
        SyncPlan(next_batch="s3", rooms=[RoomSync(ROOM, {}, items=[_msg("$2", "two")])]),
    )
    assert [type(e) for e in events] == [wire.MessageAdded]
    assert made == [[(ROOM, 5)]]
    assert held == [1]
    # Its reply frame is made then too, before the events go out.
    frame = d._replies[(ROOM, 5)][1]
    assert d.answer_now(wire.Messages(room_id=ROOM, limit=5)) is frame
    assert bodies() == ["one", "two"]
    assert sqlite_reads == [(ROOM, 5)]  # the answer was made on the cache thread

    assert await d.db(cache.next_batch) == "s3"  # reads only: nothing made, nothing stale
    assert bodies() == ["one", "two"]
    assert sqlite_reads == [(ROOM, 5)]

    # A commit that did not go through db (not the daemon's way: here to
    # show the guard) is still seen: the reader reads.
    cache.apply_sync(
        SyncPlan(next_batch="s4", rooms=[RoomSync(ROOM, {}, items=[_msg("$3", "three")])])
    )
    assert bodies() == ["one", "two", "three"]
    assert sqlite_reads == [(ROOM, 5), (ROOM, 5)]


async def test_reads_on_the_command_thread_take_turns_with_the_event_loop(
    daemon: tuple[Daemon, Cache, CacheReader],
) -> None:
    """answer_now runs on the IPC server's command thread. Its reads, the
    event loop's reads (status) and the adoptions after each write share
    the reader under Daemon.reads: every answer is a whole committed state,
    never older than the one before, and nothing fails."""
    d, cache, real = daemon
    d.session = _session(cache, real)
    writes = INLINE_READ_ROWS - 10  # every message fits in one small read
    request = wire.Messages(room_id=ROOM, limit=INLINE_READ_ROWS)
    stop = threading.Event()
    frames: list[bytes | None] = []
    failures: list[BaseException] = []

    def read_until_stopped() -> None:
        try:
            while not stop.is_set():
                frames.append(d.answer_now(request))
        except BaseException as exc:
            failures.append(exc)

    def has_all() -> bool:
        frame = frames[-1] if frames else None
        return bool(failures) or (frame is not None and len(_messages(frame).messages) > writes)

    thread = threading.Thread(target=read_until_stopped)
    thread.start()
    try:
        await wait_until(lambda: bool(frames or failures))
        for i in range(writes):
            plan = SyncPlan(
                next_batch=f"w{i}", rooms=[RoomSync(ROOM, {}, items=[_msg(f"$m{i}", f"m{i}")])]
            )
            await d.db(cache.apply_sync, plan)
            for _ in range(5):
                status = await d.handle(wire.Status())
                assert isinstance(status, wire.StatusResult)
                assert status.pending_outbox == 0
        await wait_until(has_all)
    finally:
        stop.set()
        await trio.to_thread.run_sync(thread.join)
    assert failures == []
    # Decoded here, each distinct frame once (a reused answer is the same frame).
    counts: dict[int, int] = {}
    for frame in frames:
        if id(frame) not in counts:
            bodies = [m.body for m in _messages(frame).messages]
            assert bodies == ["one"] + [f"m{i}" for i in range(len(bodies) - 1)]
            counts[id(frame)] = len(bodies)
    seen = [counts[id(frame)] for frame in frames]
    assert seen[0] == 1
    assert seen[-1] == writes + 1
    assert all(a <= b for a, b in itertools.pairwise(seen))
