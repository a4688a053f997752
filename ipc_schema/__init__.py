"""The skiffyd IPC wire contract.

This package is the whole contract between the daemon and its UIs, and it
imports nothing from ``skiffyd``: a UI in any language is written against the
JSON Schema that :func:`export_json_schema` produces (``python -m ipc_schema``).

Theory of operation
-------------------
Two nng sockets live in the daemon's runtime directory:

* ``cmd.sock`` — Rep0. A UI sends one :data:`Request` (msgpack) and gets one
  :class:`Reply`: either ``result`` (a :data:`Result`) or ``error`` (an
  :class:`ErrorInfo` with a stable ``SKIFFY_{MODULE}_{ERROR}`` code).
* ``events.sock`` — Pub0. The daemon publishes :class:`EventBatch` frames.
  Every change-log event carries ``seq``, a global, gap-free, strictly
  increasing number from the cache's change log. A UI that sees a gap, that
  reconnects, or that sees a new ``instance_id`` (a new change log) asks
  :class:`ChangesSince` with the instance id its seq belongs to, and gets
  exactly what it missed, from the cache, or ``reset`` to reload.
  nng pub/sub drops frames for slow subscribers, so this catch-up is part of
  the protocol, not an optimisation.
* :class:`SessionStateChanged` is ephemeral (not in the change log): its
  ``seq`` is the last change-log seq at the time it was published, so it never
  opens or closes a gap.

Evolution: new fields get defaults, tags never change, and
:data:`PROTOCOL_VERSION` is raised only for incompatible changes.
"""

from __future__ import annotations

from typing import Any, Literal, get_args

import msgspec

PROTOCOL_VERSION = 1

#: Largest request frame the daemon accepts, in bytes. Matrix events are
#: capped at 65,536 bytes, so a command never needs more than this.
MAX_REQUEST_BYTES = 256 * 1024

SessionState = Literal["logged_out", "connecting", "syncing", "ready", "offline"]
MessageStatus = Literal["pending", "sent", "failed"]


