"""Typed msgspec Structs for the parts of the Matrix client-server API skiffyd reads.

The hot path (``/sync``) is decoded straight into these Structs: unknown
fields are ignored, optional fields have defaults, so a server that sends
more than we know is fine, and one that sends the wrong type for a field we
use fails validation with the path of the bad field (a ``BadResponseError``
at the transport boundary). Event ``content`` stays a plain dict: its shape
depends on the event type and is interpreted by :mod:`skiffyd.core.sync`.

Every Struct is ``gc=False``: they form no reference cycles, and leaving the
tens of thousands of them in an initial sync out of the garbage collector's
scans cut the ingest's CPU time by about a quarter (docs/benchmarks.md).
"""

from __future__ import annotations

from typing import Any

import msgspec


class UnsignedData(msgspec.Struct, kw_only=True, gc=False):
    transaction_id: str | None = None
    age: int | None = None
    prev_content: dict[str, Any] | None = None
    #: Set when the server already redacted the event (its content is stripped).
    redacted_because: dict[str, Any] | None = None


class ClientEvent(msgspec.Struct, kw_only=True, gc=False):
    """A timeline or state event as /sync delivers it (room_id implied)."""

    type: str
    content: dict[str, Any] = msgspec.field(default_factory=dict)
    sender: str = ""
    event_id: str | None = None
    origin_server_ts: int = 0
    state_key: str | None = None
    unsigned: UnsignedData | None = None
    #: m.room.redaction before room version 11 (v11 moved it into content).
    redacts: str | None = None


class StrippedStateEvent(msgspec.Struct, kw_only=True, gc=False):
    type: str
    state_key: str = ""
    sender: str = ""
    content: dict[str, Any] = msgspec.field(default_factory=dict)


class EventList(msgspec.Struct, kw_only=True, gc=False):
    events: list[ClientEvent] = msgspec.field(default_factory=list)


class Timeline(msgspec.Struct, kw_only=True, gc=False):
    events: list[ClientEvent] = msgspec.field(default_factory=list)
    limited: bool = False
    prev_batch: str | None = None


class RoomSummary(msgspec.Struct, kw_only=True, gc=False):
    heroes: list[str] | None = msgspec.field(default=None, name="m.heroes")
    joined_member_count: int | None = msgspec.field(default=None, name="m.joined_member_count")
    invited_member_count: int | None = msgspec.field(default=None, name="m.invited_member_count")


class UnreadNotifications(msgspec.Struct, kw_only=True, gc=False):
    notification_count: int | None = None
    highlight_count: int | None = None


class BasicEvent(msgspec.Struct, kw_only=True, gc=False):
    """Account data and ephemeral events: a type and a content."""

    type: str
    content: dict[str, Any] = msgspec.field(default_factory=dict)


class BasicEventList(msgspec.Struct, kw_only=True, gc=False):
    events: list[BasicEvent] = msgspec.field(default_factory=list)


class JoinedRoom(msgspec.Struct, kw_only=True, gc=False):
    state: EventList = msgspec.field(default_factory=EventList)
    timeline: Timeline = msgspec.field(default_factory=Timeline)
    summary: RoomSummary = msgspec.field(default_factory=RoomSummary)
    unread_notifications: UnreadNotifications = msgspec.field(default_factory=UnreadNotifications)
    ephemeral: BasicEventList = msgspec.field(default_factory=BasicEventList)
    account_data: BasicEventList = msgspec.field(default_factory=BasicEventList)


class InviteState(msgspec.Struct, kw_only=True, gc=False):
    events: list[StrippedStateEvent] = msgspec.field(default_factory=list)


class InvitedRoom(msgspec.Struct, kw_only=True, gc=False):
    invite_state: InviteState = msgspec.field(default_factory=InviteState)


class LeftRoom(msgspec.Struct, kw_only=True, gc=False):
    state: EventList = msgspec.field(default_factory=EventList)
    timeline: Timeline = msgspec.field(default_factory=Timeline)
    account_data: BasicEventList = msgspec.field(default_factory=BasicEventList)


class Rooms(msgspec.Struct, kw_only=True, gc=False):
    """Each room stays raw JSON until it is planned (:mod:`skiffyd.core.sync`).

    A large initial sync is then never decoded whole: one room at a time is
    turned into Structs, planned, stored and dropped, so memory holds the
    body plus one room, not the body plus every room's objects.
    """

    join: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)
    invite: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)
    leave: dict[str, msgspec.Raw] = msgspec.field(default_factory=dict)


class ToDevice(msgspec.Struct, kw_only=True, gc=False):
    """To-device events stay dicts: nio's crypto machine parses them."""

    events: list[dict[str, Any]] = msgspec.field(default_factory=list)


class DeviceLists(msgspec.Struct, kw_only=True, gc=False):
    changed: list[str] = msgspec.field(default_factory=list)
    left: list[str] = msgspec.field(default_factory=list)


class SyncResponse(msgspec.Struct, kw_only=True, gc=False):
    next_batch: str
    rooms: Rooms = msgspec.field(default_factory=Rooms)
    account_data: BasicEventList = msgspec.field(default_factory=BasicEventList)
    to_device: ToDevice = msgspec.field(default_factory=ToDevice)
    device_lists: DeviceLists = msgspec.field(default_factory=DeviceLists)
    device_one_time_keys_count: dict[str, int] = msgspec.field(default_factory=dict)


class MessagesResponse(msgspec.Struct, kw_only=True, gc=False):
    """``GET /rooms/{id}/messages``: ``chunk`` is newest first with dir=b."""

    chunk: list[ClientEvent] = msgspec.field(default_factory=list)
    start: str = ""
    end: str | None = None
    state: list[ClientEvent] = msgspec.field(default_factory=list)


class LoginResponse(msgspec.Struct, kw_only=True, gc=False):
    user_id: str
    access_token: str
    device_id: str
    refresh_token: str | None = None
    expires_in_ms: int | None = None

    def __repr__(self) -> str:
        return f"LoginResponse(user_id={self.user_id!r}, device_id={self.device_id!r})"


class MatrixErrorBody(msgspec.Struct, kw_only=True, gc=False):
    errcode: str | None = None
    error: str | None = None
    retry_after_ms: int | None = None
    soft_logout: bool = False


class SendResponse(msgspec.Struct, kw_only=True, gc=False):
    event_id: str


class JoinResponse(msgspec.Struct, kw_only=True, gc=False):
    room_id: str


sync_decoder = msgspec.json.Decoder(SyncResponse)
login_decoder = msgspec.json.Decoder(LoginResponse)
error_decoder = msgspec.json.Decoder(MatrixErrorBody)
send_decoder = msgspec.json.Decoder(SendResponse)
join_decoder = msgspec.json.Decoder(JoinResponse)
messages_decoder = msgspec.json.Decoder(MessagesResponse)
joined_room_decoder = msgspec.json.Decoder(JoinedRoom)
invited_room_decoder = msgspec.json.Decoder(InvitedRoom)
left_room_decoder = msgspec.json.Decoder(LeftRoom)
