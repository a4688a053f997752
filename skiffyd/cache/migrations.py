"""Numbered schema migrations. Index i holds the step to ``user_version`` i+1.

Append only: a released step is never edited.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: rooms, messages, the outbox, sync state and the change log.
    """
    CREATE TABLE meta (
        key   TEXT PRIMARY KEY,
        value ANY
    ) STRICT;
    CREATE TABLE rooms (
        room_id         TEXT PRIMARY KEY,
        membership      TEXT NOT NULL,
        name            TEXT,
        canonical_alias TEXT,
        topic           TEXT,
        is_encrypted    INTEGER NOT NULL DEFAULT 0,
        joined_count    INTEGER NOT NULL DEFAULT 0,
        invited_count   INTEGER NOT NULL DEFAULT 0,
        heroes          TEXT,
        unread_count    INTEGER NOT NULL DEFAULT 0,
        display_name    TEXT
    ) STRICT;
    CREATE TABLE messages (
        ord      INTEGER PRIMARY KEY AUTOINCREMENT,
        room_id  TEXT NOT NULL,
        event_id TEXT UNIQUE,
        txn_id   TEXT UNIQUE,
        sender   TEXT NOT NULL,
        body     TEXT NOT NULL,
        msgtype  TEXT NOT NULL,
        ts       INTEGER NOT NULL,
        status   TEXT NOT NULL CHECK (status IN ('pending', 'sent', 'failed'))
    ) STRICT;
    CREATE INDEX messages_by_room ON messages(room_id, ord);
    CREATE TABLE outbox (
        txn_id     TEXT PRIMARY KEY REFERENCES messages(txn_id),
        room_id    TEXT NOT NULL,
        state      TEXT NOT NULL CHECK (state IN ('queued', 'failed')),
        attempts   INTEGER NOT NULL DEFAULT 0,
        last_error TEXT
    ) STRICT;
    CREATE TABLE changelog (
        seq     INTEGER PRIMARY KEY,
        payload BLOB NOT NULL
    ) STRICT;
    """,
)
