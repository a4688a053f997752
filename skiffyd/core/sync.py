"""What a /sync response means for the cache.

Theory of operation
-------------------
:func:`plan_sync` turns one decoded :class:`~skiffyd.core.wire.SyncResponse`
into a :class:`SyncPlan`: per-room patches (only the fields this response
says something about), the new messages in timeline order, and the
``next_batch`` token. It reads nothing and writes nothing; the cache applies
the whole plan in ONE transaction together with ``next_batch`` and the
change-log rows, so after a crash the daemon resumes from a token whose
events are all stored.

A room's display name is derived, not stored by the server: the cache keeps
the inputs (name, canonical alias, heroes, member counts) and calls
:func:`room_display_name` after merging a patch. This follows the spec's
order: ``m.room.name``, then ``m.room.canonical_alias``, then heroes, then
"Empty room".

Own messages sent through the outbox come back in sync with
``unsigned.transaction_id``; the plan carries it so the cache reconciles the
local echo instead of adding the message twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from skiffyd.core.wire import ClientEvent, StrippedStateEvent, SyncResponse

#: Room row fields a patch may set.
ROOM_FIELDS = (
    "membership",
    "name",
    "canonical_alias",
    "topic",
    "is_encrypted",
    "joined_count",
    "invited_count",
    "heroes",
    "unread_count",
)


@dataclass(slots=True)
class RoomPatch:
    room_id: str
    changes: dict[str, Any] = field(default_factory=dict)


@dataclass(slots=True, frozen=True)
class NewMessage:
    room_id: str
    event_id: str
    sender: str
    body: str
    ts: int
    msgtype: str
    txn_id: str | None


@dataclass(slots=True)
class SyncPlan:
    next_batch: str
    rooms: list[RoomPatch]
    messages: list[NewMessage]

    @property
    def event_count(self) -> int:
        return len(self.messages)


def _apply_state(
    changes: dict[str, Any], ev: ClientEvent | StrippedStateEvent, own_user_id: str
) -> None:
    content = ev.content
    kind = ev.type
    if kind == "m.room.name" and ev.state_key == "":
        name = content.get("name")
        changes["name"] = name if isinstance(name, str) and name else None
    elif kind == "m.room.topic" and ev.state_key == "":
        topic = content.get("topic")
        changes["topic"] = topic if isinstance(topic, str) and topic else None
    elif kind == "m.room.canonical_alias" and ev.state_key == "":
        alias = content.get("alias")
        changes["canonical_alias"] = alias if isinstance(alias, str) and alias else None
    elif kind == "m.room.encryption" and ev.state_key == "":
        # Encryption can never be turned off again (spec): only ever set True.
        if content.get("algorithm"):
            changes["is_encrypted"] = True
    elif kind == "m.room.member" and ev.state_key == own_user_id:
        membership = content.get("membership")
        if membership in ("join", "invite"):
            changes["membership"] = membership
        elif membership in ("leave", "ban"):
            changes["membership"] = "leave"


def _message(room_id: str, ev: ClientEvent) -> NewMessage | None:
    if ev.type != "m.room.message" or ev.event_id is None:
        return None
    body = ev.content.get("body")
    msgtype = ev.content.get("msgtype")
    if not isinstance(body, str) or not isinstance(msgtype, str):
        # Redacted or malformed: not a message a UI can show (yet).
        return None
    txn_id = ev.unsigned.transaction_id if ev.unsigned is not None else None
    return NewMessage(
        room_id=room_id,
        event_id=ev.event_id,
        sender=ev.sender,
        body=body,
        ts=ev.origin_server_ts,
        msgtype=msgtype,
        txn_id=txn_id,
    )


def plan_sync(response: SyncResponse, own_user_id: str) -> SyncPlan:
    rooms: list[RoomPatch] = []
    messages: list[NewMessage] = []

    for room_id, joined in response.rooms.join.items():
        changes: dict[str, Any] = {"membership": "join"}
        for ev in joined.state.events:
            _apply_state(changes, ev, own_user_id)
        for ev in joined.timeline.events:
            if ev.state_key is not None:
                _apply_state(changes, ev, own_user_id)
            else:
                msg = _message(room_id, ev)
                if msg is not None:
                    messages.append(msg)
        summary = joined.summary
        if summary.heroes is not None:
            changes["heroes"] = list(summary.heroes)
        if summary.joined_member_count is not None:
            changes["joined_count"] = summary.joined_member_count
        if summary.invited_member_count is not None:
            changes["invited_count"] = summary.invited_member_count
        if joined.unread_notifications.notification_count is not None:
            changes["unread_count"] = joined.unread_notifications.notification_count
        rooms.append(RoomPatch(room_id, changes))

    for room_id, invited in response.rooms.invite.items():
        changes = {}
        for sev in invited.invite_state.events:
            _apply_state(changes, sev, own_user_id)
        changes["membership"] = "invite"
        rooms.append(RoomPatch(room_id, changes))

    for room_id, left in response.rooms.leave.items():
        changes = {}
        for ev in left.state.events:
            _apply_state(changes, ev, own_user_id)
        for ev in left.timeline.events:
            if ev.state_key is not None:
                _apply_state(changes, ev, own_user_id)
            else:
                msg = _message(room_id, ev)
                if msg is not None:
                    messages.append(msg)
        changes["membership"] = "leave"
        rooms.append(RoomPatch(room_id, changes))

    return SyncPlan(next_batch=response.next_batch, rooms=rooms, messages=messages)


def _localpart(user_id: str) -> str:
    return user_id[1:].split(":", 1)[0] if user_id.startswith("@") else user_id


def room_display_name(
    *,
    name: str | None,
    canonical_alias: str | None,
    heroes: list[str] | None,
    joined_count: int,
    invited_count: int,
    own_user_id: str,
) -> str:
    """The spec's room name algorithm, with heroes shown by localpart.

    Member display names arrive with lazy-loaded members (a later step);
    until then the localpart is what a person recognises.
    """
    if name:
        return name
    if canonical_alias:
        return canonical_alias
    others = [h for h in (heroes or []) if h != own_user_id]
    if others:
        names = [_localpart(h) for h in others[:5]]
        remaining = max(0, joined_count + invited_count - 1 - len(names))
        text = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
        if remaining > 0:
            text = ", ".join(names) + f" and {remaining} others"
        return text
    if joined_count + invited_count > 1:
        return f"{joined_count + invited_count - 1} others"
    return "Empty room"
