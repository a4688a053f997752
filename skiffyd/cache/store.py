"""The encrypted cache: SQL only, synchronous, no trio.

Theory of operation
-------------------
One SQLite file per account, encrypted by SQLite3 Multiple Ciphers
(apsw-sqlite3mc; AEGIS-256, ChaCha20-Poly1305 for older caches) with a
256-bit key that lives in the keyring. It is the daemon's single source of
truth: UIs read only from it, the network only writes into it.

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
:attr:`Cache.last_seq`, which the event loop reads, counts a transaction's
seqs only once it has committed.

A wrong key opens without error and fails on the first read, so
:meth:`Cache.open` reads ``sqlite_master`` right after keying and turns that
failure into :class:`~skiffyd.errors.CacheWrongKeyError`. The key is used
raw, with no key derivation (:data:`KEYINGS`).
"""

from __future__ import annotations

import dataclasses
import gc
import json
import os
import secrets
import time
from collections import OrderedDict
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import apsw
import msgspec

from ipc_schema import (
    ChangesResult,
    ErrorCode,
    GapInfo,
    LoggedEvent,
    MemberInfo,
    MemberUpdated,
    MessageAdded,
    MessageInfo,
    MessageRemoved,
    MessageUpdated,
    OutboxItemInfo,
    OutboxUpdated,
    RoomInfo,
    RoomUpdated,
)
from skiffyd.cache.migrations import MIGRATIONS
from skiffyd.core.outbox import OutboxItem, carry_over, fill_references, is_event_id
from skiffyd.core.sync import (
    ROOM_FIELDS,
    CryptoHook,
    MemberChange,
    Receipt,
    RoomSync,
    SyncPlan,
    room_display_name,
)
from skiffyd.core.timeline import (
    MESSAGE_ROWS,
    Display,
    Relation,
    TimelineItem,
    aggregate,
    classify,
    summarize,
)
from skiffyd.core.wire import ClientEvent, UnsignedData
from skiffyd.errors import CacheError, CacheWrongKeyError, OutboxError, UnknownRoomError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable, Iterator, Sequence

T = TypeVar("T")

#: A ``messages`` read: the rows, oldest first, and the gaps among them.
MessagesAnswer = tuple[list[MessageInfo], list[GapInfo]]
#: What a ``messages`` answer is kept under: (room id, limit).
AnswerKey = tuple[str, int]

#: The page cache of the connection, in KiB.
PAGE_CACHE_KIB = 8192
#: The reader's page cache, in KiB (SQLite's default): it serves small reads.
READER_PAGE_CACHE_KIB = 2048
#: Messages the reader keeps of its recent ``messages`` answers, all answers
#: together (see :meth:`CacheReader.messages`): a few rooms' worth of what a
#: UI shows. Bodies are at most 64 KiB, so this is 25 MiB at the very worst
#: and well under 1 MiB for chat.
READER_ANSWER_ROWS = 400
#: After a write, the daemon reads again on the cache thread, at once, the
#: most recently used of the reader's kept answers, at most this many, so a
#: UI told of the change by an event finds the new answer already made
#: (:meth:`Cache.run_then_answer`, :meth:`CacheReader.adopt`): one per UI
#: looking at a room, for a handful of UIs.
REFRESH_ANSWERS = 8
#: ... and only those a UI asked for within this many seconds: a room nobody
#: has looked at for that long is not read again at every sync.
REFRESH_WINDOW_S = 600.0

#: The page size of a new cache file (SQLite's default is 4 KiB). Each page
#: is encrypted and authenticated on its own, with a fixed cost per page on
#: top of the per-byte one, and a B-tree of bigger pages splits less: an
#: initial sync's inserts take about 30% less CPU with 16 KiB pages (32 and
#: 64 KiB did no better; docs/benchmarks.md). An existing cache keeps the
#: size it was made with.
PAGE_SIZE = 16384

#: How the cache key is applied, newest first: a cache opens with the first
#: that decrypts it, and a new one is made with the first. Each is a list of
#: pragmas; ``{key}`` is the 64 hex digits of the key.
#:
#: The key is 256 random bits from the keyring, not a password, so it is
#: given raw (``raw:``): no key derivation at all. Stretching it (SQLite3MC's
#: default, 64,007 rounds of PBKDF2-SHA256) cost ~40 ms of every open and
#: adds nothing an attacker would notice. New caches use AEGIS-256 (an AEAD
#: like SQLite3MC's default ChaCha20-Poly1305, with a 256-bit key and nonce),
#: which encrypts and authenticates a page in about half the time on a CPU
#: with AES instructions: an initial sync's commit ~0.03 s less (docs/
#: benchmarks.md). Caches made before keep the keying they were made with.
KEYINGS: tuple[tuple[str, ...], ...] = (
    ("PRAGMA cipher='aegis'", "PRAGMA algorithm='aegis-256'", "PRAGMA key='raw:{key}'"),
    # 2026-11-30: ChaCha20-Poly1305 with one round of PBKDF2.
    ("PRAGMA cipher='chacha20'", "PRAGMA kdf_iter=1", "PRAGMA hexkey='{key}'"),
    # The first caches: SQLite3MC's defaults (ChaCha20-Poly1305, 64,007 rounds).
    ("PRAGMA hexkey='{key}'",),
)

#: The lengths IN lists are padded to (see :meth:`Cache._in`).
_IN_SIZES = (4, 16, 64, 256)
_IN_MARKS = {n: ", ".join("?" * n) for n in _IN_SIZES}

#: How many change-log rows are kept. A UI that asks for an older seq is told
#: to reload (``reset``). Trimmed in bulk, not per write.
CHANGELOG_RETENTION = 100_000
_TRIM_SLACK = 10_000

#: Distance between consecutive live timeline rows: backfilled history goes
#: into the space below a gap's upper bound, one position per event, so a
#: gap can hold 2**32 events before positions would need renumbering.
POS_STRIDE = 1 << 32

#: The highest message ord ever handed out, stored or deleted (migration 3).
_LAST_ORD_SQL = (
    "max(COALESCE((SELECT value FROM meta WHERE key = 'messages_last_ord'), 0), "
    "COALESCE((SELECT MAX(ord) FROM messages), 0))"
)

_event_encoder = msgspec.msgpack.Encoder()
_event_decoder: msgspec.msgpack.Decoder[LoggedEvent] = msgspec.msgpack.Decoder(LoggedEvent)  # type: ignore[arg-type,unused-ignore]
_pack = msgspec.msgpack.Encoder().encode
_json_encode = msgspec.json.Encoder().encode


def _json(value: Any) -> str:
    """Compact JSON for the derived ``reactions`` and ``my_reactions`` columns
    (msgspec: several times faster than ``json.dumps`` on a sync's rows).
    Rows written before used ``json.dumps``'s spacing: see :func:`_same_derived`."""
    return _json_encode(value).decode()


def _same_derived(stored: tuple[Any, ...], derived: tuple[Any, ...]) -> bool:
    """Whether a row's stored derived columns say what ``derived`` says,
    whatever JSON spacing and escaping wrote its reactions."""
    if stored == derived:
        return True
    if stored[:4] != derived[:4] or stored[6:] != derived[6:]:
        return False
    for a, b in ((stored[4], derived[4]), (stored[5], derived[5])):
        if (a is None) != (b is None):
            return False
        if a is not None and a != b and json.loads(a) != json.loads(b):
            return False
    return True


_unpack_dict = msgspec.msgpack.Decoder(dict[str, Any]).decode

_ROOM_COLUMNS = (
    "room_id",
    *ROOM_FIELDS,
    "is_direct",
    "direct_user",
    "read_receipt",
    "unread_count",
    "display_name",
)
_MESSAGE_COLUMNS = (
    "event_id, room_id, sender, body, ts, status, txn_id, msgtype, type, state_key, "
    "COALESCE(display, content), edited, redacted, reactions, my_reactions, reply_to, thread_root, "
    "thread_count, thread_latest, encrypted"
)


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _message_from_row(row: tuple[Any, ...], display: dict[str, Any] | None = None) -> MessageInfo:
    """A row of ``_MESSAGE_COLUMNS`` as a MessageInfo; ``display``, when the
    caller already holds it, is shared instead of decoded from the row."""
    if display is None:
        display = _unpack_dict(row[10])
    fmt = _str_or_none(display.get("format"))
    return MessageInfo(
        event_id=row[0],
        room_id=row[1],
        sender=row[2],
        body=row[3],
        ts=row[4],
        status=row[5],
        txn_id=row[6],
        msgtype=row[7],
        type=row[8],
        state_key=row[9],
        format=fmt,
        formatted_body=_str_or_none(display.get("formatted_body")) if fmt else None,
        edited=bool(row[11]),
        redacted=bool(row[12]),
        reactions=json.loads(row[13]) if row[13] else {},
        my_reactions=json.loads(row[14]) if row[14] else [],
        reply_to=row[15],
        thread_root=row[16],
        thread_count=row[17],
        thread_latest=row[18],
        content=display,
        encrypted=bool(row[19]),
    )


#: Why a carried outbox item for a room the account is not in went in failed.
CARRIED_NO_ROOM = "carried over from a session that ended: the account is not in this room now"

#: An outbox item's columns (the outbox and carried tables alike).
_ITEM_COLUMNS = "txn_id, room_id, kind, event_type, content, target, state, last_error"


def _outbox_item(row: tuple[Any, ...], seq: int = 0, attempts: int = 0) -> OutboxItem:
    """A row of ``_ITEM_COLUMNS`` as an :class:`OutboxItem`."""
    return OutboxItem(
        seq=seq,
        txn_id=row[0],
        room_id=row[1],
        kind=row[2],
        event_type=row[3],
        content=_unpack_dict(row[4]),
        target=row[5],
        state=row[6],
        attempts=attempts,
        last_error=row[7],
    )


#: Rows whose body is the content's own ``body`` (see ``summarize``).
_BODY_ROWS = frozenset({"m.room.message", "m.sticker"})

#: body, msgtype, display (packed; None when it is the content itself),
#: edited, reactions, my_reactions, thread_count, thread_latest: the derived
#: columns of a row, in order.
Derived = tuple[str, str | None, bytes | None, int, str | None, str | None, int, str | None]


def _derive_display(
    *,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: dict[str, Any],
    prev_content: dict[str, Any] | None,
    redacted: bool,
    relations: list[Relation],
    names: dict[str, str],
    own_user_id: str,
) -> tuple[Derived, Display]:
    """A row's derived columns from its original and its relations (pure),
    and the display they come from."""
    display = aggregate(
        event_type=event_type,
        sender=sender,
        content=content,
        redacted=redacted,
        relations=relations,
        own_user_id=own_user_id,
    )
    body = summarize(
        event_type=event_type,
        sender=sender,
        state_key=state_key,
        content=display.content,
        prev_content=prev_content,
        redacted=display.redacted,
        names=names,
    )
    msgtype = _str_or_none(display.content.get("msgtype")) if event_type in MESSAGE_ROWS else None
    return (
        body,
        msgtype,
        None if display.content is content else _pack(display.content),
        int(display.edited),
        _json(display.reactions) if display.reactions else None,
        _json(display.my_reactions) if display.my_reactions else None,
        display.thread_count,
        display.thread_latest,
    ), display


#: The columns :func:`_relation_from_row` reads, in order.
_RELATION_COLUMNS = "event_id, target, rel_type, sender, ts, key, new_content"