class ErrorCode:
    """Stable error codes. A UI may branch on these; they never change meaning."""

    IPC_MALFORMED = "SKIFFY_IPC_MALFORMED"
    IPC_UNKNOWN_COMMAND = "SKIFFY_IPC_UNKNOWN_COMMAND"
    IPC_INVALID_ARGUMENT = "SKIFFY_IPC_INVALID_ARGUMENT"
    IPC_TOO_LARGE = "SKIFFY_IPC_TOO_LARGE"
    IPC_VERSION_MISMATCH = "SKIFFY_IPC_VERSION_MISMATCH"
    IPC_DAEMON_NOT_RUNNING = "SKIFFY_IPC_DAEMON_NOT_RUNNING"
    IPC_TIMEOUT = "SKIFFY_IPC_TIMEOUT"
    DAEMON_ALREADY_RUNNING = "SKIFFY_DAEMON_ALREADY_RUNNING"
    DAEMON_SHUTTING_DOWN = "SKIFFY_DAEMON_SHUTTING_DOWN"
    DAEMON_INTERNAL = "SKIFFY_DAEMON_INTERNAL"
    SESSION_NOT_LOGGED_IN = "SKIFFY_SESSION_NOT_LOGGED_IN"
    SESSION_ALREADY_LOGGED_IN = "SKIFFY_SESSION_ALREADY_LOGGED_IN"
    SESSION_LOGIN_FAILED = "SKIFFY_SESSION_LOGIN_FAILED"
    SESSION_EXPIRED = "SKIFFY_SESSION_EXPIRED"
    MATRIX_INSECURE_HOMESERVER = "SKIFFY_MATRIX_INSECURE_HOMESERVER"
    MATRIX_UNREACHABLE = "SKIFFY_MATRIX_UNREACHABLE"
    MATRIX_BAD_RESPONSE = "SKIFFY_MATRIX_BAD_RESPONSE"
    MATRIX_REQUEST_FAILED = "SKIFFY_MATRIX_REQUEST_FAILED"
    #: A key file that does not open (wrong passphrase, not a key export).
    CRYPTO_BAD_KEY_FILE = "SKIFFY_CRYPTO_BAD_KEY_FILE"
    #: No such device (its keys are not on the server) to verify.
    CRYPTO_UNKNOWN_DEVICE = "SKIFFY_CRYPTO_UNKNOWN_DEVICE"
    #: No verification with that transaction id (never, or long over).
    CRYPTO_UNKNOWN_VERIFICATION = "SKIFFY_CRYPTO_UNKNOWN_VERIFICATION"
    #: The verification is not in a state where that step is possible.
    CRYPTO_VERIFICATION_STATE = "SKIFFY_CRYPTO_VERIFICATION_STATE"
    #: The encryption store is still loading after a start (a moment), or
    #: failed to load (``status`` says why).
    CRYPTO_NOT_READY = "SKIFFY_CRYPTO_NOT_READY"
    CACHE_WRONG_KEY = "SKIFFY_CACHE_WRONG_KEY"
    CACHE_CORRUPT = "SKIFFY_CACHE_CORRUPT"
    CACHE_UNKNOWN_ROOM = "SKIFFY_CACHE_UNKNOWN_ROOM"
    CREDENTIALS_NO_KEYRING = "SKIFFY_CREDENTIALS_NO_KEYRING"
    CREDENTIALS_KEYRING_FAILED = "SKIFFY_CREDENTIALS_KEYRING_FAILED"
    CREDENTIALS_MISSING = "SKIFFY_CREDENTIALS_MISSING"
    OUTBOX_EMPTY_BODY = "SKIFFY_OUTBOX_EMPTY_BODY"
    OUTBOX_TOO_LARGE = "SKIFFY_OUTBOX_TOO_LARGE"
    OUTBOX_ROOM_ENCRYPTED = "SKIFFY_OUTBOX_ROOM_ENCRYPTED"
    OUTBOX_NOT_YOURS = "SKIFFY_OUTBOX_NOT_YOURS"
    OUTBOX_UNKNOWN_ITEM = "SKIFFY_OUTBOX_UNKNOWN_ITEM"
    OUTBOX_IN_FLIGHT = "SKIFFY_OUTBOX_IN_FLIGHT"
    OUTBOX_UNKNOWN_TARGET = "SKIFFY_OUTBOX_UNKNOWN_TARGET"
    OUTBOX_NOT_EMPTY = "SKIFFY_OUTBOX_NOT_EMPTY"
    CONFIG_INVALID = "SKIFFY_CONFIG_INVALID"


# --------------------------------------------------------------------------
# Shared records


class RoomInfo(msgspec.Struct, kw_only=True):
    room_id: str
    #: The display name, computed as the spec says (name, alias, heroes).
    name: str
    topic: str | None = None
    is_encrypted: bool = False
    member_count: int = 0
    #: Messages from others after the account's read receipt (computed from
    #: the cache when the receipt's event is there, else the server's count).
    unread_count: int = 0
    membership: Literal["join", "invite", "leave"] = "join"
    avatar_url: str | None = None
    join_rule: str | None = None
    notification_count: int = 0
    highlight_count: int = 0
    #: Room tags (``m.favourite``, ``m.lowpriority``, ``u.*``).
    tags: list[str] = msgspec.field(default_factory=list)
    is_direct: bool = False
    #: The other user of a direct chat (from ``m.direct``).
    direct_user: str | None = None
    #: Who invited the account (invites only).
    inviter: str | None = None
    #: The room that replaced this one (``m.room.tombstone``).
    successor: str | None = None
    predecessor: str | None = None
    #: The account's ``m.fully_read`` marker.
    fully_read: str | None = None
    #: The account's own read receipt.
    read_receipt: str | None = None


