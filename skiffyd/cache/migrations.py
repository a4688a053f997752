"""Numbered schema migrations. Index i holds the step to ``user_version`` i+1.

Append only once released: a released step is never edited.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: rooms, members, the timeline with its relations, receipts and gaps,
    #    the outbox, sync state and the change log.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value ANY
    ) STRICT;
    CREATE TABLE rooms (
        room_id            TEXT PRIMARY KEY,
        membership         TEXT NOT NULL,
        name               TEXT,
        canonical_alias    TEXT,
        topic              TEXT,
        avatar_url         TEXT,
        join_rule          TEXT,
        is_encrypted       INTEGER NOT NULL DEFAULT 0,
        joined_count       INTEGER NOT NULL DEFAULT 0,
        invited_count      INTEGER NOT NULL DEFAULT 0,
        heroes             TEXT,
        notification_count INTEGER NOT NULL DEFAULT 0,
        highlight_count    INTEGER NOT NULL DEFAULT 0,
        tags               TEXT,
        fully_read         TEXT,
        inviter            TEXT,
        successor          TEXT,
        predecessor        TEXT,
        is_direct          INTEGER NOT NULL DEFAULT 0,
        direct_user        TEXT,
        read_receipt       TEXT,
        unread_count       INTEGER NOT NULL DEFAULT 0,
        display_name       TEXT
    ) STRICT;
    CREATE INDEX rooms_direct ON rooms(is_direct) WHERE is_direct = 1;
    CREATE TABLE members (
        room_id      TEXT NOT NULL,
        user_id      TEXT NOT NULL,
        membership   TEXT NOT NULL,
        display_name TEXT,
        avatar_url   TEXT,
        PRIMARY KEY (room_id, user_id)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE messages (
        ord            INTEGER PRIMARY KEY AUTOINCREMENT,
        room_id        TEXT NOT NULL,
        pos            INTEGER NOT NULL,
        event_id       TEXT UNIQUE,
        txn_id         TEXT,  -- unique where set: see messages_by_txn
        type           TEXT NOT NULL,
        state_key      TEXT,
        sender         TEXT NOT NULL,
        ts             INTEGER NOT NULL,
        status         TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
        content        BLOB NOT NULL,
        prev_content   BLOB,
        redacted       INTEGER NOT NULL DEFAULT 0,
        reply_to       TEXT,
        thread_root    TEXT,
        -- Derived by skiffyd.core.timeline.aggregate from the columns above
        -- and the relations pointing here:
        body           TEXT NOT NULL,
        msgtype        TEXT,
        display        BLOB,  -- NULL: the same as content (no edit, no redaction)
        edited         INTEGER NOT NULL DEFAULT 0,
        reactions      TEXT,
        my_reactions   TEXT,
        thread_count   INTEGER NOT NULL DEFAULT 0,
        thread_latest  TEXT
    ) STRICT;
    CREATE INDEX messages_by_room ON messages(room_id, pos);
    -- Partial: rows from sync (nearly all) have no txn id and no entry here.
    CREATE UNIQUE INDEX messages_by_txn ON messages(txn_id) WHERE txn_id IS NOT NULL;
    CREATE TABLE relations (
        event_id    TEXT PRIMARY KEY,
        room_id     TEXT NOT NULL,
        target      TEXT NOT NULL,
        rel_type    TEXT NOT NULL,
        sender      TEXT NOT NULL,
        ts          INTEGER NOT NULL,
        key         TEXT,
        new_content BLOB,
        redacted    INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    CREATE INDEX relations_by_target ON relations(target);
    CREATE TABLE redactions (
        event_id     TEXT PRIMARY KEY,
        redacted_by  TEXT NOT NULL
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE receipts (
        room_id      TEXT NOT NULL,
        user_id      TEXT NOT NULL,
        receipt_type TEXT NOT NULL,
        event_id     TEXT NOT NULL,
        ts           INTEGER NOT NULL,
        PRIMARY KEY (room_id, user_id, receipt_type)
    ) STRICT, WITHOUT ROWID;
    CREATE TABLE gaps (
        gap_id     INTEGER PRIMARY KEY,
        room_id    TEXT NOT NULL,
        token      TEXT NOT NULL,
        upper_pos  INTEGER NOT NULL,
        after_id   TEXT,
        before_id  TEXT
    ) STRICT;
    CREATE INDEX gaps_by_room ON gaps(room_id, upper_pos);
    CREATE TABLE outbox (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        txn_id     TEXT NOT NULL UNIQUE,
        room_id    TEXT NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('event', 'redaction', 'receipt')),
        event_type TEXT,
        content    BLOB NOT NULL,
        target     TEXT,
        state      TEXT NOT NULL CHECK (state IN ('queued', 'failed')),
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    ) STRICT;
    -- A message event refers to its row (msg_ord, kind 1 added / 2 updated)
    -- and is rebuilt from it on replay: an initial sync does not write every
    -- message twice. Every other event keeps its msgpack payload.
    CREATE TABLE changelog (
        seq     INTEGER PRIMARY KEY,
        payload BLOB,
        kind    INTEGER,
        msg_ord INTEGER,
        CHECK ((payload IS NULL) != (msg_ord IS NULL))
    ) STRICT;
    """,
    # 2: end-to-end encryption. Rows remember they arrived encrypted; rows
    #    still waiting for their key are found by room.
    """
    ALTER TABLE messages ADD COLUMN encrypted INTEGER NOT NULL DEFAULT 0;
    CREATE INDEX messages_undecrypted ON messages(room_id) WHERE type = 'm.room.encrypted';
    """,
    # 3: messages without AUTOINCREMENT, which read and wrote sqlite_sequence
    #    for every row inserted (~15% of an initial sync's row inserts). Row
    #    numbers must still never be reused (the change log names rows by
    #    ord): the highest one ever deleted is kept in meta by a trigger, and
    #    new rows are numbered above both it and the highest one stored.
    """
    CREATE TABLE messages_v3 (
        ord            INTEGER PRIMARY KEY,
        room_id        TEXT NOT NULL,
        pos            INTEGER NOT NULL,
        event_id       TEXT UNIQUE,
        txn_id         TEXT,
        type           TEXT NOT NULL,
        state_key      TEXT,
        sender         TEXT NOT NULL,
        ts             INTEGER NOT NULL,
        status         TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed')),
        content        BLOB NOT NULL,
        prev_content   BLOB,
        redacted       INTEGER NOT NULL DEFAULT 0,
        reply_to       TEXT,
        thread_root    TEXT,
        body           TEXT NOT NULL,
        msgtype        TEXT,
        display        BLOB,
        edited         INTEGER NOT NULL DEFAULT 0,
        reactions      TEXT,
        my_reactions   TEXT,
        thread_count   INTEGER NOT NULL DEFAULT 0,
        thread_latest  TEXT,
        encrypted      INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    INSERT INTO messages_v3 SELECT * FROM messages;
    INSERT INTO meta(key, value) VALUES ('messages_last_ord',
        COALESCE((SELECT seq FROM sqlite_sequence WHERE name = 'messages'), 0))
        ON CONFLICT(key) DO UPDATE SET value = excluded.value;
    DROP TABLE messages;
    ALTER TABLE messages_v3 RENAME TO messages;
    CREATE INDEX messages_by_room ON messages(room_id, pos);
    CREATE UNIQUE INDEX messages_by_txn ON messages(txn_id) WHERE txn_id IS NOT NULL;
    CREATE INDEX messages_undecrypted ON messages(room_id) WHERE type = 'm.room.encrypted';
    CREATE TRIGGER messages_keep_last_ord AFTER DELETE ON messages BEGIN
        INSERT INTO meta(key, value) VALUES ('messages_last_ord', OLD.ord)
        ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value);
    END;
    """,
    # 4: the same messages table with its status CHECK spelled as equalities.
    #    SQLite codes `status IN ('pending', 'sent', 'failed')` as a temporary
    #    b-tree built once per statement run, and an executemany runs the
    #    INSERT once per row: a third of the CPU of a sync's row inserts.
    #    The OR chain admits exactly the same values and costs nothing.
    """
    CREATE TABLE messages_v4 (
        ord            INTEGER PRIMARY KEY,
        room_id        TEXT NOT NULL,
        pos            INTEGER NOT NULL,
        event_id       TEXT UNIQUE,
        txn_id         TEXT,
        type           TEXT NOT NULL,
        state_key      TEXT,
        sender         TEXT NOT NULL,
        ts             INTEGER NOT NULL,
        status         TEXT NOT NULL
                       CHECK (status = 'pending' OR status = 'sent' OR status = 'failed'),
        content        BLOB NOT NULL,
        prev_content   BLOB,
        redacted       INTEGER NOT NULL DEFAULT 0,
        reply_to       TEXT,
        thread_root    TEXT,
        body           TEXT NOT NULL,
        msgtype        TEXT,
        display        BLOB,
        edited         INTEGER NOT NULL DEFAULT 0,
        reactions      TEXT,
        my_reactions   TEXT,
        thread_count   INTEGER NOT NULL DEFAULT 0,
        thread_latest  TEXT,
        encrypted      INTEGER NOT NULL DEFAULT 0
    ) STRICT;
    INSERT INTO messages_v4 SELECT * FROM messages;
    DROP TABLE messages;
    ALTER TABLE messages_v4 RENAME TO messages;
    CREATE INDEX messages_by_room ON messages(room_id, pos);
    CREATE UNIQUE INDEX messages_by_txn ON messages(txn_id) WHERE txn_id IS NOT NULL;
    CREATE INDEX messages_undecrypted ON messages(room_id) WHERE type = 'm.room.encrypted';
    CREATE TRIGGER messages_keep_last_ord AFTER DELETE ON messages BEGIN
        INSERT INTO meta(key, value) VALUES ('messages_last_ord', OLD.ord)
        ON CONFLICT(key) DO UPDATE SET value = max(value, excluded.value);
    END;
    """,
    # 5: the outbox items an ended session of the account left, carried into
    #    this (new) cache at login and moved into the outbox after the first
    #    sync, when their rooms are known (Cache.stash_carried / take_carried).
    """
    CREATE TABLE carried (
        seq        INTEGER PRIMARY KEY,
        txn_id     TEXT NOT NULL UNIQUE,
        room_id    TEXT NOT NULL,
        kind       TEXT NOT NULL CHECK (kind IN ('event', 'redaction', 'receipt')),
        event_type TEXT,
        content    BLOB NOT NULL,
        target     TEXT,
        state      TEXT NOT NULL CHECK (state IN ('queued', 'failed')),
        last_error TEXT,
        echo       INTEGER NOT NULL
    ) STRICT;
    """,
)