_INSERT_RELATION = (
    "INSERT OR IGNORE INTO relations(event_id, room_id, target, rel_type, sender, ts, key, "
    "new_content, redacted) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)"
)


def _relation_row(room_id: str, rel: Relation, redacted: bool) -> tuple[Any, ...]:
    """The parameters of :data:`_INSERT_RELATION` for ``rel``."""
    return (
        rel.event_id,
        room_id,
        rel.target,
        rel.rel_type,
        rel.sender,
        rel.ts,
        rel.key,
        _pack(rel.new_content) if rel.new_content is not None else None,
        int(redacted),
    )


def _relation_from_row(r: tuple[Any, ...]) -> Relation:
    return Relation(
        event_id=r[0],
        target=r[1],
        rel_type=r[2],
        sender=r[3],
        ts=r[4],
        key=r[5],
        new_content=_unpack_dict(r[6]) if r[6] is not None else None,
    )


def _room_info(r: dict[str, Any]) -> RoomInfo:
    return RoomInfo(
        room_id=r["room_id"],
        name=r["display_name"] or "Empty room",
        topic=r["topic"],
        is_encrypted=bool(r["is_encrypted"]),
        member_count=r["joined_count"] or 0,
        unread_count=r["unread_count"] or 0,
        membership=r["membership"],
        avatar_url=r["avatar_url"],
        join_rule=r["join_rule"],
        notification_count=r["notification_count"] or 0,
        highlight_count=r["highlight_count"] or 0,
        tags=json.loads(r["tags"]) if r["tags"] else [],
        is_direct=bool(r["is_direct"]),
        direct_user=r["direct_user"],
        inviter=r["inviter"],
        successor=r["successor"],
        predecessor=r["predecessor"],
        fully_read=r["fully_read"],
        read_receipt=r["read_receipt"],
    )


_EMPTY_ROOM: dict[str, Any] = {c: None for c in _ROOM_COLUMNS} | {
    "membership": "join",
    "is_encrypted": 0,
    "joined_count": 0,
    "invited_count": 0,
    "notification_count": 0,
    "highlight_count": 0,
    "is_direct": 0,
    "unread_count": 0,
}


@dataclass(slots=True)
class Gap:
    gap_id: int
    room_id: str
    token: str
    upper_pos: int
    after_id: str | None
    before_id: str | None


@dataclass(slots=True)
class _Work:
    """What one write transaction touched, to derive and log once at the end."""

    added: list[int]
    touched_targets: set[str]
    rooms: dict[str, dict[str, Any] | None]  # room row before the transaction
    #: Room rows as they are now, read once and written once at the end
    #: (:meth:`Cache._finish`); None: no such room.
    current: dict[str, dict[str, Any] | None] = dataclasses.field(default_factory=dict)
    #: The stored m.direct map as room id -> user, read once (None: not yet).
    direct_by_room: dict[str, str] | None = None
    #: The highest message ord handed out so far (None: not read yet).
    last_ord: int | None = None
    #: Rows that changed outside their display (a local echo reconciled).
    changed: set[int] = dataclasses.field(default_factory=set)
    #: Outbox items that sync showed delivered.
    outbox_done: list[OutboxItemInfo] = dataclasses.field(default_factory=list)
    #: Rooms that got rows (no SQL needed to find them again).
    added_rooms: set[str] = dataclasses.field(default_factory=set)
    #: The event ids of the rows in ``added``.
    added_ids: set[str] = dataclasses.field(default_factory=set)
    #: Rows added with their display already derived (the sync fast path).
    derived: set[int] = dataclasses.field(default_factory=set)
    infos: dict[int, MessageInfo] = dataclasses.field(default_factory=dict)
    #: An initial sync: message rows are stored, not logged one by one.
    quiet: bool = False
    #: The relations and redactions tables were empty when the transaction
    #: began: what they hold, this transaction wrote, and it keeps that in
    #: memory too (``relations``, ``redacted_ids``), so they are not read (a
    #: new cache's first sync skips ~3,000 statements and ~100,000 index
    #: probes).
    fresh: bool = False
    #: The messages table was empty when the transaction began: a room has
    #: rows only if it is in ``added_rooms``, an event only if in ``added_ids``.
    no_rows_before: bool = False
    #: The events this transaction stored a redaction of.
    redacted_ids: set[str] = dataclasses.field(default_factory=set)
    #: The rooms table was empty when the transaction began: rooms are
    #: written only at its end (:meth:`Cache._finish`), so none is there yet.
    no_rooms_before: bool = False
    #: The relations this transaction stored, by event id: [relation,
    #: redacted], the first stored of an id winning as in the table; and
    #: their ids by target, in the order stored. In a fresh transaction they
    #: are all the table holds, so it is read from here.
    relations: dict[str, list[Any]] = dataclasses.field(default_factory=dict)
    relations_by_target: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    #: With ``no_rows_before``: the position of every row this transaction
    #: stored, by event id (all the positions there are).
    positions: dict[str, int] = dataclasses.field(default_factory=dict)
    #: The receipts table was empty when the transaction began; then the
    #: account's own receipts this transaction stored, by room and receipt
    #: type: (event id, ts), as the table holds them.
    no_receipts_before: bool = False
    own_receipts: dict[str, dict[str, tuple[str, int]]] = dataclasses.field(default_factory=dict)
    #: Rooms new to the cache in this transaction: the display names of all
    #: the members stored for them (user id -> name), as this sync gave them.
    member_names: dict[str, dict[str, str]] = dataclasses.field(default_factory=dict)

    def note_relation(self, rel: Relation, redacted: bool) -> None:
        """``rel`` was stored (INSERT OR IGNORE: an id stored before stays)."""
        self.touched_targets.add(rel.target)
        if rel.event_id not in self.relations:
            self.relations[rel.event_id] = [rel, redacted]
            self.relations_by_target.setdefault(rel.target, []).append(rel.event_id)

    def note_relations_redacted(self, event_ids: Iterable[str]) -> None:
        for event_id in event_ids:
            entry = self.relations.get(event_id)
            if entry is not None:
                entry[1] = True