class MessageInfo(msgspec.Struct, kw_only=True):
    """One timeline row: a message, or a state change shown as an item."""

    event_id: str | None
    room_id: str
    sender: str
    #: A message's body (the latest edit's); for a state change, one line
    #: saying what it did; "(deleted)" when redacted.
    body: str
    ts: int
    status: MessageStatus
    txn_id: str | None = None
    msgtype: str | None = "m.text"
    #: The event type: m.room.message, m.room.encrypted, or a state type.
    type: str = "m.room.message"
    state_key: str | None = None
    format: str | None = None
    formatted_body: str | None = None
    edited: bool = False
    redacted: bool = False
    #: Reaction key → number of distinct senders.
    reactions: dict[str, int] = msgspec.field(default_factory=dict)
    #: The keys the account itself reacted with.
    my_reactions: list[str] = msgspec.field(default_factory=list)
    reply_to: str | None = None
    thread_root: str | None = None
    #: On a thread root: how many replies, and the latest one's event id.
    thread_count: int = 0
    thread_latest: str | None = None
    #: The content a UI renders (the latest edit's, or stripped if redacted):
    #: url and info for media, geo_uri for locations, and so on.
    content: dict[str, Any] = msgspec.field(default_factory=dict)
    #: Arrived end-to-end encrypted. ``type`` is the plaintext's type once
    #: decrypted; "m.room.encrypted" while its key is missing (body
    #: "** unable to decrypt **"), until a message_updated brings the text.
    encrypted: bool = False


class MemberInfo(msgspec.Struct, kw_only=True):
    room_id: str
    user_id: str
    membership: str
    display_name: str | None = None
    avatar_url: str | None = None


class GapInfo(msgspec.Struct, kw_only=True):
    """Missing history: between ``after`` (None: the room's start is not
    known to be reached) and ``before`` (the first event after the gap)."""

    after: str | None
    before: str | None


# --------------------------------------------------------------------------
# Requests (commands), tagged by "cmd"


class Hello(msgspec.Struct, tag_field="cmd", tag="hello", kw_only=True):
    protocol_version: int = PROTOCOL_VERSION


class Status(msgspec.Struct, tag_field="cmd", tag="status", kw_only=True):
    pass


class Login(msgspec.Struct, tag_field="cmd", tag="login", kw_only=True):
    homeserver: str
    user: str
    password: str

    def __repr__(self) -> str:  # never print a password
        return f"Login(homeserver={self.homeserver!r}, user={self.user!r}, password=<redacted>)"


class SsoStart(msgspec.Struct, tag_field="cmd", tag="sso_start", kw_only=True):
    """Begin single sign-on: the daemon opens a one-shot listener on
    127.0.0.1 for the homeserver's redirect and answers the URL to open."""

    homeserver: str
    timeout_s: int = 300


class SsoFinish(msgspec.Struct, tag_field="cmd", tag="sso_finish", kw_only=True):
    """Wait for the redirect of an SSO flow and complete the login."""

    flow_id: str


class Logout(msgspec.Struct, tag_field="cmd", tag="logout", kw_only=True):
    #: Keep the cache and the crypto store on disk (they stay encrypted;
    #: their key leaves with the keyring item, so they cannot be read again).
    keep_cache: bool = False
    #: Log out even though the outbox still holds messages (they are lost).
    #: Without it such a logout is refused with ``SKIFFY_OUTBOX_NOT_EMPTY``.
    discard_outbox: bool = False


class ForgetAccount(msgspec.Struct, tag_field="cmd", tag="forget_account", kw_only=True):
    """Remove what skiffyd keeps on this machine for an account that is not
    logged in: its cache and crypto store, its credentials record, and, if
    it names that account, the account pointer and the kept-outbox note.
    Refused for the account logged in now (``logout`` is for that)."""

    user_id: str
    #: Forget it even though a revoked session's outbox kept unsent messages
    #: for the account's next login (they are lost). Without it that is
    #: refused with ``SKIFFY_OUTBOX_NOT_EMPTY``.
    discard_outbox: bool = False


class Rooms(msgspec.Struct, tag_field="cmd", tag="rooms", kw_only=True):
    pass


class Messages(msgspec.Struct, tag_field="cmd", tag="messages", kw_only=True):
    room_id: str
    limit: int = 50


class Send(msgspec.Struct, tag_field="cmd", tag="send", kw_only=True):
    room_id: str
    body: str
    #: m.text, m.notice or m.emote.
    msgtype: str = "m.text"
    #: Render Markdown into ``formatted_body`` (HTML); False sends plain text.
    markdown: bool = True
    #: An event id, or the txn id of a message still in the outbox.
    reply_to: str | None = None
    thread_root: str | None = None


