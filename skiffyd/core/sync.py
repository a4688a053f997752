"""What a /sync response means for the cache.

Theory of operation
-------------------
:func:`plan_sync` turns one decoded :class:`~skiffyd.core.wire.SyncResponse`
into a :class:`SyncPlan`: per room a :class:`RoomSync` (room fields this
response says something about, member changes, timeline items in order,
receipts, typing, and whether the timeline was cut short), the account's
``m.direct`` map if it changed, and the ``next_batch`` token. It reads
nothing and writes nothing; the cache applies the whole plan in ONE
transaction together with ``next_batch`` and the change-log rows, so after a
crash the daemon resumes from a token whose events are all stored.

A room's display name is derived, not stored by the server: the cache keeps
the inputs (name, canonical alias, heroes and their member names, member
counts) and calls :func:`room_display_name` after merging. This follows the
spec's order: ``m.room.name``, then ``m.room.canonical_alias``, then heroes,
then "Empty room".

A limited timeline (or a room's first sync) leaves a gap before its first
event, with ``prev_batch`` as the token to backfill it from ``/messages``.

Own messages sent through the outbox come back with
``unsigned.transaction_id``; the items carry it so the cache reconciles the
local echo instead of adding the message twice.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, overload

import msgspec

from skiffyd.core.timeline import TimelineItem, classify
from skiffyd.core.wire import (
    InvitedRoom,
    JoinedRoom,
    LeftRoom,
    Rooms,
    invited_room_decoder,
    joined_room_decoder,
    left_room_decoder,
)
from skiffyd.errors import BadResponseError

T = TypeVar("T")

if TYPE_CHECKING:
    from collections.abc import Iterable, Iterator

    from skiffyd.core.timeline import Decrypt
    from skiffyd.core.wire import BasicEvent, ClientEvent, StrippedStateEvent, SyncResponse

#: Room row fields a sync may set.
ROOM_FIELDS = (
    "membership",
    "name",
    "canonical_alias",
    "topic",
    "avatar_url",
    "join_rule",
    "is_encrypted",
    "joined_count",
    "invited_count",
    "heroes",
    "notification_count",
    "highlight_count",
    "tags",
    "fully_read",
    "inviter",
    "successor",
    "predecessor",
)


@dataclass(slots=True, frozen=True)
class MemberChange:
    user_id: str
    membership: str
    display_name: str | None
    avatar_url: str | None


@dataclass(slots=True, frozen=True)
class Receipt:
    user_id: str
    receipt_type: str  # m.read | m.read.private
    event_id: str
    ts: int
    thread_id: str | None = None


@dataclass(slots=True)
class RoomSync:
    room_id: str
    changes: dict[str, Any] = field(default_factory=dict)
    members: list[MemberChange] = field(default_factory=list)
    items: list[TimelineItem] = field(default_factory=list)
    limited: bool = False
    prev_batch: str | None = None
    receipts: list[Receipt] = field(default_factory=list)
    typing: list[str] | None = None


#: Kept for callers that only patch room fields.
RoomPatch = RoomSync


@dataclass(slots=True)
class SyncPlan:
    next_batch: str
    #: A list, or :class:`RoomPlans`: rooms planned lazily, one at a time.
    rooms: list[RoomSync] | RoomPlans
    direct: dict[str, list[str]] | None = None
    #: The first sync of a new cache. Its messages are stored but not
    #: published one by one: UIs learn of the rooms (room_updated) and read
    #: a room's messages when they open it, as they must after a login anyway
    #: (a new cache is a new change log, so they reload). Tens of thousands
    #: of message events would otherwise be built, logged and sent for
    #: nobody (docs/architecture.md, docs/benchmarks.md).
    initial: bool = False

    @property
    def event_count(self) -> int:
        """Events planned so far (all of them, once the rooms were iterated)."""
        if isinstance(self.rooms, RoomPlans):
            return self.rooms.event_count
        return sum(len(r.items) + len(r.members) for r in self.rooms)

    def typing(self) -> list[tuple[str, list[str]]]:
        """(room id, who types) for the rooms that said so (after iterating)."""
        if isinstance(self.rooms, RoomPlans):
            return list(self.rooms.typing)
        return [(r.room_id, r.typing) for r in self.rooms if r.typing is not None]


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _apply_state(room: RoomSync, ev: ClientEvent | StrippedStateEvent, own_user_id: str) -> None:
    content = ev.content
    kind = ev.type
    changes = room.changes
    if ev.state_key != "" and kind != "m.room.member":
        return
    if kind == "m.room.name":
        changes["name"] = _str(content.get("name"))
    elif kind == "m.room.topic":
        changes["topic"] = _str(content.get("topic"))
    elif kind == "m.room.avatar":
        changes["avatar_url"] = _str(content.get("url"))
    elif kind == "m.room.canonical_alias":
        changes["canonical_alias"] = _str(content.get("alias"))
    elif kind == "m.room.join_rules":
        changes["join_rule"] = _str(content.get("join_rule"))
    elif kind == "m.room.encryption":
        # Encryption can never be turned off again (spec): only ever set True.
        if content.get("algorithm"):
            changes["is_encrypted"] = True
    elif kind == "m.room.tombstone":
        changes["successor"] = _str(content.get("replacement_room"))
    elif kind == "m.room.create":
        predecessor = content.get("predecessor")
        if isinstance(predecessor, dict):
            changes["predecessor"] = _str(predecessor.get("room_id"))
    elif kind == "m.room.member" and ev.state_key:
        membership = _str(content.get("membership")) or "leave"
        room.members.append(
            MemberChange(
                user_id=ev.state_key,
                membership=membership,
                display_name=_str(content.get("displayname")),
                avatar_url=_str(content.get("avatar_url")),
            )
        )
        if ev.state_key == own_user_id:
            if membership in ("join", "invite"):
                changes["membership"] = membership
                if membership == "invite":
                    changes["inviter"] = ev.sender or None
            elif membership in ("leave", "ban"):
                changes["membership"] = "leave"


def _apply_account_data(room: RoomSync, events: list[BasicEvent]) -> None:
    for ev in events:
        if ev.type == "m.tag":
            tags = ev.content.get("tags")
            room.changes["tags"] = sorted(tags) if isinstance(tags, dict) else []
        elif ev.type == "m.fully_read":
            room.changes["fully_read"] = _str(ev.content.get("event_id"))


def _apply_ephemeral(room: RoomSync, events: list[BasicEvent]) -> None:
    for ev in events:
        if ev.type == "m.typing":
            ids = ev.content.get("user_ids")
            room.typing = [u for u in ids if isinstance(u, str)] if isinstance(ids, list) else []
        elif ev.type == "m.receipt":
            for event_id, by_type in ev.content.items():
                if not isinstance(by_type, dict):
                    continue
                for receipt_type, by_user in by_type.items():
                    if receipt_type not in ("m.read", "m.read.private") or not isinstance(
                        by_user, dict
                    ):
                        continue
                    for user_id, data in by_user.items():
                        data = data if isinstance(data, dict) else {}
                        ts = data.get("ts")
                        room.receipts.append(
                            Receipt(
                                user_id=user_id,
                                receipt_type=receipt_type,
                                event_id=event_id,
                                ts=ts if isinstance(ts, int) else 0,
                                thread_id=_str(data.get("thread_id")),
                            )
                        )


def _timeline(
    room: RoomSync, events: list[ClientEvent], own_user_id: str, decrypt: Decrypt | None = None
) -> None:
    for ev in events:
        if ev.state_key is not None:
            _apply_state(room, ev, own_user_id)
        item = classify(room.room_id, ev, decrypt)
        if item is not None:
            room.items.append(item)


def _plan_joined(
    room_id: str, joined: JoinedRoom, own_user_id: str, decrypt: Decrypt | None = None
) -> RoomSync:
    room = RoomSync(room_id, {"membership": "join"})
    for ev in joined.state.events:
        _apply_state(room, ev, own_user_id)
    _timeline(room, joined.timeline.events, own_user_id, decrypt)
    room.limited = joined.timeline.limited
    room.prev_batch = joined.timeline.prev_batch
    summary = joined.summary
    if summary.heroes is not None:
        room.changes["heroes"] = list(summary.heroes)
    if summary.joined_member_count is not None:
        room.changes["joined_count"] = summary.joined_member_count
    if summary.invited_member_count is not None:
        room.changes["invited_count"] = summary.invited_member_count
    counts = joined.unread_notifications
    if counts.notification_count is not None:
        room.changes["notification_count"] = counts.notification_count
    if counts.highlight_count is not None:
        room.changes["highlight_count"] = counts.highlight_count
    _apply_account_data(room, joined.account_data.events)
    _apply_ephemeral(room, joined.ephemeral.events)
    # Our own join arrives in the timeline or state; a room we are in is joined.
    room.changes["membership"] = "join"
    return room


def _plan_invited(room_id: str, invited: InvitedRoom, own_user_id: str) -> RoomSync:
    room = RoomSync(room_id)
    for sev in invited.invite_state.events:
        _apply_state(room, sev, own_user_id)
    room.changes["membership"] = "invite"
    return room


def _plan_left(
    room_id: str, left: LeftRoom, own_user_id: str, decrypt: Decrypt | None = None
) -> RoomSync:
    room = RoomSync(room_id)
    for ev in left.state.events:
        _apply_state(room, ev, own_user_id)
    _timeline(room, left.timeline.events, own_user_id, decrypt)
    room.limited = left.timeline.limited
    room.prev_batch = left.timeline.prev_batch
    _apply_account_data(room, left.account_data.events)
    room.changes["membership"] = "leave"
    return room


class RoomPlans:
    """The rooms of one response, decoded and planned one at a time as iterated.

    Iterating decodes each room's raw JSON, plans it and hands it over; the
    caller stores it and lets it go. A room that does not validate raises
    :class:`~skiffyd.errors.BadResponseError` naming the room and the path.
    ``typing`` and ``event_count`` fill in as rooms go by. Indexing or
    ``len`` work too (the whole list is then built once).
    """

    def __init__(self, rooms: Rooms, own_user_id: str, crypto: CryptoHook | None = None) -> None:
        self._rooms = rooms
        self._own = own_user_id
        self._crypto = crypto
        self._built: list[RoomSync] | None = None
        self.typing: list[tuple[str, list[str]]] = []
        self.event_count = 0

    def _decode(self, decoder: msgspec.json.Decoder[T], room_id: str, raw: msgspec.Raw) -> T:
        try:
            return decoder.decode(raw)
        except msgspec.ValidationError as exc:
            raise BadResponseError(
                f"the homeserver's sync answer is invalid in a room: {exc}"
            ) from exc
        except msgspec.DecodeError as exc:
            raise BadResponseError(
                "the homeserver's sync answer holds a room that is not JSON"
            ) from exc

    def _generate(self) -> Iterator[RoomSync]:
        own = self._own
        crypto = self._crypto
        decrypt = crypto.decrypt if crypto is not None else None
        for room_id, raw in self._rooms.join.items():
            room = _plan_joined(
                room_id, self._decode(joined_room_decoder, room_id, raw), own, decrypt
            )
            if crypto is not None and room.members:
                crypto.note_members(room_id, room.members)
            yield room
        for room_id, raw in self._rooms.invite.items():
            yield _plan_invited(room_id, self._decode(invited_room_decoder, room_id, raw), own)
        for room_id, raw in self._rooms.leave.items():
            yield _plan_left(room_id, self._decode(left_room_decoder, room_id, raw), own, decrypt)

    def __iter__(self) -> Iterator[RoomSync]:
        if self._built is not None:
            yield from self._built
            return
        self.typing = []
        self.event_count = 0
        for room in self._generate():
            self.event_count += len(room.items) + len(room.members)
            if room.typing is not None:
                self.typing.append((room.room_id, room.typing))
            yield room

    def _all(self) -> list[RoomSync]:
        if self._built is None:
            self._built = list(self)
        return self._built

    def __len__(self) -> int:
        r = self._rooms
        return len(r.join) + len(r.invite) + len(r.leave)

    @overload
    def __getitem__(self, index: int) -> RoomSync: ...
    @overload
    def __getitem__(self, index: slice) -> list[RoomSync]: ...
    def __getitem__(self, index: int | slice) -> RoomSync | list[RoomSync]:
        return self._all()[index]


class CryptoHook(Protocol):
    """What planning needs of the crypto machine (it runs where the plan is applied)."""

    def decrypt(self, room_id: str, ev: ClientEvent) -> ClientEvent | None: ...

    def note_members(self, room_id: str, changes: Iterable[MemberChange]) -> None: ...


def plan_sync(
    response: SyncResponse, own_user_id: str, crypto: CryptoHook | None = None
) -> SyncPlan:
    direct: dict[str, list[str]] | None = None
    for account_ev in response.account_data.events:
        if account_ev.type == "m.direct":
            direct = {
                user: [r for r in room_ids if isinstance(r, str)]
                for user, room_ids in account_ev.content.items()
                if isinstance(room_ids, list)
            }
    return SyncPlan(
        next_batch=response.next_batch,
        rooms=RoomPlans(response.rooms, own_user_id, crypto),
        direct=direct,
    )


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
    hero_names: dict[str, str] | None = None,
) -> str:
    """The spec's room name algorithm.

    Heroes are shown by their display name when the cache has their member
    event (lazy-loading sends it with the summary), else by localpart.
    """
    if name:
        return name
    if canonical_alias:
        return canonical_alias
    others = [h for h in (heroes or []) if h != own_user_id]
    if others:
        names = [(hero_names or {}).get(h) or _localpart(h) for h in others[:5]]
        remaining = max(0, joined_count + invited_count - 1 - len(names))
        if remaining > 0:
            return ", ".join(names) + f" and {remaining} others"
        return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " and " + names[-1]
    if joined_count + invited_count > 1:
        return f"{joined_count + invited_count - 1} others"
    return "Empty room"