class CacheReads:
    """The queries both connections to a cache answer: the writer's
    (:class:`Cache`, on the daemon's cache thread) and the event loop's
    (:class:`CacheReader`)."""

    _conn: apsw.Connection

    def _scalar(self, sql: str, params: tuple[Any, ...] = ()) -> Any:
        row = self._one(sql, params)
        return None if row is None else row[0]

    def _one(self, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...] | None:
        row: Any = self._conn.execute(sql, params).fetchone()
        return None if row is None else tuple(row)

    def _all(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        rows: Any = self._conn.execute(sql, params).fetchall()
        return [tuple(r) for r in rows]

    def has_room(self, room_id: str) -> bool:
        return self._scalar("SELECT 1 FROM rooms WHERE room_id = ?", (room_id,)) is not None

    def messages(self, room_id: str, limit: int) -> MessagesAnswer:
        """The newest ``limit`` rows, oldest first, and the gaps among them."""
        with self._conn:  # one read transaction: the rows and gaps agree
            found = self._messages(room_id, limit)
        return found

    def _messages(self, room_id: str, limit: int) -> MessagesAnswer:
        rows = self._all(
            f"SELECT {_MESSAGE_COLUMNS}, pos FROM messages WHERE room_id = ? "
            "ORDER BY pos DESC LIMIT ?",
            (room_id, limit),
        )
        if not rows and not self.has_room(room_id):
            raise UnknownRoomError("no such room in the cache", details={"room_id": room_id})
        rows.reverse()
        lowest = rows[0][-1] if rows and len(rows) == limit else None
        gaps = [
            GapInfo(after=r[0], before=r[1])
            for r in self._all(
                "SELECT after_id, before_id FROM gaps WHERE room_id = ? AND upper_pos > ? "
                "ORDER BY upper_pos",
                (room_id, lowest if lowest is not None else -(1 << 62)),
            )
        ]
        return [_message_from_row(r[:-1]) for r in rows], gaps

    def outbox_count(self) -> int:
        """Outbox items (``status``'s ``pending_outbox``), counting those
        carried over from an ended session that wait for the first sync."""
        return int(
            self._scalar("SELECT (SELECT count(*) FROM outbox) + (SELECT count(*) FROM carried)")
            or 0
        )

    def event_id_for_txn(self, txn_id: str) -> str | None:
        """The event id an earlier item of ours got (None while it is pending)."""
        value = self._scalar("SELECT event_id FROM messages WHERE txn_id = ?", (txn_id,))
        return value if isinstance(value, str) else None

    def carry_out(self) -> list[tuple[OutboxItem, bool]]:
        """What the next session of this account takes over from this cache's
        outbox (:func:`~skiffyd.core.outbox.carry_over`), each item with
        whether it has a local echo; items this cache itself carried in and
        never got to move into its outbox come first. Read-only: a cache of
        any schema since the first."""
        rows: list[tuple[Any, ...]] = []
        with self._conn:  # one read transaction
            if self._scalar(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'carried'"
            ):
                rows += self._all(f"SELECT {_ITEM_COLUMNS}, echo FROM carried ORDER BY seq")
            rows += self._all(
                f"SELECT {_ITEM_COLUMNS}, "
                "EXISTS (SELECT 1 FROM messages WHERE messages.txn_id = outbox.txn_id) "
                "FROM outbox ORDER BY seq"
            )
            items = [_outbox_item(r, seq=i) for i, r in enumerate(rows)]
            echo = {r[0]: bool(r[8]) for r in rows}
            carried = carry_over(items, self.event_id_for_txn)
        return [(item, echo[item.txn_id]) for item in carried]


class Cache(CacheReads):
    def __init__(
        self, conn: apsw.Connection, own_user_id: str, keying: tuple[str, ...] = KEYINGS[0]
    ) -> None:
        self._conn = conn
        self._own_user_id = own_user_id
        #: The one of :data:`KEYINGS` this cache was opened with.
        self._keying = keying
        self._last_seq = self._scalar("SELECT COALESCE(MAX(seq), 0) FROM changelog") or 0
        #: ``_last_seq`` as of the last commit (see :attr:`last_seq`).
        self._committed_seq = self._last_seq
        #: id() of a logged message event -> (kind 1 added / 2 updated, its row's ord).
        self._msg_refs: dict[int, tuple[int, int]] = {}
        #: Transactions this connection committed (:meth:`commits`).
        self._commits = 0
        #: SQLite's automatic checkpoint, which the hook below replaces.
        self._checkpoint_pages = int(self._scalar("PRAGMA wal_autocheckpoint") or 0)
        conn.set_wal_hook(self._committed)

    # ------------------------------------------------------------------ open

    @classmethod
    def open(cls, path: Path, key_hex: str, own_user_id: str) -> Cache:
        if len(key_hex) != 64 or any(c not in "0123456789abcdef" for c in key_hex):
            raise CacheError("the cache key must be 64 lowercase hex digits")
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        # Created 0600 before SQLite touches it (SQLite honours an existing mode).
        fd = os.open(path, os.O_CREAT | os.O_RDWR, 0o600)
        os.close(fd)
        conn, keying = _open_any(path, key_hex, KEYINGS)
        # Only takes effect on a file with no pages yet (a new cache); it must
        # come before WAL mode, which fixes the page size.
        conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
        conn.execute("PRAGMA journal_mode=WAL")
        # FULL: a committed sync or outbox row survives power loss, not only a crash.
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        # 8 MiB of page cache (SQLite's default is 2 MiB): the indexes a sync
        # writes at random places (event ids, relations, members) stay in
        # memory instead of being spilled and read back, decrypted, from the
        # WAL (a 1,000-room initial sync: ~15% less CPU; 16 MiB did no better).
        conn.execute(f"PRAGMA cache_size=-{PAGE_CACHE_KIB}")
        conn.setbusytimeout(5000)
        migrate(conn)
        return cls(conn, own_user_id, keying)

    def close(self) -> None:
        self._conn.close()

    def commits(self) -> int:
        """How many transactions this connection has committed, counted
        right after each one: every write, in a transaction or alone, in
        whatever method. A reader of this cache in the same process compares
        it instead of asking SQLite whether the file changed
        (:meth:`open_reader`); this connection is the only one that writes
        the file while the daemon holds it (the instance lock). Read from any
        thread."""
        return self._commits

    def _committed(self, conn: apsw.Connection, db: str, pages: int) -> int:
        """SQLite's WAL hook: called on the writing thread once a commit has
        taken place (its changes are visible to readers, its write lock
        released). Counts the commit; then checkpoints as SQLite's own hook
        does, which a hook of ours replaces: passively, once the WAL holds
        ``wal_autocheckpoint`` pages. (Setting that pragma on this connection
        would put SQLite's hook back in place of this one: commits would go
        uncounted and readers would reuse stale answers.)"""
        self._commits += 1
        # Nothing may raise out of here: the commit has taken place, and apsw
        # would report it to the statement's caller as failed. A checkpoint
        # that fails waits for the next commit, as with SQLite's own hook.
        with suppress(Exception):
            if 0 < self._checkpoint_pages <= pages:
                conn.wal_checkpoint(db)
        return apsw.SQLITE_OK

    def run_then_answer(
        self, fn: Callable[..., T], args: tuple[Any, ...], keys: Sequence[AnswerKey]
    ) -> tuple[T, dict[AnswerKey, MessagesAnswer]]:
        """``fn(*args)``, then, if it changed any row through this
        connection, the ``messages`` answers for ``keys`` (room, limit) as
        they are now: on the cache thread, from pages the write just
        touched. A room no longer in the cache is left out. A failing
        ``fn`` raises as usual; if this connection is closed or SQLite
        fails (``fn`` was :meth:`close`), no answers.

        ``total_changes`` counts every row an INSERT, UPDATE or DELETE of
        this connection changed (rolled back ones too): a call that changed
        none wrote nothing these answers show.
        """
        before = self._conn.total_changes()
        result = fn(*args)
        answers: dict[AnswerKey, MessagesAnswer] = {}
        try:
            if keys and self._conn.total_changes() != before:
                for key in keys:
                    try:
                        answers[key] = self.messages(*key)
                    except UnknownRoomError:
                        continue
        except apsw.Error:
            return result, {}
        return result, answers

    def open_reader(self, key_hex: str, *, answer_rows: int = READER_ANSWER_ROWS) -> CacheReader:
        """A :class:`CacheReader` on this cache's file, keyed as this one is
        (an older cache's keying is not searched for again), that tells a
        change by this cache's :meth:`commits`."""
        return CacheReader.open(
            Path(self._conn.filename),
            key_hex,
            (self._keying,),
            answer_rows=answer_rows,
            commits=self.commits,
        )

    @contextmanager
    def _transaction(self) -> Iterator[list[LoggedEvent]]:
        """One write transaction; yields the list the change log is built in."""
        events: list[LoggedEvent] = []
        start_seq = self._last_seq
        try:
            with self._conn:
                yield events
                self._append_changelog(events)
            self._committed_seq = self._last_seq
        except apsw.Error as exc:
            # Translated at this one boundary; the transaction rolled back whole.
            self._msg_refs = {}
            self._last_seq = start_seq
            events.clear()
            raise CacheError(
                f"a cache write failed and was rolled back ({type(exc).__name__})"
            ) from exc
        except BaseException:
            self._msg_refs = {}
            self._last_seq = start_seq
            events.clear()
            raise

    def _log(
        self, events: list[LoggedEvent], event: LoggedEvent, *, ord_: int | None = None
    ) -> None:
        """Add ``event`` to the transaction's change log; a message event may
        name its row (``ord_``) instead of being stored whole."""
        events.append(event)
        if ord_ is not None:
            self._msg_refs[id(event)] = (1 if isinstance(event, MessageAdded) else 2, ord_)

    def _append_changelog(self, events: list[LoggedEvent]) -> None:
        if not events:
            return
        rows: list[tuple[int, bytes | None, int | None, int | None]] = []
        refs, self._msg_refs = self._msg_refs, {}
        seq = self._last_seq
        encode = _event_encoder.encode
        for ev in events:
            seq += 1
            ev.seq = seq
            ref = refs.get(id(ev))
            if ref is not None:
                rows.append((seq, None, ref[0], ref[1]))
            else:
                rows.append((seq, encode(ev), None, None))
        self._last_seq = seq
        self._conn.executemany(
            "INSERT INTO changelog(seq, payload, kind, msg_ord) VALUES (?, ?, ?, ?)", rows
        )
        oldest = self._last_seq - CHANGELOG_RETENTION - _TRIM_SLACK
        if oldest > 0 and self._last_seq % 1000 < len(events):
            self._conn.execute(
                "DELETE FROM changelog WHERE seq <= ?", (self._last_seq - CHANGELOG_RETENTION,)
            )

    # ------------------------------------------------------------ sync state

    @property
    def last_seq(self) -> int:
        """The seq of the last committed change. Read from the event loop while
        a transaction may be open on the cache thread: its seqs count only once
        it commits (a UI told a seq of changes it cannot read yet would skip
        them when they are published)."""
        return self._committed_seq

    @property
    def log_id(self) -> str:
        """This change log's identity: random, made once with the cache."""
        value = self._scalar("SELECT value FROM meta WHERE key = 'log_id'")
        if isinstance(value, str):
            return value
        value = secrets.token_hex(16)
        with self._conn:
            self._conn.execute("INSERT INTO meta(key, value) VALUES ('log_id', ?)", (value,))
        return value

    def next_batch(self) -> str | None:
        value = self._scalar("SELECT value FROM meta WHERE key = 'next_batch'")
        return value if isinstance(value, str) else None

    def apply_sync(self, plan: SyncPlan) -> list[LoggedEvent]:
        """Apply one /sync response, with its token, in ONE transaction."""
        # What an apply allocates (items, rows, MessageInfos, events) is
        # acyclic and mostly short-lived, and the decoded response is large:
        # the cyclic collector would rescan them every few hundred rows
        # (measured: about a quarter of a big initial sync's CPU time when
        # it scanned the response too, still ~5% with the response frozen).
        # It is paused for the one transaction; reference counting frees
        # everything as before, and the next collection after it runs as usual.
        gc.freeze()
        paused = gc.isenabled()
        gc.disable()
        try:
            return self._apply_sync(plan)
        finally:
            if paused:
                gc.enable()
            gc.unfreeze()

    def is_empty(self) -> bool:
        """No room yet: the next sync is the cache's first."""
        return self._scalar("SELECT 1 FROM rooms LIMIT 1") is None

    def _apply_sync(self, plan: SyncPlan) -> list[LoggedEvent]:
        with self._transaction() as events:
            work = _Work(added=[], touched_targets=set(), rooms={}, quiet=plan.initial)
            empty = self._one(
                "SELECT NOT EXISTS (SELECT 1 FROM relations) AND NOT EXISTS "
                "(SELECT 1 FROM redactions), NOT EXISTS (SELECT 1 FROM messages), "
                "NOT EXISTS (SELECT 1 FROM rooms), NOT EXISTS (SELECT 1 FROM receipts)"
            )
            assert empty is not None
            (
                work.fresh,
                work.no_rows_before,
                work.no_rooms_before,
                work.no_receipts_before,
            ) = map(bool, empty)
            for room in plan.rooms:
                self._apply_room_sync(events, work, room)
            if plan.direct is not None:
                self._apply_direct(work, plan.direct)
            self._finish(events, work)
            self._conn.execute(
                "INSERT INTO meta(key, value) VALUES ('next_batch', ?) "
                "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                (plan.next_batch,),
            )
        return events

    def note_joined(self, room_id: str, *, encrypted: bool = False) -> list[LoggedEvent]:
        """A join answered by the server: show the room now, sync fills it in."""
        changes: dict[str, Any] = {"membership": "join"}
        if encrypted:
            changes["is_encrypted"] = True
        with self._transaction() as events:
            work = _Work(added=[], touched_targets=set(), rooms={})
            self._patch_room(work, room_id, changes)
            self._finish(events, work)
        return events

    # ----------------------------------------------------------------- rooms

    def _room_row(self, room_id: str) -> dict[str, Any] | None:
        row = self._one(
            f"SELECT {', '.join(_ROOM_COLUMNS)} FROM rooms WHERE room_id = ?", (room_id,)
        )
        return None if row is None else dict(zip(_ROOM_COLUMNS, row, strict=True))

    def _current_room(self, work: _Work, room_id: str) -> dict[str, Any] | None:
        """The room's row as this transaction has it: read once, then kept in ``work``."""
        if room_id in work.current:
            return work.current[room_id]
        row = None if work.no_rooms_before else self._room_row(room_id)
        work.current[room_id] = row
        return row

    def _remember_room(self, work: _Work, room_id: str) -> dict[str, Any]:
        """The room's row now, remembering how it was when the transaction began.

        Changes go to the returned dict; :meth:`_finish` writes it once.
        """
        current = self._current_room(work, room_id)
        if room_id not in work.rooms:
            work.rooms[room_id] = None if current is None else dict(current)
        if current is None:
            current = work.current[room_id] = dict(_EMPTY_ROOM, room_id=room_id)
        return current

    def _write_room(self, row: dict[str, Any]) -> None:
        self._conn.execute(
            f"INSERT OR REPLACE INTO rooms({', '.join(_ROOM_COLUMNS)}) "
            f"VALUES ({', '.join('?' * len(_ROOM_COLUMNS))})",
            tuple(row[c] for c in _ROOM_COLUMNS),
        )

    def _patch_room(self, work: _Work, room_id: str, changes: dict[str, Any]) -> None:
        current = self._remember_room(work, room_id)
        for key, value in changes.items():
            if key in ("heroes", "tags"):
                value = json.dumps(value)
            elif key == "is_encrypted":
                value = int(bool(value) or bool(current["is_encrypted"]))
            current[key] = value

    def _derive_room(
        self,
        row: dict[str, Any],
        names: dict[str, str] | None = None,
        positions: dict[str, int] | None = None,
    ) -> None:
        """Display name and unread count, from the room's stored inputs.

        ``names``: every stored member's display name, when the caller knows
        them (a room new to the cache in this transaction), instead of a
        read; ``positions``: see :meth:`_unread`.
        """
        heroes = json.loads(row["heroes"]) if row["heroes"] else None
        hero_names: dict[str, str] = {}
        if heroes and names is not None:
            hero_names = {user: names[user] for user in heroes[:5] if user in names}
        elif heroes:
            for user_id, name in self._in(
                "SELECT user_id, display_name FROM members WHERE room_id = ? "
                "AND user_id IN ({marks}) AND display_name IS NOT NULL",
                heroes[:5],
                row["room_id"],
            ):
                hero_names[user_id] = name
        row["display_name"] = room_display_name(
            name=row["name"],
            canonical_alias=row["canonical_alias"],
            heroes=heroes,
            joined_count=row["joined_count"] or 0,
            invited_count=row["invited_count"] or 0,
            own_user_id=self._own_user_id,
            hero_names=hero_names,
        )
        row["unread_count"] = self._unread(row, positions)

    def _unread(self, row: dict[str, Any], positions: dict[str, int] | None = None) -> int:
        """Messages from others after the own read receipt, when it is known.

        ``positions``: every row's position by event id, when the caller
        holds them all (a transaction that began with no rows).
        """
        receipt = row["read_receipt"]
        if not receipt:
            pos = None
        elif positions is not None:
            pos = positions.get(receipt)
        else:
            pos = self._scalar("SELECT pos FROM messages WHERE event_id = ?", (receipt,))
        if pos is None:
            return int(row["notification_count"] or 0)
        marks = ", ".join("?" * len(MESSAGE_ROWS))
        return int(
            self._scalar(
                f"SELECT count(*) FROM messages WHERE room_id = ? AND pos > ? "
                f"AND sender != ? AND redacted = 0 AND type IN ({marks}) "
                "AND thread_root IS NULL",
                (row["room_id"], pos, self._own_user_id, *sorted(MESSAGE_ROWS)),
            )
            or 0
        )

    def _apply_direct(self, work: _Work, direct: dict[str, list[str]]) -> None:
        wanted = {room_id: user for user, rooms in direct.items() for room_id in rooms}
        current = {
            r[0]: r[1]
            for r in self._all("SELECT room_id, direct_user FROM rooms WHERE is_direct = 1")
        }
        # Rows this transaction changed are not written yet: theirs is the word.
        for room_id, row in work.current.items():
            current.pop(room_id, None)
            if row is not None and row["is_direct"]:
                current[room_id] = row["direct_user"]
        for room_id in sorted(set(current) - set(wanted)):
            self._patch_room(work, room_id, {"is_direct": 0, "direct_user": None})
        for room_id, user in wanted.items():
            if current.get(room_id) != user and self._current_room(work, room_id) is not None:
                self._patch_room(work, room_id, {"is_direct": 1, "direct_user": user})
        self._conn.execute(
            "INSERT INTO meta(key, value) VALUES ('m.direct', ?) "
            "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
            (json.dumps(direct),),
        )

    def _apply_room_sync(self, events: list[LoggedEvent], work: _Work, room: RoomSync) -> None:
        room_id = room.room_id
        was_known = self._current_room(work, room_id) is not None
        changes = room.changes
        if not was_known:
            # A room that shows up after m.direct named it is a direct chat.
            if work.direct_by_room is None:
                direct = self._scalar("SELECT value FROM meta WHERE key = 'm.direct'")
                work.direct_by_room = {
                    r: user
                    for user, rooms in (json.loads(direct) if direct else {}).items()
                    for r in rooms
                }
            user = work.direct_by_room.get(room_id)
            if user is not None:
                changes = dict(changes, is_direct=1, direct_user=user)
        self._patch_room(work, room_id, changes)
        latest = self._upsert_members(events, room_id, room.members, known=was_known)
        # The room's newest row: whether it has rows, where new ones go, and
        # (when it is not a pending echo) the event a gap would follow.
        top = (
            None
            if work.no_rows_before and room_id not in work.added_rooms
            else self._one(
                "SELECT pos, event_id FROM messages WHERE room_id = ? ORDER BY pos DESC LIMIT 1",
                (room_id,),
            )
        )
        had_rows = top is not None
        latest_before = None if top is None else top[1]
        if top is not None and latest_before is None:
            latest_before = self.latest_event_id(room_id)
        saw_create = any(item.type == "m.room.create" for item in room.items)
        # A room new to the cache has just had its members written, all of
        # them from this sync: their names need no reading back.
        names = None
        if not was_known:
            names = work.member_names[room_id] = {
                user: m.display_name for user, m in latest.items() if m.display_name is not None
            }
        else:
            work.member_names.pop(room_id, None)  # its members may have changed since
        first_new = self._store_batch(
            work,
            room_id,
            room.items,
            next_pos=None if top is None else top[0] + POS_STRIDE,
            names=names,
        )
        # A cut-short timeline, or a room's first rows, leave history to fetch.
        if room.prev_batch and (room.limited or not had_rows) and not saw_create:
            if first_new is not None:
                upper, before = first_new
            else:
                upper, before = self._next_pos(room_id), None
            self._conn.execute(
                "INSERT INTO gaps(room_id, token, upper_pos, after_id, before_id) "
                "VALUES (?, ?, ?, ?, ?)",
                (
                    room_id,
                    room.prev_batch,
                    upper,
                    latest_before,
                    before,
                ),
            )
        self._apply_receipts(work, room_id, room.receipts)

    def _in(self, sql: str, values: list[str], *params: Any) -> list[tuple[Any, ...]]:
        """``sql`` with ``{marks}`` for an IN list, run in chunks under SQLite's limit.

        The list is padded with NULLs (which match nothing) to the next of a
        few sizes, so the same few statements are prepared once and reused
        instead of one new statement for every list length.
        """
        out: list[tuple[Any, ...]] = []
        for i in range(0, len(values), _IN_SIZES[-1]):
            chunk: list[str | None] = list(values[i : i + _IN_SIZES[-1]])
            size = next(n for n in _IN_SIZES if n >= len(chunk))
            chunk += [None] * (size - len(chunk))
            out += self._all(sql.format(marks=_IN_MARKS[size]), (*params, *chunk))
        return out

    def _store_batch(
        self,
        work: _Work,
        room_id: str,
        items: list[TimelineItem],
        *,
        next_pos: int | None,
        names: dict[str, str] | None = None,
    ) -> tuple[int, str] | None:
        """Store one room's timeline from a sync with a few statements, not a few per event.

        Redactions go first (order within a response does not matter: every
        display is derived from the stored inputs). Then relations are
        stored, and the new rows are derived in memory from them and
        inserted with one ``executemany``. Own echoes take the careful path.
        ``next_pos`` is where the room's next row goes (None: it has no rows yet).
        ``names`` (user id -> display name), when the caller knows every stored
        member of the room, spares reading them back.
        Returns the first new row's (pos, event_id), for a gap marker.
        """
        rest: list[TimelineItem] = []
        redacts: list[tuple[str, str]] = []
        for item in items:
            if item.redacts is not None:
                redacts.append((item.redacts, item.event_id))
            else:
                rest.append(item)
        if redacts:
            self._store_redactions(work, redacts)
        if not rest:
            return None
        redacted: set[str]
        if work.fresh:
            # All the redactions table holds (see _Work.fresh).
            redacted = work.redacted_ids
        else:
            redacted = {
                r[0]
                for r in self._in(
                    "SELECT event_id FROM redactions WHERE event_id IN ({marks})",
                    [i.event_id for i in rest],
                )
            }
        # An event belongs to one room: a room without rows has none of these.
        existing = (
            {
                r[0]
                for r in self._in(
                    "SELECT event_id FROM messages WHERE event_id IN ({marks})",
                    [i.event_id for i in rest],
                )
            }
            if next_pos is not None
            else set()
        )
        echoed = False
        relation_rows = []
        new: list[TimelineItem] = []
        first_new: tuple[int, str] | None = None
        for item in rest:
            rel = item.relation
            if rel is not None:
                rel_redacted = item.redacted or item.event_id in redacted
                relation_rows.append(_relation_row(room_id, rel, rel_redacted))
                work.note_relation(rel, rel_redacted)
            if item.txn_id is not None and item.sender == self._own_user_id:
                placed = self._store_item(work, item, pos=None)  # reconciles echoes
                echoed = True
                if placed is not None and first_new is None:
                    first_new = placed
                continue
            if item.visible and item.event_id not in existing:
                existing.add(item.event_id)
                new.append(item)
        if relation_rows:
            self._conn.executemany(
                _INSERT_RELATION,
                relation_rows,
            )
        if not new:
            return first_new
        new_ids = [i.event_id for i in new]
        relations: dict[str, list[Relation]] = {}
        if work.fresh:
            # What the SELECT below would return, from what this transaction stored.
            by_target, stored = work.relations_by_target, work.relations
            for target in new_ids:
                for rel_id in by_target.get(target, ()):
                    rel, rel_redacted = stored[rel_id]
                    if not rel_redacted:
                        relations.setdefault(target, []).append(rel)
        else:
            for r in self._in(
                f"SELECT {_RELATION_COLUMNS} FROM relations "
                "WHERE redacted = 0 AND target IN ({marks})",
                new_ids,
            ):
                relations.setdefault(r[1], []).append(_relation_from_row(r))
        if names is None:
            people = sorted(
                {i.sender for i in new if i.type not in MESSAGE_ROWS}
                | {i.state_key for i in new if i.type not in MESSAGE_ROWS and i.state_key}
            )
            names = (
                dict(
                    self._in(
                        "SELECT user_id, display_name FROM members WHERE room_id = ? "
                        "AND display_name IS NOT NULL AND user_id IN ({marks})",
                        people,
                        room_id,
                    )
                )
                if people
                else {}
            )
        pos = self._next_pos(room_id) if echoed else (next_pos or 0)
        if first_new is None:
            first_new = (pos, new[0].event_id)
        if work.no_rows_before:
            stop = pos + len(new) * POS_STRIDE
            work.positions.update(zip(new_ids, range(pos, stop, POS_STRIDE), strict=True))
        first_ord = self._last_ord(work) + 1
        ord_ = first_ord - 1  # the loop numbers rows from first_ord
        own = self._own_user_id
        quiet = work.quiet
        infos = work.infos
        rows = []
        for item in new:
            ord_ += 1
            event_id = item.event_id
            etype = item.type
            content = item.content
            is_redacted = item.redacted or event_id in redacted
            rels = relations.get(event_id)
            if is_redacted or rels:
                derived, display = _derive_display(
                    event_type=etype,
                    sender=item.sender,
                    state_key=item.state_key,
                    content=content,
                    prev_content=item.prev_content,
                    redacted=is_redacted,
                    relations=rels or [],
                    names=names,
                    own_user_id=own,
                )
                shown = display.content
            else:
                # Most rows: nothing points at them, so what is shown is the
                # content itself (what _derive_display gives, without its steps).
                shown = content
                if etype in _BODY_ROWS:
                    body = content.get("body")
                    if not isinstance(body, str):
                        body = ""
                else:
                    body = summarize(
                        event_type=etype,
                        sender=item.sender,
                        state_key=item.state_key,
                        content=content,
                        prev_content=item.prev_content,
                        redacted=False,
                        names=names,
                    )
                msgtype = content.get("msgtype") if etype in MESSAGE_ROWS else None
                derived = (
                    body,
                    msgtype if isinstance(msgtype, str) else None,
                    None,
                    0,
                    None,
                    None,
                    0,
                    None,
                )
                display = None
            rows.append(
                (
                    ord_,
                    room_id,
                    pos,
                    event_id,
                    etype,
                    item.state_key,
                    item.sender,
                    item.ts,
                    _pack(content),
                    _pack(item.prev_content) if item.prev_content is not None else None,
                    int(is_redacted),
                    item.reply_to,
                    item.thread_root,
                    int(item.encrypted),
                    *derived,
                )
            )
            pos += POS_STRIDE
            if quiet:
                continue
            # Only what differs from MessageInfo's defaults is passed (a
            # quarter of the cost of all 22 fields); most rows need no more.
            info = MessageInfo(
                event_id=event_id,
                room_id=room_id,
                sender=item.sender,
                body=derived[0],
                ts=item.ts,
                status="sent",
                msgtype=derived[1],
                type=etype,
                state_key=item.state_key,
                reply_to=item.reply_to,
                thread_root=item.thread_root,
                content=shown,
            )
            if item.encrypted:
                info.encrypted = True
            if display is not None:  # edited, reacted to, a thread root, or redacted
                info.edited = display.edited
                info.redacted = is_redacted
                info.reactions = dict(display.reactions)
                info.my_reactions = list(display.my_reactions)
                info.thread_count = derived[6]
                info.thread_latest = derived[7]
            fmt = shown.get("format")
            if isinstance(fmt, str):
                info.format = fmt
                formatted = shown.get("formatted_body")
                if fmt and isinstance(formatted, str):
                    info.formatted_body = formatted
            infos[ord_] = info
        work.added.extend(range(first_ord, ord_ + 1))
        work.derived.update(range(first_ord, ord_ + 1))
        work.added_ids.update(new_ids)
        work.last_ord = ord_
        self._conn.executemany(
            "INSERT INTO messages(ord, room_id, pos, event_id, type, state_key, sender, ts, "
            "status, content, prev_content, redacted, reply_to, thread_root, encrypted, body, "
            "msgtype, display, edited, reactions, my_reactions, thread_count, thread_latest) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'sent', ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            rows,
        )
        work.added_rooms.add(room_id)
        return first_new

    def _store_redactions(self, work: _Work, redacts: list[tuple[str, str]]) -> None:
        """(redacted event, redaction event) pairs of one room, as
        :meth:`_store_item` stores one, with a statement each for all."""
        self._conn.executemany(
            "INSERT OR IGNORE INTO redactions(event_id, redacted_by) VALUES (?, ?)", redacts
        )
        work.redacted_ids.update(t for t, _ in redacts)
        ids = [t for t, _ in redacts]
        # In a transaction that began with no rows (relations), only ids it
        # stored itself can be there (see _Work.fresh).
        rows = [i for i in ids if i in work.added_ids] if work.no_rows_before else ids
        if rows:
            self._conn.executemany(
                "UPDATE messages SET redacted = 1 WHERE event_id = ? AND redacted = 0",
                [(i,) for i in rows],
            )
        rels = [i for i in ids if i in work.relations] if work.fresh else ids
        relation_targets = self._in(
            "SELECT target FROM relations WHERE event_id IN ({marks})", rels
        )
        if rels:
            self._conn.executemany(
                "UPDATE relations SET redacted = 1 WHERE event_id = ?", [(i,) for i in rels]
            )
            work.note_relations_redacted(rels)
        work.touched_targets.update(ids)
        work.touched_targets.update(r[0] for r in relation_targets)

    def _upsert_members(
        self,
        events: list[LoggedEvent],
        room_id: str,
        members: list[MemberChange],
        *,
        known: bool = True,
    ) -> dict[str, MemberChange]:
        """Store a room's member changes: one read, one write, whatever their number.

        ``known`` False: the room had no row, so it has no members stored
        (they go and come with the row), and nothing is read. Returns the
        last change of each member.
        """
        if not members:
            return {}
        latest = {m.user_id: m for m in members}  # the last change of each wins
        have = (
            {
                r[0]: tuple(r[1:])
                for r in self._in(
                    "SELECT user_id, membership, display_name, avatar_url FROM members "
                    "WHERE room_id = ? AND user_id IN ({marks})",
                    list(latest),
                    room_id,
                )
            }
            if known
            else {}
        )
        changed = [
            m
            for m in latest.values()
            if have.get(m.user_id) != (m.membership, m.display_name, m.avatar_url)
        ]
        self._conn.executemany(
            "INSERT OR REPLACE INTO members(room_id, user_id, membership, display_name, avatar_url) "
            "VALUES (?, ?, ?, ?, ?)",
            [(room_id, m.user_id, m.membership, m.display_name, m.avatar_url) for m in changed],
        )
        for m in changed:
            self._log(
                events,
                MemberUpdated(
                    seq=0,
                    member=MemberInfo(
                        room_id=room_id,
                        user_id=m.user_id,
                        membership=m.membership,
                        display_name=m.display_name,
                        avatar_url=m.avatar_url,
                    ),
                ),
            )
        return latest

    def _apply_receipts(self, work: _Work, room_id: str, receipts: list[Receipt]) -> None:
        """Store a room's receipts with one statement; the account's own move
        the room's read position to the newest of its receipts."""
        # Thread receipts do not move the room's read position.
        kept = [r for r in receipts if r.thread_id in (None, "main")]
        if not kept:
            return
        self._conn.executemany(
            "INSERT INTO receipts(room_id, user_id, receipt_type, event_id, ts) "
            "VALUES (?, ?, ?, ?, ?) ON CONFLICT(room_id, user_id, receipt_type) DO UPDATE "
            "SET event_id = excluded.event_id, ts = excluded.ts WHERE excluded.ts >= receipts.ts",
            [(room_id, r.user_id, r.receipt_type, r.event_id, r.ts) for r in kept],
        )
        own = [r for r in kept if r.user_id == self._own_user_id]
        if not own:
            return
        newest: tuple[Any, ...] | None
        if work.no_receipts_before and work.no_rows_before:
            # What the query below would find, from what this transaction
            # stored (the same upsert rule, the same order).
            stored = work.own_receipts.setdefault(room_id, {})
            for r in own:
                held = stored.get(r.receipt_type)
                if held is None or r.ts >= held[1]:
                    stored[r.receipt_type] = (r.event_id, r.ts)
            positions = work.positions

            def order(kind: str) -> tuple[bool, int, int, str]:
                event_id, ts = stored[kind]
                pos = positions.get(event_id)
                return (pos is None, -(pos or 0), -ts, kind)

            newest = (stored[min(stored, key=order)][0],)
        else:
            newest = self._one(
                "SELECT r.event_id FROM receipts r LEFT JOIN messages m ON m.event_id = r.event_id "
                "WHERE r.room_id = ? AND r.user_id = ? "
                "ORDER BY m.pos DESC NULLS LAST, r.ts DESC, r.receipt_type LIMIT 1",
                (room_id, self._own_user_id),
            )
        self._patch_room(work, room_id, {"read_receipt": newest[0] if newest else own[-1].event_id})

    # -------------------------------------------------------------- timeline

    def _last_ord(self, work: _Work) -> int:
        """The highest ord ever handed out: rows get the next ones.

        Deleted rows count too (their highest ord is kept in meta by a
        trigger), so the ord of a cancelled echo, which the change log may
        still name, is never reused.
        """
        if work.last_ord is None:
            work.last_ord = int(self._scalar(f"SELECT {_LAST_ORD_SQL}") or 0)
        return work.last_ord

    def _next_pos(self, room_id: str) -> int:
        top = self._scalar("SELECT MAX(pos) FROM messages WHERE room_id = ?", (room_id,))
        return 0 if top is None else int(top) + POS_STRIDE

    def _store_item(
        self, work: _Work, item: TimelineItem, *, pos: int | None
    ) -> tuple[int, str] | None:
        """Store one classified event; returns (pos, event_id) if it added a row.

        ``pos`` None appends after the room's newest row (sync); backfill
        passes the position under its gap.
        """
        if item.redacts is not None:
            self._conn.execute(
                "INSERT OR IGNORE INTO redactions(event_id, redacted_by) VALUES (?, ?)",
                (item.redacts, item.event_id),
            )
            work.redacted_ids.add(item.redacts)
            self._conn.execute(
                "UPDATE messages SET redacted = 1 WHERE event_id = ? AND redacted = 0",
                (item.redacts,),
            )
            target = self._scalar(
                "SELECT target FROM relations WHERE event_id = ?", (item.redacts,)
            )
            self._conn.execute(
                "UPDATE relations SET redacted = 1 WHERE event_id = ?", (item.redacts,)
            )
            work.note_relations_redacted((item.redacts,))
            work.touched_targets.add(item.redacts)
            if target is not None:
                work.touched_targets.add(target)
            return None
        redacted = item.redacted or (
            self._scalar("SELECT 1 FROM redactions WHERE event_id = ?", (item.event_id,))
            is not None
        )
        if item.relation is not None:
            self._insert_relation(work, item.room_id, item.relation, redacted=redacted)
        if item.txn_id is not None and item.sender == self._own_user_id:
            # Our own item came back in sync: it is delivered, whatever it was.
            info = self._outbox_info(item.txn_id)
            if info is not None:
                self._conn.execute("DELETE FROM outbox WHERE txn_id = ?", (item.txn_id,))
                work.outbox_done.append(info)
        if not item.visible:
            return None
        if item.txn_id is not None and item.sender == self._own_user_id:
            row = self._one(
                "SELECT ord, event_id, status FROM messages WHERE txn_id = ?", (item.txn_id,)
            )
            if row is not None:
                # Our own local echo came back: reconcile, never duplicate.
                ord_, event_id, status = row
                # The server's copy is the record: its content names event ids
                # where the echo may still name pending txn ids.
                before = self._one(
                    "SELECT content, reply_to, thread_root, ts FROM messages WHERE ord = ?",
                    (ord_,),
                )
                after = (_pack(item.content), item.reply_to, item.thread_root, item.ts)
                if event_id != item.event_id or status != "sent" or before != after:
                    self._conn.execute(
                        "UPDATE messages SET event_id = ?, status = 'sent', content = ?, "
                        "reply_to = ?, thread_root = ?, ts = ?, encrypted = ? WHERE ord = ?",
                        (item.event_id, *after, int(item.encrypted), ord_),
                    )
                    work.touched_targets.add(item.event_id)
                    work.changed.add(ord_)
                return None
        if pos is None:
            pos = self._next_pos(item.room_id)
        inserted = self._one(
            "INSERT INTO messages(ord, room_id, pos, event_id, txn_id, type, state_key, sender, "
            "ts, status, content, prev_content, redacted, reply_to, thread_root, encrypted, body, "
            f"msgtype, display) VALUES ({_LAST_ORD_SQL} + 1, ?, ?, ?, ?, ?, ?, ?, ?, 'sent', "
            "?, ?, ?, ?, ?, ?, '', NULL, x'80') ON CONFLICT(event_id) DO NOTHING RETURNING ord",
            (
                item.room_id,
                pos,
                item.event_id,
                item.txn_id if item.sender == self._own_user_id else None,
                item.type,
                item.state_key,
                item.sender,
                item.ts,
                _pack(item.content),
                _pack(item.prev_content) if item.prev_content is not None else None,
                int(redacted),
                item.reply_to,
                item.thread_root,
                int(item.encrypted),
            ),
        )
        if inserted is None:
            return None
        work.added.append(inserted[0])
        work.added_ids.add(item.event_id)
        if work.no_rows_before:
            work.positions[item.event_id] = pos
        if work.last_ord is not None:
            work.last_ord = max(work.last_ord, inserted[0])
        work.added_rooms.add(item.room_id)
        return pos, item.event_id

    def _insert_relation(self, work: _Work, room_id: str, rel: Relation, *, redacted: bool) -> None:
        """Store an edit, reaction or thread reply (once); its target re-derives."""
        self._conn.execute(_INSERT_RELATION, _relation_row(room_id, rel, redacted))
        work.note_relation(rel, redacted)

    def _derive_message(self, ord_: int) -> bool:
        """Recompute a row's display from its original and its relations.

        Returns whether anything a UI sees changed.
        """
        row = self._one(
            "SELECT event_id, type, sender, state_key, content, prev_content, redacted, "
            "body, msgtype, display, edited, reactions, my_reactions, thread_count, "
            "thread_latest, room_id FROM messages WHERE ord = ?",
            (ord_,),
        )
        assert row is not None, "a message row vanished inside its own transaction"
        (event_id, type_, sender, state_key, content_b, prev_b, redacted) = row[:7]
        relations = (
            [
                _relation_from_row(r)
                for r in self._all(
                    f"SELECT {_RELATION_COLUMNS} FROM relations WHERE target = ? AND redacted = 0",
                    (event_id,),
                )
            ]
            if event_id is not None
            else []
        )
        names: dict[str, str] = {}
        if type_ not in MESSAGE_ROWS:
            for user_id, name in self._all(
                "SELECT user_id, display_name FROM members WHERE room_id = ? AND user_id IN (?, ?) "
                "AND display_name IS NOT NULL",
                (row[15], sender, state_key or sender),
            ):
                names[user_id] = name
        derived, _ = _derive_display(
            event_type=type_,
            sender=sender,
            state_key=state_key,
            content=_unpack_dict(content_b),
            prev_content=_unpack_dict(prev_b) if prev_b is not None else None,
            redacted=bool(redacted),
            relations=relations,
            names=names,
            own_user_id=self._own_user_id,
        )
        stored = tuple(row[7:15])
        if stored[2] == content_b:
            # A display equal to the content itself: written before such rows
            # stored none (NULL). The same thing.
            stored = (*stored[:2], None, *stored[3:])
        if _same_derived(stored, derived):
            return False
        self._conn.execute(
            "UPDATE messages SET body = ?, msgtype = ?, display = ?, edited = ?, reactions = ?, "
            "my_reactions = ?, thread_count = ?, thread_latest = ? WHERE ord = ?",
            (*derived, ord_),
        )
        return True

    def _finish(self, events: list[LoggedEvent], work: _Work) -> None:
        """Derive what the transaction touched, then log it: rooms, then rows.

        A UI so learns of a new room before its first messages.
        """
        added = set(work.added)
        for ord_ in work.added:
            if ord_ not in work.derived:
                self._derive_message(ord_)
        updated: list[int] = []
        # Rows added in this transaction were derived with everything stored.
        for target in sorted(work.touched_targets - work.added_ids):
            row = self._one("SELECT ord FROM messages WHERE event_id = ?", (target,))
            if row is None or row[0] in added:
                continue
            if self._derive_message(row[0]) or row[0] in work.changed:
                updated.append(row[0])
        touched_rooms = set(work.rooms) | work.added_rooms
        for room_id in sorted(touched_rooms):
            current = self._current_room(work, room_id)
            if current is None:
                continue
            if room_id not in work.rooms:
                work.rooms[room_id] = dict(current)
            before = work.rooms[room_id]
            self._derive_room(
                current,
                work.member_names.get(room_id),
                work.positions if work.no_rows_before else None,
            )
            if current != before:
                self._write_room(current)
            if before is None or _room_info(current) != _room_info(before):
                self._log(events, RoomUpdated(seq=0, room=_room_info(current)))
        if work.quiet:
            updated, work.added = [], []
        for ord_ in updated:
            self._log(events, MessageUpdated(seq=0, message=self._message_by_ord(ord_)), ord_=ord_)
        infos, refs = work.infos, self._msg_refs
        for ord_ in work.added:
            info = infos.get(ord_)
            event = MessageAdded(seq=0, message=info or self._message_by_ord(ord_))
            events.append(event)
            refs[id(event)] = (1, ord_)
        for done in work.outbox_done:
            self._log(events, OutboxUpdated(seq=0, item=done, removed=True))

    def _message_by_ord(self, ord_: int) -> MessageInfo:
        row = self._one(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE ord = ?", (ord_,))
        assert row is not None, "a message row vanished inside its own transaction"
        return _message_from_row(row)

    # -------------------------------------------------------------- backfill

    def newest_gap(self, room_id: str) -> Gap | None:
        row = self._one(
            "SELECT gap_id, room_id, token, upper_pos, after_id, before_id FROM gaps "
            "WHERE room_id = ? ORDER BY upper_pos DESC LIMIT 1",
            (room_id,),
        )
        return None if row is None else Gap(*row)

    def apply_backfill(
        self,
        gap: Gap,
        items: Iterable[TimelineItem | None],
        members: Iterable[MemberChange],
        end: str | None,
    ) -> tuple[list[LoggedEvent], int, bool]:
        """Store one /messages page (newest first) under ``gap``, in one transaction.

        Returns the events to publish, how many rows were added, and whether
        the gap is closed (history joined up, or the room's start reached).
        """
        with self._transaction() as events:
            work = _Work(added=[], touched_targets=set(), rooms={})
            upper = gap.upper_pos
            closed = end is None
            fetched = 0
            for item in items:
                fetched += 1
                if item is None:
                    continue
                if item.type == "m.room.create":
                    closed = True
                if item.visible and (
                    self._scalar("SELECT 1 FROM messages WHERE event_id = ?", (item.event_id,))
                    is not None
                ):
                    closed = True  # reached history we already have
                    break
                pos = upper - 1 if item.visible else None
                placed = self._store_item(work, item, pos=pos if pos is not None else upper)
                if placed is not None:
                    upper = placed[0]
            for m in members:
                # Historical member events never overwrite what sync said.
                self._conn.execute(
                    "INSERT OR IGNORE INTO members(room_id, user_id, membership, display_name, "
                    "avatar_url) VALUES (?, ?, ?, ?, ?)",
                    (gap.room_id, m.user_id, m.membership, m.display_name, m.avatar_url),
                )
            if fetched == 0:
                closed = True
            if closed:
                self._conn.execute("DELETE FROM gaps WHERE gap_id = ?", (gap.gap_id,))
            else:
                assert end is not None
                self._conn.execute(
                    "UPDATE gaps SET token = ?, upper_pos = ? WHERE gap_id = ?",
                    (end, upper, gap.gap_id),
                )
            if gap.room_id not in work.rooms:
                row = self._current_room(work, gap.room_id)
                work.rooms[gap.room_id] = None if row is None else dict(row)
            self._finish(events, work)
            added = len(work.added)
        return events, added, closed

    # ------------------------------------------------------------ decryption

    def undecrypted_count(self) -> int:
        return int(
            self._scalar(
                "SELECT count(*) FROM messages INDEXED BY messages_undecrypted "
                "WHERE type = 'm.room.encrypted'"
            )
        )

    def undecrypted_sessions(self) -> list[tuple[str, str, str]]:
        """(room, sender key, session) of every row still waiting for its key."""
        found: set[tuple[str, str, str]] = set()
        for room_id, content_b in self._all(
            "SELECT room_id, content FROM messages INDEXED BY messages_undecrypted "
            "WHERE type = 'm.room.encrypted' AND redacted = 0"
        ):
            content = _unpack_dict(content_b)
            sender_key, session_id = content.get("sender_key"), content.get("session_id")
            if isinstance(sender_key, str) and isinstance(session_id, str):
                found.add((room_id, sender_key, session_id))
        return sorted(found)

    def apply_decrypted(
        self, crypto: CryptoHook, keys: Iterable[tuple[str, str]]
    ) -> list[LoggedEvent]:
        """Read the rows whose key just arrived, in one transaction.

        A row that decrypts to a message, or any row event, is updated in
        place (a message_updated: "unable to decrypt" becomes the text). One
        that decrypts to an edit or a reaction was never a row: it is
        removed (message_removed) and changes the row it points at instead.
        """
        wanted: dict[str, set[str]] = {}
        for room_id, session_id in keys:  # (room, Megolm session)
            wanted.setdefault(room_id, set()).add(session_id)
        with self._transaction() as events:
            work = _Work(added=[], touched_targets=set(), rooms={})
            for room_id in sorted(wanted):
                for ord_, event_id, sender, ts, content_b, txn_id in self._all(
                    "SELECT ord, event_id, sender, ts, content, txn_id FROM messages "
                    "INDEXED BY messages_undecrypted "
                    "WHERE room_id = ? AND type = 'm.room.encrypted' AND redacted = 0 "
                    "ORDER BY pos",
                    (room_id,),
                ):
                    content = _unpack_dict(content_b)
                    if content.get("session_id") not in wanted[room_id] or event_id is None:
                        continue
                    ev = ClientEvent(
                        type="m.room.encrypted",
                        content=content,
                        sender=sender,
                        event_id=event_id,
                        origin_server_ts=ts,
                        unsigned=UnsignedData(transaction_id=txn_id) if txn_id else None,
                    )
                    item = classify(room_id, ev, crypto.decrypt)
                    if item is None or item.type == "m.room.encrypted":
                        continue  # not this key after all, or still unreadable
                    if room_id not in work.rooms:  # its unread count may change
                        row = self._current_room(work, room_id)
                        work.rooms[room_id] = None if row is None else dict(row)
                    self._replace_undecrypted(events, work, ord_, item)
            self._finish(events, work)
        return events

    def _replace_undecrypted(
        self, events: list[LoggedEvent], work: _Work, ord_: int, item: TimelineItem
    ) -> None:
        if not item.visible:
            self._conn.execute("DELETE FROM messages WHERE ord = ?", (ord_,))
            self._log(events, MessageRemoved(seq=0, room_id=item.room_id, event_id=item.event_id))
            self._store_item(work, item, pos=None)  # the relation; its target re-derives
            return
        self._conn.execute(
            "UPDATE messages SET type = ?, state_key = ?, content = ?, reply_to = ?, "
            "thread_root = ?, encrypted = 1 WHERE ord = ?",
            (
                item.type,
                item.state_key,
                _pack(item.content),
                item.reply_to,
                item.thread_root,
                ord_,
            ),
        )
        if item.relation is not None:  # a thread reply: it counts on its root
            self._insert_relation(work, item.room_id, item.relation, redacted=False)
        work.touched_targets.add(item.event_id)
        work.changed.add(ord_)

    # ----------------------------------------------------------------- reads

    def rooms(self) -> list[RoomInfo]:
        rows = self._all(
            f"SELECT {', '.join(_ROOM_COLUMNS)} FROM rooms "
            "WHERE membership IN ('join', 'invite') ORDER BY display_name, room_id"
        )
        return [_room_info(dict(zip(_ROOM_COLUMNS, r, strict=True))) for r in rows]

    def room_is_encrypted(self, room_id: str) -> bool:
        return bool(self._scalar("SELECT is_encrypted FROM rooms WHERE room_id = ?", (room_id,)))

    def room_membership(self, room_id: str) -> str | None:
        value = self._scalar("SELECT membership FROM rooms WHERE room_id = ?", (room_id,))
        return value if isinstance(value, str) else None

    def members(self, room_id: str, *, include_left: bool = False) -> list[MemberInfo]:
        if not self.has_room(room_id):
            raise UnknownRoomError("no such room in the cache", details={"room_id": room_id})
        where = "" if include_left else " AND membership IN ('join', 'invite')"
        return [
            MemberInfo(
                room_id=room_id, user_id=r[0], membership=r[1], display_name=r[2], avatar_url=r[3]
            )
            for r in self._all(
                "SELECT user_id, membership, display_name, avatar_url FROM members "
                f"WHERE room_id = ?{where} ORDER BY COALESCE(display_name, user_id), user_id",
                (room_id,),
            )
        ]

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
            "SELECT seq, payload, kind, msg_ord FROM changelog WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit + 1),
        )
        more = len(rows) > limit
        events: list[LoggedEvent] = []
        for row_seq, payload, kind, ord_ in rows[:limit]:
            if payload is not None:
                events.append(_event_decoder.decode(payload))
                continue
            # A message event, rebuilt from its row as it is now. A row that
            # is gone was a cancelled echo: its message_removed follows.
            found = self._one(f"SELECT {_MESSAGE_COLUMNS} FROM messages WHERE ord = ?", (ord_,))
            if found is None:
                continue
            message = _message_from_row(found)
            events.append(
                MessageAdded(seq=row_seq, message=message)
                if kind == 1
                else MessageUpdated(seq=row_seq, message=message)
            )
        return ChangesResult(events=events, last_seq=last, more=more)

    # ---------------------------------------------------------------- outbox

    def enqueue(
        self,
        *,
        room_id: str,
        txn_id: str,
        kind: str,
        event_type: str | None,
        content: dict[str, Any],
        target: str | None,
        ts: int,
        echo: bool,
    ) -> list[LoggedEvent]:
        """Write an outbox item (and a message's local echo) before any network I/O."""
        if not self.has_room(room_id):
            raise UnknownRoomError(
                "no such room in the cache (join it first)", details={"room_id": room_id}
            )
        with self._transaction() as events:
            work = _Work(added=[], touched_targets=set(), rooms={})
            self._put_outbox(
                events,
                work,
                OutboxItem(
                    seq=0,
                    txn_id=txn_id,
                    room_id=room_id,
                    kind=kind,  # type: ignore[arg-type]
                    event_type=event_type,
                    content=content,
                    state="queued",
                    target=target,
                ),
                ts=ts,
                echo=echo,
            )
            self._finish(events, work)
        return events

    def _put_outbox(
        self, events: list[LoggedEvent], work: _Work, item: OutboxItem, *, ts: int, echo: bool
    ) -> None:
        """An outbox row for ``item`` (as it is: queued or failed), its local echo, and the log."""
        room_id, txn_id, content = item.room_id, item.txn_id, item.content
        kind, event_type, target = item.kind, item.event_type, item.target
        self._conn.execute(
            "INSERT INTO outbox(txn_id, room_id, kind, event_type, content, target, state, "
            "last_error) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
            (
                txn_id,
                room_id,
                kind,
                event_type,
                _pack(content),
                target,
                item.state,
                item.last_error,
            ),
        )
        if echo:
            relates = content.get("m.relates_to")
            relates = relates if isinstance(relates, dict) else {}
            reply = relates.get("m.in_reply_to")
            thread_root = relates.get("event_id") if relates.get("rel_type") == "m.thread" else None
            row = self._one(
                "INSERT INTO messages(ord, room_id, pos, event_id, txn_id, type, sender, ts, "
                "status, content, reply_to, thread_root, body, display, encrypted) "
                f"VALUES ({_LAST_ORD_SQL} + 1, ?, ?, NULL, ?, ?, ?, ?, ?, ?, ?, ?, "
                "'', x'80', COALESCE((SELECT is_encrypted FROM rooms WHERE room_id = ?1), 0)) "
                "RETURNING ord",
                (
                    room_id,
                    self._next_pos(room_id),
                    txn_id,
                    event_type,
                    self._own_user_id,
                    ts,
                    "failed" if item.state == "failed" else "pending",
                    _pack(content),
                    reply.get("event_id") if isinstance(reply, dict) and not thread_root else None,
                    thread_root,
                ),
            )
            assert row is not None
            work.added.append(row[0])
            work.added_rooms.add(room_id)
        if kind == "receipt" and target is not None and is_event_id(target):
            # Read is read at once, offline too; the server hears it in turn.
            self._patch_room(work, room_id, {"read_receipt": target, "fully_read": target})
        self._log_outbox(events, txn_id)

    def unsent_messages(self) -> int:
        """Messages and redactions not yet delivered: in the outbox, and
        carried ones not yet moved there (read receipts do not count: a new
        session's reading makes its own)."""
        return int(
            self._scalar(
                "SELECT (SELECT count(*) FROM outbox WHERE kind != 'receipt') "
                "+ (SELECT count(*) FROM carried WHERE kind != 'receipt')"
            )
            or 0
        )

    def stash_carried(self, items: list[tuple[OutboxItem, bool]]) -> None:
        """Keep what an ended session's outbox left (:meth:`CacheReads.carry_out`)
        until :meth:`take_carried` can put it in the outbox."""
        with self._conn:
            self._conn.executemany(
                "INSERT OR IGNORE INTO carried(txn_id, room_id, kind, event_type, content, "
                "target, state, last_error, echo) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        i.txn_id,
                        i.room_id,
                        i.kind,
                        i.event_type,
                        _pack(i.content),
                        i.target,
                        i.state,
                        i.last_error,
                        int(echo),
                    )
                    for i, echo in items
                ],
            )

    def take_carried(self, now_ms: int) -> list[LoggedEvent]:
        """Move the carried items into the outbox, in their order, each with
        its local echo at the end of its room; one transaction. Called once
        the first sync has told which rooms the account is in: an item for a
        room it is not in goes in failed (it could not be delivered, and its
        room's encryption is unknown)."""
        rows = self._all(f"SELECT {_ITEM_COLUMNS}, echo FROM carried ORDER BY seq")
        if not rows:
            return []
        with self._transaction() as events:
            work = _Work(added=[], touched_targets=set(), rooms={})
            for r in rows:
                if self._outbox_info(r[0]) is not None:
                    continue
                item = _outbox_item(r)
                known = self.has_room(item.room_id)
                if not known:
                    item = dataclasses.replace(item, state="failed", last_error=CARRIED_NO_ROOM)
                self._put_outbox(events, work, item, ts=now_ms, echo=bool(r[8]) and known)
            self._conn.execute("DELETE FROM carried")
            self._finish(events, work)
        return events

    def _outbox_info(self, txn_id: str, *, in_flight: bool = False) -> OutboxItemInfo | None:
        row = self._one(
            "SELECT txn_id, room_id, kind, event_type, state, attempts, last_error, target "
            "FROM outbox WHERE txn_id = ?",
            (txn_id,),
        )
        if row is None:
            return None
        return OutboxItemInfo(
            txn_id=row[0],
            room_id=row[1],
            kind=row[2],
            event_type=row[3],
            state="in_flight" if in_flight and row[4] == "queued" else row[4],
            attempts=row[5],
            last_error=row[6],
            target=row[7],
        )

    def _log_outbox(self, events: list[LoggedEvent], txn_id: str) -> None:
        info = self._outbox_info(txn_id)
        if info is not None:
            self._log(events, OutboxUpdated(seq=0, item=info))

    def outbox_items(self) -> list[OutboxItem]:
        return [
            _outbox_item(r, seq=r[8], attempts=r[9])
            for r in self._all(f"SELECT {_ITEM_COLUMNS}, seq, attempts FROM outbox ORDER BY seq")
        ]

    def outbox_infos(self, in_flight: frozenset[str] = frozenset()) -> list[OutboxItemInfo]:
        out = []
        for (txn_id,) in self._all("SELECT txn_id FROM outbox ORDER BY seq"):
            info = self._outbox_info(txn_id, in_flight=txn_id in in_flight)
            if info is not None:
                out.append(info)
        return out

    def outbox_item(self, txn_id: str) -> OutboxItemInfo | None:
        return self._outbox_info(txn_id)

    def record_attempt(self, txn_id: str, error_code: str | None) -> None:
        with self._conn:
            self._conn.execute(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ? WHERE txn_id = ?",
                (error_code, txn_id),
            )

    def mark_sent(self, txn_id: str, event_id: str | None) -> list[LoggedEvent]:
        """Delivered: the item leaves the outbox; a local echo gets its event id."""
        with self._transaction() as events:
            info = self._outbox_info(txn_id)
            self._conn.execute("DELETE FROM outbox WHERE txn_id = ?", (txn_id,))
            if info is not None:
                info.state = "queued"
                self._log(events, OutboxUpdated(seq=0, item=info, removed=True))
            row = self._one(
                "SELECT ord, event_id, status FROM messages WHERE txn_id = ?", (txn_id,)
            )
            if event_id is None or row is None or (row[1] == event_id and row[2] == "sent"):
                return events  # not a message, or already reconciled by sync
            # The sync copy may have been stored first under its event id.
            self._conn.execute(
                "DELETE FROM messages WHERE event_id = ? AND ord != ?", (event_id, row[0])
            )
            # What was sent named event ids where the echo named pending txn ids.
            found = self._one(
                "SELECT content, reply_to, thread_root FROM messages WHERE ord = ?", (row[0],)
            )
            assert found is not None

            def resolve(ref: str | None) -> str | None:
                if ref is None or is_event_id(ref):
                    return ref
                return self.event_id_for_txn(ref) or ref

            content = fill_references(_unpack_dict(found[0]), lambda ref: resolve(ref) or ref)
            self._conn.execute(
                "UPDATE messages SET event_id = ?, status = 'sent', content = ?, reply_to = ?, "
                "thread_root = ? WHERE ord = ?",
                (event_id, _pack(content), resolve(found[1]), resolve(found[2]), row[0]),
            )
            work = _Work(added=[], touched_targets={event_id}, rooms={}, changed={row[0]})
            self._finish(events, work)
        return events

    def mark_failed(self, txn_id: str, reason: str) -> list[LoggedEvent]:
        with self._transaction() as events:
            self._conn.execute(
                "UPDATE outbox SET state = 'failed', last_error = ? WHERE txn_id = ?",
                (reason, txn_id),
            )
            self._set_echo_status(events, txn_id, "failed")
            self._log_outbox(events, txn_id)
        return events

    def _set_echo_status(self, events: list[LoggedEvent], txn_id: str, status: str) -> None:
        row = self._one("SELECT ord FROM messages WHERE txn_id = ? AND event_id IS NULL", (txn_id,))
        if row is not None:
            self._conn.execute("UPDATE messages SET status = ? WHERE ord = ?", (status, row[0]))
            self._log(
                events, MessageUpdated(seq=0, message=self._message_by_ord(row[0])), ord_=row[0]
            )

    def retry(self, txn_id: str) -> list[LoggedEvent]:
        """A failed item goes back in the queue, at its place."""
        info = self._outbox_info(txn_id)
        if info is None:
            raise OutboxError("no such outbox item", code=ErrorCode.OUTBOX_UNKNOWN_ITEM)
        with self._transaction() as events:
            self._conn.execute(
                "UPDATE outbox SET state = 'queued', attempts = 0, last_error = NULL "
                "WHERE txn_id = ?",
                (txn_id,),
            )
            self._set_echo_status(events, txn_id, "pending")
            self._log_outbox(events, txn_id)
        return events

    def cancel(self, txn_id: str) -> list[LoggedEvent]:
        """Drop a queued or failed item, its local echo, and the items that point at it."""
        if self._outbox_info(txn_id) is None:
            raise OutboxError("no such outbox item", code=ErrorCode.OUTBOX_UNKNOWN_ITEM)
        with self._transaction() as events:
            doomed = [txn_id]
            i = 0
            while i < len(doomed):
                for (dep,) in self._all(
                    "SELECT txn_id FROM outbox WHERE target = ? OR instr(content, CAST(? AS BLOB)) > 0",
                    (doomed[i], doomed[i]),
                ):
                    if dep not in doomed:
                        doomed.append(dep)
                i += 1
            for txn in doomed:
                info = self._outbox_info(txn)
                self._conn.execute("DELETE FROM outbox WHERE txn_id = ?", (txn,))
                row = self._one(
                    "SELECT ord, room_id FROM messages WHERE txn_id = ? AND event_id IS NULL",
                    (txn,),
                )
                if row is not None:
                    self._conn.execute("DELETE FROM messages WHERE ord = ?", (row[0],))
                    self._log(events, MessageRemoved(seq=0, room_id=row[1], txn_id=txn))
                if info is not None:
                    self._log(events, OutboxUpdated(seq=0, item=info, removed=True))
        return events

    def own_reaction(self, target: str, key: str) -> str | None:
        """The event id of the account's own reaction ``key`` on ``target``."""
        value = self._scalar(
            "SELECT event_id FROM relations WHERE target = ? AND rel_type = 'm.annotation' "
            "AND key = ? AND sender = ? AND redacted = 0",
            (target, key, self._own_user_id),
        )
        return value if isinstance(value, str) else None

    def queued_reaction(self, room_id: str, target: str, key: str) -> str | None:
        """The txn id of a reaction still in the outbox."""
        for txn_id, content_b in self._all(
            "SELECT txn_id, content FROM outbox WHERE room_id = ? AND kind = 'event' "
            "AND event_type = 'm.reaction'",
            (room_id,),
        ):
            rel = _unpack_dict(content_b).get("m.relates_to") or {}
            if rel.get("event_id") == target and rel.get("key") == key:
                return str(txn_id)
        return None

    def message_sender(self, ref: str) -> str | None:
        """Who sent the row with event id or txn id ``ref`` (None: not in the cache)."""
        column = "event_id" if is_event_id(ref) else "txn_id"
        value = self._scalar(f"SELECT sender FROM messages WHERE {column} = ?", (ref,))
        return value if isinstance(value, str) else None

    def latest_event_id(self, room_id: str) -> str | None:
        value = self._scalar(
            "SELECT event_id FROM messages WHERE room_id = ? AND event_id IS NOT NULL "
            "ORDER BY pos DESC LIMIT 1",
            (room_id,),
        )
        return value if isinstance(value, str) else None

    def forget_room(self, room_id: str) -> list[LoggedEvent]:
        """Remove a room and everything cached about it."""
        with self._transaction() as events:
            for table in ("messages", "members", "receipts", "gaps", "relations", "outbox"):
                self._conn.execute(f"DELETE FROM {table} WHERE room_id = ?", (room_id,))
            row = self._room_row(room_id)
            self._conn.execute("DELETE FROM rooms WHERE room_id = ?", (room_id,))
            if row is not None:
                row["membership"] = "leave"
                self._log(events, RoomUpdated(seq=0, room=_room_info(row)))
        return events

    def direct_map(self) -> dict[str, list[str]]:
        value = self._scalar("SELECT value FROM meta WHERE key = 'm.direct'")
        return json.loads(value) if isinstance(value, str) else {}