class Edit(msgspec.Struct, tag_field="cmd", tag="edit", kw_only=True):
    room_id: str
    #: The event id of one of the account's messages, or its pending txn id.
    target: str
    body: str
    markdown: bool = True


class Redact(msgspec.Struct, tag_field="cmd", tag="redact", kw_only=True):
    room_id: str
    target: str
    reason: str | None = None


class React(msgspec.Struct, tag_field="cmd", tag="react", kw_only=True):
    room_id: str
    target: str
    key: str


class Unreact(msgspec.Struct, tag_field="cmd", tag="unreact", kw_only=True):
    room_id: str
    target: str
    key: str


class MarkRead(msgspec.Struct, tag_field="cmd", tag="mark_read", kw_only=True):
    room_id: str
    #: Up to this event; None: the room's latest.
    event_id: str | None = None


class SetTyping(msgspec.Struct, tag_field="cmd", tag="typing", kw_only=True):
    room_id: str
    typing: bool
    timeout_ms: int = 30_000


class CreateRoom(msgspec.Struct, tag_field="cmd", tag="create_room", kw_only=True):
    name: str | None = None
    topic: str | None = None
    public: bool = False
    encrypted: bool = False
    invite: list[str] = msgspec.field(default_factory=list)
    direct: bool = False


class Leave(msgspec.Struct, tag_field="cmd", tag="leave", kw_only=True):
    room_id: str


class Forget(msgspec.Struct, tag_field="cmd", tag="forget", kw_only=True):
    room_id: str


class Invite(msgspec.Struct, tag_field="cmd", tag="invite", kw_only=True):
    room_id: str
    user_id: str


class Kick(msgspec.Struct, tag_field="cmd", tag="kick", kw_only=True):
    room_id: str
    user_id: str
    reason: str | None = None


class Ban(msgspec.Struct, tag_field="cmd", tag="ban", kw_only=True):
    room_id: str
    user_id: str
    reason: str | None = None


class OpenDirect(msgspec.Struct, tag_field="cmd", tag="open_direct", kw_only=True):
    user_id: str


class GetProfile(msgspec.Struct, tag_field="cmd", tag="get_profile", kw_only=True):
    #: None: the account's own profile.
    user_id: str | None = None


class SetDisplayName(msgspec.Struct, tag_field="cmd", tag="set_display_name", kw_only=True):
    display_name: str


class SearchUsers(msgspec.Struct, tag_field="cmd", tag="search_users", kw_only=True):
    query: str
    limit: int = 10


class OutboxList(msgspec.Struct, tag_field="cmd", tag="outbox_list", kw_only=True):
    pass


class OutboxRetry(msgspec.Struct, tag_field="cmd", tag="outbox_retry", kw_only=True):
    txn_id: str


class OutboxCancel(msgspec.Struct, tag_field="cmd", tag="outbox_cancel", kw_only=True):
    txn_id: str


class Join(msgspec.Struct, tag_field="cmd", tag="join", kw_only=True):
    room: str  # a room id (!…) or an alias (#…)


class ChangesSince(msgspec.Struct, tag_field="cmd", tag="changes_since", kw_only=True):
    seq: int
    limit: int = 1000
    #: The instance id ``seq`` was seen under. When it is not the daemon's
    #: current one (a new account session, a new change log), the answer is
    #: ``reset``: the seq means nothing in this log.
    instance_id: str | None = None


class Members(msgspec.Struct, tag_field="cmd", tag="members", kw_only=True):
    room_id: str
    #: Include members who left or were banned.
    all: bool = False


class Backfill(msgspec.Struct, tag_field="cmd", tag="backfill", kw_only=True):
    """Fill history from the server into the cache, newest gap first."""

    room_id: str
    limit: int = 100


class Devices(msgspec.Struct, tag_field="cmd", tag="devices", kw_only=True):
    """A user's devices and how far each is trusted; the account's own by default."""

    user_id: str | None = None


class KeysExport(msgspec.Struct, tag_field="cmd", tag="keys_export", kw_only=True):
    """Every Megolm session this device can decrypt with (the export format's list)."""


