"""The encrypted cache: SQL only, synchronous, no trio.

Theory of operation
-------------------
One SQLite file per account, encrypted by SQLite3 Multiple Ciphers
(apsw-sqlite3mc, ChaCha20-Poly1305 by default) with a 256-bit key that lives
in the keyring. It is the daemon's single source of truth: UIs read only
from it, the network only writes into it.

Every write is one transaction that also appends to the change log: a row
per event a UI should see, with a global ``seq`` (the row id) and the
msgpack of the event itself. Publishing happens after commit, from the
events a write returns, so what was published is always in the log, and
``changes_since`` can give a UI exactly what it missed.

A sync response is applied by :meth:`Cache.apply_sync` in ONE transaction
with its ``next_batch``: after a crash the daemon resumes from a token whose
events are all stored.

There is one writer (the daemon's cache thread), so ``seq`` is assigned here
from ``_last_seq`` and the connection is never shared between threads at once.

A wrong key opens without error and fails on the first read, so
:meth:`Cache.open` reads ``sqlite_master`` right after keying and turns that
failure into :class:`~skiffyd.errors.CacheWrongKeyError`.
"""

from __future__ import annotations

import json
import os
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import apsw
import msgspec

from ipc_schema import (
    ChangesResult,
    LoggedEvent,
    MessageAdded,
    MessageInfo,
    MessageUpdated,
    RoomInfo,
    RoomUpdated,
)
from skiffyd.cache.migrations import MIGRATIONS
from skiffyd.core.outbox import OutboxItem
from skiffyd.core.sync import ROOM_FIELDS, SyncPlan, room_display_name
from skiffyd.errors import CacheError, CacheWrongKeyError, UnknownRoomError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

#: How many change-log rows are kept. A UI that asks for an older seq is told
#: to reload (``reset``). Trimmed in bulk, not per write.
CHANGELOG_RETENTION = 100_000
_TRIM_SLACK = 10_000

_event_encoder = msgspec.msgpack.Encoder()
_event_decoder: msgspec.msgpack.Decoder[LoggedEvent] = msgspec.msgpack.Decoder(LoggedEvent)  # type: ignore[arg-type,unused-ignore]

_ROOM_COLUMNS = ("room_id", *ROOM_FIELDS, "display_name")
_MESSAGE_COLUMNS = "event_id, room_id, sender, body, ts, status, txn_id, msgtype"


def _message_from_row(row: tuple[Any, ...]) -> MessageInfo:
    return MessageInfo(
        event_id=row[0],
        room_id=row[1],
        sender=row[2],
        body=row[3],
        ts=row[4],
        status=row[5],
        txn_id=row[6],
        msgtype=row[7],
    )