class ReaderBusy(Exception):
    """SQLite could not start a read on the reader's connection at once."""


class CacheReader(CacheReads):
    """Small reads beside the writer's thread (the IPC command thread's, the event loop's).

    A second connection to the same file, opened after :meth:`Cache.open`
    (which migrated it) and made read-only (``query_only``). In WAL mode a
    reader does not wait for the writer: :meth:`read` sees what was last
    committed, even while a sync's transaction is open on the cache thread.
    SQLite reports busy only in rare moments (a WAL being recovered);
    :meth:`read` then raises :class:`ReaderBusy` at once and the caller takes
    the thread. Used by one thread at a time (the daemon's lock around it).

    ``commits``: the writer's :meth:`Cache.commits`, when the writer is in
    this process (:meth:`Cache.open_reader`): :meth:`messages` and
    :meth:`adopt` tell a change by it. Without, by :meth:`data_version`: a
    statement on this connection each time, the bigger part of a reused
    read's cost (docs/benchmarks-ipc.md).
    """

    def __init__(
        self,
        conn: apsw.Connection,
        answer_rows: int = READER_ANSWER_ROWS,
        commits: Callable[[], int] | None = None,
    ) -> None:
        self._conn = conn
        self._version = self.data_version if commits is None else commits
        #: (room, limit) -> (the version when read, the answer, when a
        #: caller last asked for it): see :meth:`messages`; least recently
        #: asked for first.
        self._answers: OrderedDict[AnswerKey, tuple[int, MessagesAnswer, float]] = OrderedDict()
        #: Messages in the kept answers, all together; at most this:
        self._answer_rows = 0
        self._answer_rows_max = answer_rows

    @classmethod
    def open(
        cls,
        path: Path,
        key_hex: str,
        keyings: tuple[tuple[str, ...], ...] = KEYINGS,
        *,
        answer_rows: int = READER_ANSWER_ROWS,
        commits: Callable[[], int] | None = None,
    ) -> CacheReader:
        """A reader on the cache at ``path``, keyed the first of ``keyings``
        ways that decrypts it (see :meth:`Cache.open_reader`); it keeps
        ``answer_rows`` messages of recent answers (0: none)."""
        conn, _ = _open_any(path, key_hex, keyings)
        conn.execute("PRAGMA query_only=ON")
        conn.execute(f"PRAGMA cache_size=-{READER_PAGE_CACHE_KIB}")
        return cls(conn, answer_rows, commits)

    def schema_version(self) -> int:
        """The cache's schema (``PRAGMA user_version``): its last migration."""
        return int(self._scalar("PRAGMA user_version") or 0)

    def data_version(self) -> int:
        """SQLite's ``PRAGMA data_version`` on this connection: it changes
        whenever another connection (the writer) has committed to the file."""
        return int(self._scalar("PRAGMA data_version"))

    def messages(self, room_id: str, limit: int) -> MessagesAnswer:
        """:meth:`CacheReads.messages`, reusing the answer of the same read
        when nothing at all has been committed to the cache since.

        Several UIs that each read a room after the event that tells them of
        a change, or a UI that comes back to a room, then cost one read. The
        check is :meth:`data_version`, taken *before* the read: a commit
        that lands during the read changes it, so that answer is never
        reused. Any commit makes every kept answer stale (a sync that only
        moved a read marker too): simple, and it cannot serve a stale
        answer; the daemon makes the answers asked for last again right
        after its writes (:meth:`adopt`). The answers are shared: callers
        must not change them. (With ``commits``, the writer's count of its
        commits is the check: it counts a commit once it has taken place, so
        a read that starts after the count is taken sees that commit or a
        later one.)
        """
        key = (room_id, limit)
        version = self._version()
        now = time.monotonic()
        kept = self._answers.get(key)
        if kept is not None and kept[0] == version:
            self._answers[key] = (version, kept[1], now)
            self._answers.move_to_end(key)
            return kept[1]
        answer = super().messages(room_id, limit)
        self._put(key, (version, answer, now), last=True)
        return answer

    def watched(self, most: int | None = None, window_s: float | None = None) -> list[AnswerKey]:
        """The keys of the kept answers callers asked for most recently, at
        most ``most`` of them (:data:`REFRESH_ANSWERS`), asked for within
        ``window_s`` seconds (:data:`REFRESH_WINDOW_S`): those the daemon
        makes again after a write (see :meth:`adopt`)."""
        most = REFRESH_ANSWERS if most is None else most
        since = time.monotonic() - (REFRESH_WINDOW_S if window_s is None else window_s)
        keys: list[AnswerKey] = []
        for key in reversed(self._answers):
            if len(keys) >= most or self._answers[key][2] < since:
                break
            keys.append(key)
        return keys

    def adopt(self, answers: dict[AnswerKey, MessagesAnswer]) -> list[AnswerKey]:
        """Keep ``answers``, made by the writer after its last commit
        (:meth:`Cache.run_then_answer`), as current.

        The caller guarantees that nothing has been committed to the cache
        since that commit (the daemon holds its cache thread's limiter from
        the write until this returns, and every write goes through it):
        then the version now (``commits``, or this connection's
        ``data_version``) is that of the state they were made from, and they
        are kept under it. Any later commit changes it, and they go stale
        like any answer. Only keys still kept are taken, in their place in
        the LRU order. If SQLite cannot start a read (busy), none is taken:
        the next read reads. Returns the keys taken.
        """
        try:
            version = self._version()
        except apsw.Error:
            return []
        taken: list[AnswerKey] = []
        for key, answer in answers.items():
            kept = self._answers.get(key)
            if kept is not None:
                self._put(key, (version, answer, kept[2]), last=False)
                if key in self._answers:  # not if it outgrew the bound on its own
                    taken.append(key)
        return taken

    def _put(self, key: AnswerKey, entry: tuple[int, MessagesAnswer, float], *, last: bool) -> None:
        """Keep ``entry`` under ``key``: as the most recently used
        (``last``) or in the place of the one it replaces. Then drop the
        least recently used until the kept answers hold at most
        ``answer_rows`` messages; an answer bigger than that on its own is
        not kept and pushes nothing out."""
        old = self._answers.pop(key, None) if last else self._answers.get(key)
        if old is not None:
            self._answer_rows -= len(old[1][0])
        rows = len(entry[1][0])
        if rows > self._answer_rows_max:
            self._answers.pop(key, None)
            return
        self._answers[key] = entry
        self._answer_rows += rows
        while self._answer_rows > self._answer_rows_max:
            _, (_, dropped, _) = self._answers.popitem(last=False)
            self._answer_rows -= len(dropped[0])

    def read(self, fn: Callable[[CacheReads], T]) -> T:
        """``fn(self)``. A read of more than one statement holds its own read
        transaction (:meth:`CacheReads.messages`), so its statements agree."""
        try:
            return fn(self)
        except apsw.BusyError as exc:
            raise ReaderBusy from exc

    def close(self) -> None:
        self._conn.close()