class KeysImport(msgspec.Struct, tag_field="cmd", tag="keys_import", kw_only=True):
    """Megolm sessions in the export format's list (already decrypted by the UI)."""

    sessions: list[dict[str, Any]]


class Verifications(msgspec.Struct, tag_field="cmd", tag="verifications", kw_only=True):
    """The device verifications under way (and those just ended)."""


class VerifyStart(msgspec.Struct, tag_field="cmd", tag="verify_start", kw_only=True):
    """Start an emoji (SAS) verification with another device."""

    user_id: str
    device_id: str


class VerifyAccept(msgspec.Struct, tag_field="cmd", tag="verify_accept", kw_only=True):
    """Accept a verification another device started."""

    transaction_id: str


class VerifyConfirm(msgspec.Struct, tag_field="cmd", tag="verify_confirm", kw_only=True):
    """The emojis (or numbers) match on both screens."""

    transaction_id: str


class VerifyCancel(msgspec.Struct, tag_field="cmd", tag="verify_cancel", kw_only=True):
    """Stop a verification (the emojis differ, or the user changed their mind)."""

    transaction_id: str


Request = (
    Hello
    | Status
    | Login
    | Logout
    | ForgetAccount
    | Rooms
    | Messages
    | Send
    | Join
    | ChangesSince
    | Members
    | Backfill
    | Edit
    | Redact
    | React
    | Unreact
    | MarkRead
    | SetTyping
    | CreateRoom
    | Leave
    | Forget
    | Invite
    | Kick
    | Ban
    | OpenDirect
    | GetProfile
    | SetDisplayName
    | SearchUsers
    | OutboxList
    | OutboxRetry
    | OutboxCancel
    | SsoStart
    | SsoFinish
    | Devices
    | KeysExport
    | KeysImport
    | Verifications
    | VerifyStart
    | VerifyAccept
    | VerifyConfirm
    | VerifyCancel
)
COMMAND_NAMES: frozenset[str] = frozenset(str(t.__struct_config__.tag) for t in get_args(Request))


# --------------------------------------------------------------------------
# Results, tagged by "type"


class HelloResult(msgspec.Struct, tag_field="type", tag="hello", kw_only=True):
    protocol_version: int
    instance_id: str
    last_seq: int


class KeptOutbox(msgspec.Struct, kw_only=True):
    """Unsent messages a revoked session left for its account's next login."""

    user_id: str
    items: int


class StatusResult(msgspec.Struct, tag_field="type", tag="status", kw_only=True):
    state: SessionState
    user_id: str | None = None
    homeserver: str | None = None
    device_id: str | None = None
    last_seq: int = 0
    instance_id: str = ""
    pid: int = 0
    pending_outbox: int = 0
    last_error: str | None = None
    #: Syncs this process started without a stored token (a full initial
    #: sync). 0 after a restart proves the daemon resumed from its token.
    full_syncs: int = 0
    #: Completed /sync round trips in this process.
    syncs: int = 0
    #: What the homeserver says of itself and of this session.
    server_versions: list[str] = msgspec.field(default_factory=list)
    uses_refresh_token: bool = False
    token_expires_at_ms: int | None = None
    #: Refreshes of the access token in this process.
    token_refreshes: int = 0
    #: The device's ed25519 fingerprint and whether its keys are on the server.
    device_fingerprint: str | None = None
    keys_uploaded: bool = False
    #: A revoked session's unsent messages, kept for its account's next
    #: login (that account may be another than ``user_id``); None if none.
    kept_outbox: KeptOutbox | None = None


class LoginResult(msgspec.Struct, tag_field="type", tag="login", kw_only=True):
    user_id: str
    device_id: str
    homeserver: str


class SsoStartResult(msgspec.Struct, tag_field="type", tag="sso_start", kw_only=True):
    flow_id: str
    #: Open this in a browser: the homeserver's SSO page.
    url: str
    #: Seconds the flow waits for the redirect.
    timeout_s: int


class OkResult(msgspec.Struct, tag_field="type", tag="ok", kw_only=True):
    pass


class ForgetAccountResult(msgspec.Struct, tag_field="type", tag="forget_account", kw_only=True):
    #: Whether anything was kept for the account (false: nothing to remove).
    found: bool
    #: Unsent outbox items that went with it (``discard_outbox``).
    discarded: int = 0