class Cache:
    def __init__(self, conn: apsw.Connection, own_user_id: str) -> None:
        self._conn = conn
        self._own_user_id = own_user_id
        self._last_seq = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM changelog") or 0

    # ------------------------------------------------------------------ open

    @classmethod
    def open(cls, path: Path, key_hex: str, own_user_id: str) -> Cache:
        if len(key_hex) != 64 or any(c not in "0123456789abcdef" for c in key_hex):
            raise CacheError("the cache key must be 64 lowercase hex digits")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created 0600 before SQLite touches it (SQLite honours an existing mode).
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        try:
            conn = apsw.Connection(str(path))
        except apsw.Error as exc:
            raise CacheError(f"cannot open the cache file: {type(exc).__name__}") from exc
        try:
            conn.execute(f"PRAGMA hexkey='{key_hex}'")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
        except apsw.NotADBError as exc:
            conn.close()
            raise CacheWrongKeyError(
                "the cache cannot be decrypted with the key in the keyring "
                "(wrong key, or not a skiffyd cache); log out and in again to start a new one",
                details={"path": str(path)},
            ) from exc
        except apsw.Error as exc:
            conn.close()
            raise CacheError(f"cannot read the cache: {type(exc).__name__}") from exc
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed sync or outbox row survives power loss, not only a crash.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.setbusytimeout(5000)
        migrate(conn)
        return cls(conn, own_user_id)

    def close(self) -> None:
        self._conn.close()

    # --------------------------------------------------------------- helpers

    def _scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self._one(sql, params)
        return None if row is None else row[0]

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        row: Any = self._conn.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        rows: Any = self._conn.execute(sql, params).fetchall()
        return [tuple(r) for r in rows]

    @contextmanager
    def _transaction(self) -> Iterator[list[LoggedEvent]]:
        """One write transaction; yields the list the change log is built in."""
        events: list[LoggedEvent] = []
        start_seq = self._last_seq
        try:
            with self._conn:
                yield events
                self._append_changelog(events)
        except BaseException:
            self._last_seq = start_seq
            events.clear()
            raise

    def _log(self, events: list[LoggedEvent], event: LoggedEvent) -> None:
        events.append(event)

    def _append_changelog(self, events: list[LoggedEvent]) -> None:
        if not events:
            return
        rows = []
        for ev in events:
            self._last_seq += 1
            ev.seq = self._last_seq
            rows.append((ev.seq, _event_encoder.encode(ev)))
        self._conn.executemany("INSERT INTO changelog(seq, payload) VALUES (?, ?)", rows)
        oldest = self._last_seq - CHANGELOG_RETENTION - _TRIM_SLACK
        if oldest > 0 and self._last_seq % 1000 < len(events):
            self._conn.execute(
                "DELETE FROM changelog WHERE seq <= ?", (self._last_seq - CHANGELOG_RETENTION,)
            )

    # ------------------------------------------------------------ sync state

    @property
    def last_seq(self) -> int:
        return self._last_seq

    def next_batch(self) -> str | None:
        value = self._scalar("SELECT value FROM meta WHERE key = 'next_batch'")
        return value if isinstance(value, str) else None

    def apply_sync(self, plan: SyncPlan) -> list[LoggedEvent]:
        with self._transaction() as events:
            for patch in plan.rooms:
                self._apply_room_patch(events, patch.room_id, patch.changes)
            for msg in plan.messages:
                self._apply_message(events, msg)
            self._conn.execute(
                "INSERT INTO meta(key, value) VALUES ('next_batch', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (plan.next_batch,),
            )
        return events

    def note_joined(self, room_id: str) -> list[LoggedEvent]:
        """A join answered by the server: show the room now, sync fills it in."""
        with self._transaction() as events:
            self._apply_room_patch(events, room_id, {"membership": "join"})
        return events

    def _apply_room_patch(
        self, events: list[LoggedEvent], room_id: str, changes: dict[str, Any]
    ) -> None:
        row = self._one(
            f"SELECT {', '.join(_ROOM_COLUMNS)} FROM rooms WHERE room_id = ?", (room_id,)
        )
        if row is None:
            current: dict[str, Any] = {
                "room_id": room_id,
                "membership": "join",
                "name": None,
                "canonical_alias": None,
                "topic": None,
                "is_encrypted": 0,
                "joined_count": 0,
                "invited_count": 0,
                "heroes": None,
                "unread_count": 0,
                "display_name": None,
            }
        else:
            current = dict(zip(_ROOM_COLUMNS, row, strict=True))
        before = dict(current)
        for key, value in changes.items():
            if key == "heroes":
                value = json.dumps(value)
            elif key == "is_encrypted":
                value = int(bool(value) or bool(current["is_encrypted"]))
            current[key] = value
        current["display_name"] = room_display_name(
            name=current["name"],
            canonical_alias=current["canonical_alias"],
            heroes=json.loads(current["heroes"]) if current["heroes"] else None,
            joined_count=current["joined_count"] or 0,
            invited_count=current["invited_count"] or 0,
            own_user_id=self._own_user_id,
        )
        if current == before:
            return
        self._conn.execute(
            f"INSERT OR REPLACE INTO rooms({', '.join(_ROOM_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_ROOM_COLUMNS))})",
            tuple(current[c] for c in _ROOM_COLUMNS),
        )
        info = self._room_info(current)
        if row is None or info != self._room_info(before):
            self._log(events, RoomUpdated(seq=0, room=info))

    @staticmethod
    def _room_info(r: dict[str, Any]) -> RoomInfo:
        return RoomInfo(
            room_id=r["room_id"],
            name=r["display_name"] or "Empty room",
            topic=r["topic"],
            is_encrypted=bool(r["is_encrypted"]),
            member_count=r["joined_count"] or 0,
            unread_count=r["unread_count"] or 0,
            membership=r["membership"],
        )

    def _apply_message(self, events: list[LoggedEvent], msg: Any) -> None:
        if msg.txn_id is not None and msg.sender == self._own_user_id:
            row = self._one(
                "SELECT ord, event_id, status FROM messages WHERE txn_id = ?", (msg.txn_id,)
            )
            if row is not None:
                # Our own local echo came back: reconcile, never duplicate.
                ord_, event_id, status = row
                if event_id == msg.event_id and status == "sent":
                    return
                self._conn.execute(
                    "UPDATE messages SET event_id = ?, ts = ?, status = 'sent' WHERE ord = ?",
                    (msg.event_id, msg.ts, ord_),
                )
                self._conn.execute("DELETE FROM outbox WHERE txn_id = ?", (msg.txn_id,))
                self._log(events, MessageUpdated(seq=0, message=self._message_by_ord(ord_)))
                return
        cur = self._one(
            "INSERT INTO messages(event_id, room_id, sender, body, ts, status, txn_id, msgtype) "
            "VALUES (?, ?, ?, ?, ?, 'sent', ?, ?) ON CONFLICT(event_id) DO NOTHING "
            "RETURNING ord",
            (msg.event_id, msg.room_id, msg.sender, msg.body, msg.ts, msg.txn_id, msg.msgtype),
        )
        if cur is not None:
            self._log(events, MessageAdded(seq=0, message=self._message_by_ord(cur[0])))

    def _message_by_ord(self, ord_: int) -> MessageInfo:
        row = self._one(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE ord = ?", (ord_,))
        assert row is not None, "a message row vanished inside its own transaction"
        return _message_from_row(row)

    # ----------------------------------------------------------------- reads

    def rooms(self) -> list[RoomInfo]:
        rows = self._all(
            f"SELECT {', '.join(_ROOM_COLUMNS)} FROM rooms "
            "WHERE membership IN ('join', 'invite') ORDER BY display_name, room_id"
        )
        return [self._room_info(dict(zip(_ROOM_COLUMNS, r, strict=True))) for r in rows]

    def has_room(self, room_id: str) -> bool:
        return self._scalar("SELECT 1 FROM rooms WHERE room_id = ?", (room_id,)) is not None

    def room_is_encrypted(self, room_id: str) -> bool:
        return bool(self._scalar("SELECT is_encrypted FROM rooms WHERE room_id = ?", (room_id,)))

    def room_membership(self, room_id: str) -> str | None:
        value = self._scalar("SELECT membership FROM rooms WHERE room_id = ?", (room_id,))
        return value if isinstance(value, str) else None

    def messages(self, room_id: str, limit: int) -> list[MessageInfo]:
        if not self.has_room(room_id):
            raise UnknownRoomError("no such room in the cache", details={"room_id": room_id})
        rows = self._all(
            f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE room_id = ? ORDER BY ord DESC LIMIT ?",
            (room_id, limit),
        )
        return [_message_from_row(r) for r in reversed(rows)]

    def changes_since(self, seq: int, limit: int) -> ChangesResult:
        last = self._last_seq
        oldest = self._scalar("SELECT MIN(seq) FROM changelog")
        if (
            seq > last
            or (oldest is not None and seq < oldest - 1)
            or (oldest is None and seq < last)
        ):
            return ChangesResult(events=[], last_seq=last, reset=True)
        rows = self._all(
            "SELECT payload FROM changelog WHERE seq > ? ORDER BY seq LIMIT ?", (seq, limit + 1)
        )
        more = len(rows) > limit
        events = [_event_decoder.decode(r[0]) for r in rows[:limit]]
        return ChangesResult(events=events, last_seq=last, more=more)

    # ---------------------------------------------------------------- outbox

    def enqueue_message(
        self, *, room_id: str, body: str, msgtype: str, txn_id: str, ts: int
    ) -> list[LoggedEvent]:
        """Write the local echo and the outbox row, before any network I/O."""
        if not self.has_room(room_id):
            raise UnknownRoomError(
                "no such room in the cache (join it first)", details={"room_id": room_id}
            )
        with self._transaction() as events:
            ord_ = self._one(
                "INSERT INTO messages(event_id, room_id, sender, body, ts, status, txn_id, msgtype) "
                "VALUES (NULL, ?, ?, ?, ?, 'pending', ?, ?) RETURNING ord",
                (room_id, self._own_user_id, body, ts, txn_id, msgtype),
            )[0]  # type: ignore[index]
            self._conn.execute(
                "INSERT INTO outbox(txn_id, room_id, state, attempts) VALUES (?, ?, 'queued', 0)",
                (txn_id, room_id),
            )
            self._log(events, MessageAdded(seq=0, message=self._message_by_ord(ord_)))
        return events

    def outbox_items(self) -> list[OutboxItem]:
        rows = self._all(
            "SELECT m.ord, o.txn_id, o.room_id, m.msgtype, m.body, o.state, o.attempts "
            "FROM outbox o JOIN messages m ON m.txn_id = o.txn_id ORDER BY m.ord"
        )
        return [
            OutboxItem(
                ord=r[0],
                txn_id=r[1],
                room_id=r[2],
                msgtype=r[3],
                body=r[4],
                state=r[5],
                attempts=r[6],
            )
            for r in rows
        ]

    def outbox_count(self) -> int:
        return int(self._scalar("SELECT count(*) FROM outbox") or 0)

    def record_attempt(self, txn_id: str, error_code: str | None) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE txn_id = ?",
                (error_code, txn_id),
            )

    def mark_sent(self, txn_id: str, event_id: str) -> list[LoggedEvent]:
        with self._transaction() as events:
            self._conn.execute("DELETE FROM outbox WHERE txn_id = ?", (txn_id,))
            row = self._one(
                "SELECT ord, event_id, status FROM messages WHERE txn_id = ?", (txn_id,)
            )
            if row is None or (row[1] == event_id and row[2] == "sent"):
                return events  # already reconciled by sync
            # The sync copy may have been stored first under its event id.
            self._conn.execute(
                "DELETE FROM messages WHERE event_id = ? AND ord != ?", (event_id, row[0])
            )
            self._conn.execute(
                "UPDATE messages SET event_id = ?, status = 'sent' WHERE ord = ?",
                (event_id, row[0]),
            )
            self._log(events, MessageUpdated(seq=0, message=self._message_by_ord(row[0])))
        return events

    def mark_failed(self, txn_id: str, reason: str) -> list[LoggedEvent]:
        with self._transaction() as events:
            self._conn.execute(
                "UPDATE outbox SET state = 'failed', last_error = ? WHERE txn_id = ?",
                (reason, txn_id),
            )
            row = self._one("SELECT ord FROM messages WHERE txn_id = ?", (txn_id,))
            if row is not None:
                self._conn.execute("UPDATE messages SET status = 'failed' WHERE ord = ?", row)
                self._log(events, MessageUpdated(seq=0, message=self._message_by_ord(row[0])))
        return events


def migrate(conn: apsw.Connection) -> None:
    """Run the numbered migrations past ``PRAGMA user_version``, each atomically."""
    version = int(conn.execute("PRAGMA user_version").fetchall()[0][0] or 0)
    if version > len(MIGRATIONS):
        raise CacheError(
            f"the cache was written by a newer skiffyd (schema {version}, "
            f"this one knows {len(MIGRATIONS)})"
        )
    for number, sql in enumerate(MIGRATIONS[version:], start=version + 1):
        with conn:
            conn.execute(sql)
            conn.execute(f"PRAGMA user_version = {number}")