def _open_any(
    path: Path, key_hex: str, keyings: tuple[tuple[str, ...], ...]
) -> tuple[apsw.Connection, tuple[str, ...]]:
    """A connection to ``path`` keyed the first of ``keyings`` ways that
    decrypts it, and that keying; :class:`CacheWrongKeyError` if none does."""
    for keying in keyings:
        conn = _open_keyed(path, key_hex, keying)
        if conn is not None:
            return conn, keying
    raise CacheWrongKeyError(
        "the cache cannot be decrypted with the key in the keyring "
        "(wrong key, or not a skiffyd cache); log out and in again to start a new one",
        details={"path": str(path)},
    )


def _open_keyed(path: Path, key_hex: str, keying: tuple[str, ...]) -> apsw.Connection | None:
    """A connection to ``path`` keyed with ``key_hex`` as ``keying`` says;
    None if that does not decrypt it (a wrong key opens without error and
    fails on the first read, so this reads)."""
    try:
        conn = apsw.Connection(str(path))
    except apsw.Error as exc:
        raise CacheError(f"cannot open the cache file: {type(exc).__name__}") from exc
    try:
        for pragma in keying:
            # Not cached: apsw's statement cache would keep the key's text
            # (and show it in cache_stats) for the connection's lifetime.
            conn.execute(pragma.format(key=key_hex), can_cache=False)
        conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    except apsw.NotADBError:
        conn.close()
        return None
    except apsw.Error as exc:
        conn.close()
        raise CacheError(f"cannot read the cache: {type(exc).__name__}") from exc
    return conn


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