class RoomsResult(msgspec.Struct, tag_field="type", tag="rooms", kw_only=True):
    rooms: list[RoomInfo]


class MessagesResult(msgspec.Struct, tag_field="type", tag="messages", kw_only=True):
    messages: list[MessageInfo]
    #: Known holes in the history the messages span (``skiffyd backfill``).
    gaps: list[GapInfo] = msgspec.field(default_factory=list)


class MembersResult(msgspec.Struct, tag_field="type", tag="members", kw_only=True):
    members: list[MemberInfo]


class ProfileInfo(msgspec.Struct, kw_only=True):
    user_id: str
    display_name: str | None = None
    avatar_url: str | None = None


class ProfileResult(msgspec.Struct, tag_field="type", tag="profile", kw_only=True):
    profile: ProfileInfo


class UsersResult(msgspec.Struct, tag_field="type", tag="users", kw_only=True):
    results: list[ProfileInfo]
    limited: bool = False


OutboxState = Literal["queued", "in_flight", "failed"]


class OutboxItemInfo(msgspec.Struct, kw_only=True):
    txn_id: str
    room_id: str
    #: event (PUT send), redaction (PUT redact) or receipt (read markers).
    kind: str
    event_type: str | None
    state: OutboxState
    attempts: int = 0
    last_error: str | None = None
    #: What the item points at: an event id, or the txn id of an item before it.
    target: str | None = None


class OutboxResult(msgspec.Struct, tag_field="type", tag="outbox", kw_only=True):
    items: list[OutboxItemInfo]


class BackfillResult(msgspec.Struct, tag_field="type", tag="backfill", kw_only=True):
    #: Rows added to the timeline (edits, reactions and redactions not counted).
    added: int
    #: Events fetched from the server.
    fetched: int
    #: True when the room's first event is now in the cache.
    reached_start: bool


class SendResult(msgspec.Struct, tag_field="type", tag="send", kw_only=True):
    txn_id: str


class JoinResult(msgspec.Struct, tag_field="type", tag="join", kw_only=True):
    room_id: str


DeviceTrust = Literal["verified", "unverified", "blacklisted"]


class DeviceInfo(msgspec.Struct, kw_only=True):
    user_id: str
    device_id: str
    display_name: str | None = None
    ed25519: str
    curve25519: str
    #: verified: confirmed by the account (verification); unverified: keys
    #: seen on the server, not confirmed (they still get room keys);
    #: blacklisted: never given room keys.
    trust: DeviceTrust
    #: This daemon's own device.
    own: bool = False


class DevicesResult(msgspec.Struct, tag_field="type", tag="devices", kw_only=True):
    user_id: str
    devices: list[DeviceInfo]


#: requested: another device started, waiting for this one to accept;
#: started: this device started, waiting for the other to accept;
#: accepted: keys being exchanged; keys_exchanged: ``emojis`` and
#: ``decimals`` are ready to compare; confirmed: this side said they match,
#: waiting for the other; verified: done, the device is trusted from now on;
#: canceled: see ``cancel_reason``.
VerificationState = Literal[
    "requested", "started", "accepted", "keys_exchanged", "confirmed", "verified", "canceled"
]


class Emoji(msgspec.Struct, kw_only=True):
    emoji: str
    #: The spec's English name (what to say aloud).
    name: str


class VerificationInfo(msgspec.Struct, kw_only=True):
    transaction_id: str
    user_id: str
    device_id: str
    we_started: bool
    state: VerificationState
    emojis: list[Emoji] = msgspec.field(default_factory=list)
    decimals: list[int] = msgspec.field(default_factory=list)
    cancel_reason: str | None = None


class VerificationsResult(msgspec.Struct, tag_field="type", tag="verifications", kw_only=True):
    verifications: list[VerificationInfo]


class VerificationResult(msgspec.Struct, tag_field="type", tag="verification", kw_only=True):
    verification: VerificationInfo


class KeysExportResult(msgspec.Struct, tag_field="type", tag="keys_export", kw_only=True):
    #: Secret key material: the UI encrypts it with the user's passphrase
    #: (``skiffyd keys export`` writes Element's file format) and keeps it
    #: nowhere else.
    sessions: list[dict[str, Any]]


class KeysImportResult(msgspec.Struct, tag_field="type", tag="keys_import", kw_only=True):
    imported: int
    #: Sessions already known or unusable.
    skipped: int
    #: Rows that were "unable to decrypt" and are now read.
    decrypted: int


# --------------------------------------------------------------------------
# Events, tagged by "type". Every change-log event carries its ``seq``.


class RoomUpdated(msgspec.Struct, tag_field="type", tag="room_updated", kw_only=True):
    seq: int
    room: RoomInfo


class MessageAdded(msgspec.Struct, tag_field="type", tag="message_added", kw_only=True):
    seq: int
    message: MessageInfo


class MessageUpdated(msgspec.Struct, tag_field="type", tag="message_updated", kw_only=True):
    """A message changed: a pending echo was sent, reconciled, or failed."""

    seq: int
    message: MessageInfo


class MemberUpdated(msgspec.Struct, tag_field="type", tag="member_updated", kw_only=True):
    seq: int
    member: MemberInfo


class MessageRemoved(msgspec.Struct, tag_field="type", tag="message_removed", kw_only=True):
    """A row is gone: a cancelled pending message (``txn_id``), or an
    "unable to decrypt" row that turned out, once decrypted, to be an edit or
    a reaction (``event_id``; the row it changes gets a message_updated)."""

    seq: int
    room_id: str
    txn_id: str | None = None
    event_id: str | None = None


class OutboxUpdated(msgspec.Struct, tag_field="type", tag="outbox_updated", kw_only=True):
    """An outbox item changed state (failed, retried) or left the outbox
    (``removed``: delivered or cancelled)."""

    seq: int
    item: OutboxItemInfo
    removed: bool = False


class Typing(msgspec.Struct, tag_field="type", tag="typing", kw_only=True):
    """Ephemeral: who is typing in a room now (not stored, not in the log)."""

    seq: int
    room_id: str
    user_ids: list[str]


class VerificationUpdated(
    msgspec.Struct, tag_field="type", tag="verification_updated", kw_only=True
):
    """Ephemeral: a device verification changed state (``verifications`` lists them)."""

    seq: int
    verification: VerificationInfo


class SessionExpired(msgspec.Struct, tag_field="type", tag="session_expired", kw_only=True):
    """Ephemeral: the homeserver ended the session. ``revoked``: it was logged
    out elsewhere and the credentials are gone; else the token could not be
    refreshed. Either way: log in again."""

    seq: int
    user_id: str
    revoked: bool
    message: str


class SessionStateChanged(msgspec.Struct, tag_field="type", tag="session_state", kw_only=True):
    """Ephemeral: not in the change log; ``seq`` is the last log seq when sent."""

    seq: int
    state: SessionState
    user_id: str | None = None


Event = (
    RoomUpdated
    | MessageAdded
    | MessageUpdated
    | MessageRemoved
    | MemberUpdated
    | OutboxUpdated
    | SessionStateChanged
    | SessionExpired
    | Typing
    | VerificationUpdated
)
#: Events that are stored in the change log (and so returned by ChangesSince).
LoggedEvent = (
    RoomUpdated | MessageAdded | MessageUpdated | MessageRemoved | MemberUpdated | OutboxUpdated
)


class ChangesResult(msgspec.Struct, tag_field="type", tag="changes", kw_only=True):
    """The change-log events with ``seq`` > the asked seq, oldest first.

    ``reset`` is true when the asked seq is older than what the log retains,
    ahead of it, or from another change log (``instance_id``): the UI must reload its
    state (rooms, messages) and continue from ``last_seq``. ``more`` is true
    when ``limit`` cut the answer short: ask again from the last seq seen.
    """

    events: list[LoggedEvent]
    last_seq: int
    reset: bool = False
    more: bool = False
    #: The change log these seqs belong to (the daemon's instance id).
    instance_id: str = ""


Result = (
    HelloResult
    | StatusResult
    | LoginResult
    | OkResult
    | ForgetAccountResult
    | RoomsResult
    | MessagesResult
    | SendResult
    | JoinResult
    | ChangesResult
    | MembersResult
    | BackfillResult
    | ProfileResult
    | UsersResult
    | OutboxResult
    | SsoStartResult
    | DevicesResult
    | KeysExportResult
    | KeysImportResult
    | VerificationsResult
    | VerificationResult
)


class ErrorInfo(msgspec.Struct, kw_only=True):
    code: str
    message: str
    details: dict[str, Any] | None = None


class Reply(msgspec.Struct, kw_only=True, omit_defaults=True):
    """The one reply envelope: exactly one of ``result`` and ``error`` is set."""

    result: Result | None = None
    error: ErrorInfo | None = None


class EventBatch(msgspec.Struct, kw_only=True):
    """One Pub0 frame. ``instance_id`` names the daemon's change log: the same
    across daemon restarts, new with a new account session's cache."""

    instance_id: str
    events: list[Event]


def export_json_schema() -> dict[str, Any]:
    """The JSON Schema of every frame on both sockets."""
    _, components = msgspec.json.schema_components(
        [Request, Reply, EventBatch], ref_template="#/$defs/{name}"
    )
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "skiffyd IPC",
        "x-protocol-version": PROTOCOL_VERSION,
        "x-sockets": {
            "cmd.sock": {"pattern": "rep0", "request": "#/$defs/Request", "reply": "#/$defs/Reply"},
            "events.sock": {"pattern": "pub0", "frame": "#/$defs/EventBatch"},
        },
        "x-error-codes": sorted(v for k, v in vars(ErrorCode).items() if not k.startswith("_")),
        "$defs": {
            **components,
            "Request": {"anyOf": [{"$ref": f"#/$defs/{t.__name__}"} for t in get_args(Request)]},
        },
    }


__all__ = [
    "COMMAND_NAMES",
    "MAX_REQUEST_BYTES",
    "PROTOCOL_VERSION",
    "Backfill",
    "BackfillResult",
    "Ban",
    "ChangesResult",
    "ChangesSince",
    "CreateRoom",
    "DeviceInfo",
    "DeviceTrust",
    "Devices",
    "DevicesResult",
    "Edit",
    "Emoji",
    "ErrorCode",
    "ErrorInfo",
    "Event",
    "EventBatch",
    "Forget",
    "ForgetAccount",
    "ForgetAccountResult",
    "GapInfo",
    "GetProfile",
    "Hello",
    "HelloResult",
    "Invite",
    "Join",
    "JoinResult",
    "KeptOutbox",
    "KeysExport",
    "KeysExportResult",
    "KeysImport",
    "KeysImportResult",
    "Kick",
    "Leave",
    "LoggedEvent",
    "Login",
    "LoginResult",
    "Logout",
    "MarkRead",
    "MemberInfo",
    "MemberUpdated",
    "Members",
    "MembersResult",
    "MessageAdded",
    "MessageInfo",
    "MessageRemoved",
    "MessageUpdated",
    "Messages",
    "MessagesResult",
    "OkResult",
    "OpenDirect",
    "OutboxCancel",
    "OutboxItemInfo",
    "OutboxList",
    "OutboxResult",
    "OutboxRetry",
    "OutboxState",
    "OutboxUpdated",
    "ProfileInfo",
    "ProfileResult",
    "React",
    "Redact",
    "Reply",
    "Request",
    "Result",
    "RoomInfo",
    "RoomUpdated",
    "Rooms",
    "RoomsResult",
    "SearchUsers",
    "Send",
    "SendResult",
    "SessionExpired",
    "SessionState",
    "SessionStateChanged",
    "SetDisplayName",
    "SetTyping",
    "SsoFinish",
    "SsoStart",
    "SsoStartResult",
    "Status",
    "StatusResult",
    "Typing",
    "Unreact",
    "UsersResult",
    "VerificationInfo",
    "VerificationResult",
    "VerificationState",
    "VerificationUpdated",
    "Verifications",
    "VerificationsResult",
    "VerifyAccept",
    "VerifyCancel",
    "VerifyConfirm",
    "VerifyStart",
    "export_json_schema",
]
