"""Timeline events: what each one is, and what a UI shows for it.

Theory of operation
-------------------
:func:`classify` turns one Matrix event into a :class:`TimelineItem`: the
facts the cache stores (ids, sender, type, original content, the relation it
carries, the event it redacts) plus ``visible``: whether it is a row of the
timeline. Messages and state changes are rows; edits (``m.replace``),
reactions (``m.annotation``) and redactions are not: they change the row
they point at.

What a row shows is *derived*, never accumulated: :func:`aggregate` takes the
row's original content, whether it is redacted, and every relation that
points at it, and returns the display. The cache stores the inputs (rows,
relations, redactions) as they arrive, in any order (sync, backfill, a
redaction before its target), and recomputes the display of each touched
row. So the result cannot depend on arrival order; a property test checks it.

Spec rules kept here:
* An edit is valid only from the original sender, for an event that is not
  itself an edit; the newest valid edit wins (``origin_server_ts``, then
  ``event_id``), and its ``m.new_content`` is what is shown.
* A reaction counts once per (sender, key); a redacted reaction or edit is
  undone.
* A redacted event's content is stripped by the redaction algorithm
  (room version 11 rules, which keep a superset of earlier versions' keys).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable

    from skiffyd.core.wire import ClientEvent

    #: Decrypts an m.room.encrypted event of a room; None without its key.
    Decrypt = Callable[[str, ClientEvent], ClientEvent | None]

#: State event types shown as timeline rows.
STATE_ROWS = frozenset(
    {
        "m.room.create",
        "m.room.member",
        "m.room.name",
        "m.room.topic",
        "m.room.avatar",
        "m.room.encryption",
        "m.room.tombstone",
        "m.room.join_rules",
        "m.room.history_visibility",
        "m.room.canonical_alias",
    }
)
#: Non-state event types shown as timeline rows.
MESSAGE_ROWS = frozenset({"m.room.message", "m.room.encrypted", "m.sticker"})

_REDACTION_KEEP: dict[str, frozenset[str]] = {
    "m.room.member": frozenset({"membership", "join_authorised_via_users_server"}),
    "m.room.join_rules": frozenset({"join_rule", "allow"}),
    "m.room.power_levels": frozenset(
        {
            "ban",
            "events",
            "events_default",
            "invite",
            "kick",
            "redact",
            "state_default",
            "users",
            "users_default",
        }
    ),
    "m.room.history_visibility": frozenset({"history_visibility"}),
    "m.room.redaction": frozenset({"redacts"}),
}


def redact_content(event_type: str, content: dict[str, Any]) -> dict[str, Any]:
    """The content left after a redaction (spec, room version 11)."""
    if event_type == "m.room.create":
        return dict(content)
    keep = _REDACTION_KEEP.get(event_type, frozenset())
    kept = {k: v for k, v in content.items() if k in keep}
    if event_type == "m.room.member":
        tpi = content.get("third_party_invite")
        if isinstance(tpi, dict) and "signed" in tpi:
            kept["third_party_invite"] = {"signed": tpi["signed"]}
    return kept


# Relation and TimelineItem are msgspec Structs rather than dataclasses:
# one of each is made per event of a sync, and a Struct is built about 4x
# faster (tens of thousands per initial sync). gc=False: they hold no cycles.


class Relation(msgspec.Struct, frozen=True, gc=False):
    """An event that changes another: an edit, a reaction or a thread reply."""

    event_id: str
    target: str
    rel_type: str  # m.replace | m.annotation | m.thread
    sender: str
    ts: int
    key: str | None = None  # the reaction key
    new_content: dict[str, Any] | None = None  # an edit's m.new_content


class TimelineItem(msgspec.Struct, gc=False):
    event_id: str
    room_id: str
    type: str
    sender: str
    ts: int
    content: dict[str, Any]
    state_key: str | None = None
    prev_content: dict[str, Any] | None = None
    txn_id: str | None = None
    visible: bool = False
    redacted: bool = False
    relation: Relation | None = None
    redacts: str | None = None
    reply_to: str | None = None
    thread_root: str | None = None
    #: Arrived end-to-end encrypted (``type`` and ``content`` are the plaintext's).
    encrypted: bool = False


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def classify(room_id: str, ev: ClientEvent, decrypt: Decrypt | None = None) -> TimelineItem | None:
    """What ``ev`` is to the timeline; ``None`` for events skiffyd does not keep.

    An ``m.room.encrypted`` event is first handed to ``decrypt``; what it
    returns is classified instead (marked ``encrypted``). One that cannot be
    decrypted (yet) is a row of its own, "unable to decrypt", whatever
    relation its cleartext names: the relation is believed only once the
    event is read (:meth:`skiffyd.cache.Cache.apply_decrypted`).
    """
    if ev.event_id is None:
        return None
    encrypted = ev.type == "m.room.encrypted"
    if encrypted and decrypt is not None:
        plain = decrypt(room_id, ev)
        if plain is not None:
            read = classify(room_id, plain)
            if read is not None:
                read.encrypted = True
            return read
    unsigned = ev.unsigned
    item = TimelineItem(
        event_id=ev.event_id,
        room_id=room_id,
        type=ev.type,
        sender=ev.sender,
        ts=ev.origin_server_ts,
        content=ev.content,
        state_key=ev.state_key,
        prev_content=unsigned.prev_content if unsigned else None,
        txn_id=unsigned.transaction_id if unsigned else None,
        redacted=bool(unsigned and unsigned.redacted_because is not None),
    )
    if encrypted:
        # Not readable (yet): a row of its own, whatever its cleartext relates to.
        item.visible = item.encrypted = True
        return item
    if ev.type == "m.room.redaction":
        item.redacts = _str(ev.redacts) or _str(ev.content.get("redacts"))
        return item if item.redacts else None
    if ev.state_key is not None:
        item.visible = ev.type in STATE_ROWS
        return item if item.visible else None

    relates = ev.content.get("m.relates_to")
    if isinstance(relates, dict):
        rel_type = _str(relates.get("rel_type"))
        target = _str(relates.get("event_id"))
        in_reply = relates.get("m.in_reply_to")
        if isinstance(in_reply, dict) and not (
            rel_type == "m.thread" and relates.get("is_falling_back") is True
        ):
            item.reply_to = _str(in_reply.get("event_id"))
        if rel_type and target:
            new_content = ev.content.get("m.new_content")
            item.relation = Relation(
                event_id=ev.event_id,
                target=target,
                rel_type=rel_type,
                sender=ev.sender,
                ts=ev.origin_server_ts,
                key=_str(relates.get("key")),
                new_content=new_content if isinstance(new_content, dict) else None,
            )
            if rel_type == "m.thread":
                item.thread_root = target
    if ev.type == "m.reaction":
        rel = item.relation
        return item if rel is not None and rel.rel_type == "m.annotation" and rel.key else None
    if ev.type in MESSAGE_ROWS:
        # An edit is not a row of its own: it changes the row it replaces.
        item.visible = item.relation is None or item.relation.rel_type != "m.replace"
        return item
    return None


@dataclass(slots=True)
class Display:
    """What a UI shows for a row, derived by :func:`aggregate`."""

    content: dict[str, Any]
    edited: bool = False
    redacted: bool = False
    reactions: dict[str, int] = field(default_factory=dict)
    my_reactions: list[str] = field(default_factory=list)
    thread_count: int = 0
    thread_latest: str | None = None


def _newer(a: Relation, b: Relation) -> bool:
    return (a.ts, a.event_id) > (b.ts, b.event_id)


def aggregate(
    *,
    event_type: str,
    sender: str,
    content: dict[str, Any],
    redacted: bool,
    relations: list[Relation],
    own_user_id: str,
    is_edit: bool = False,
) -> Display:
    """The display of one row from its original and its (unredacted) relations."""
    if redacted:
        return Display(content=redact_content(event_type, content), redacted=True)
    if not relations:
        return Display(content=content)  # most rows: nothing points at them
    latest_edit: Relation | None = None
    senders_by_key: dict[str, set[str]] = {}
    thread_latest: Relation | None = None
    thread_count = 0
    for rel in relations:
        if rel.rel_type == "m.replace":
            if is_edit or rel.sender != sender or rel.new_content is None:
                continue
            if latest_edit is None or _newer(rel, latest_edit):
                latest_edit = rel
        elif rel.rel_type == "m.annotation" and rel.key:
            senders_by_key.setdefault(rel.key, set()).add(rel.sender)
        elif rel.rel_type == "m.thread":
            thread_count += 1
            if thread_latest is None or _newer(rel, thread_latest):
                thread_latest = rel
    # Shown as it is unless edited (the cache stores no separate display then).
    shown = content
    if latest_edit is not None and latest_edit.new_content is not None:
        shown = dict(latest_edit.new_content)
        # The edit never changes what the original relates to (reply, thread).
        if "m.relates_to" in content:
            shown["m.relates_to"] = content["m.relates_to"]
    return Display(
        content=shown,
        edited=latest_edit is not None,
        reactions={k: len(v) for k, v in sorted(senders_by_key.items())},
        my_reactions=sorted(k for k, v in senders_by_key.items() if own_user_id in v),
        thread_count=thread_count,
        thread_latest=thread_latest.event_id if thread_latest else None,
    )


def _name(user_id: str, names: dict[str, str] | None) -> str:
    if names and user_id in names:
        return names[user_id]
    return user_id


def summarize(
    *,
    event_type: str,
    sender: str,
    state_key: str | None,
    content: dict[str, Any],
    prev_content: dict[str, Any] | None,
    redacted: bool,
    names: dict[str, str] | None = None,
) -> str:
    """One line for people: a message's body, or what a state change did."""
    who = _name(sender, names)
    if redacted:
        return "(deleted)" if event_type in MESSAGE_ROWS else f"{who} changed something (deleted)"
    if event_type in ("m.room.message", "m.sticker"):
        body = content.get("body")
        return body if isinstance(body, str) else ""
    if event_type == "m.room.encrypted":
        return "** unable to decrypt **"
    if event_type == "m.room.member":
        target = state_key or ""
        membership = content.get("membership")
        prev = (prev_content or {}).get("membership")
        target_name = _str(content.get("displayname")) or _name(target, names)
        reason = _str(content.get("reason"))
        tail = f": {reason}" if reason else ""
        if membership == "join":
            if prev == "join":
                old = _str((prev_content or {}).get("displayname"))
                new = _str(content.get("displayname"))
                if old != new:
                    if new and old:
                        return f"{old} changed their display name to {new}"
                    if new:
                        return f"{target} set their display name to {new}"
                    return f"{old or target} removed their display name"
                return f"{target_name} changed their avatar"
            return f"{target_name} joined"
        if membership == "invite":
            return f"{who} invited {target_name}"
        if membership == "leave":
            if target == sender:
                return (
                    f"{target_name} rejected the invite"
                    if prev == "invite"
                    else f"{target_name} left"
                )
            if prev == "ban":
                return f"{who} unbanned {target_name}"
            return f"{who} removed {target_name}{tail}"
        if membership == "ban":
            return f"{who} banned {target_name}{tail}"
        if membership == "knock":
            return f"{target_name} asked to join"
        return f"{target_name}: membership {membership}"
    if event_type == "m.room.name":
        name = _str(content.get("name"))
        return f"{who} changed the room name to {name}" if name else f"{who} removed the room name"
    if event_type == "m.room.topic":
        topic = _str(content.get("topic"))
        return f"{who} changed the topic to {topic}" if topic else f"{who} removed the topic"
    if event_type == "m.room.avatar":
        return f"{who} changed the room avatar"
    if event_type == "m.room.encryption":
        return f"{who} turned on end-to-end encryption"
    if event_type == "m.room.create":
        return f"{who} created the room"
    if event_type == "m.room.tombstone":
        return f"{who} upgraded this room"
    if event_type == "m.room.join_rules":
        return f"{who} set the join rule to {content.get('join_rule')}"
    if event_type == "m.room.history_visibility":
        return f"{who} set history visibility to {content.get('history_visibility')}"
    if event_type == "m.room.canonical_alias":
        alias = _str(content.get("alias"))
        return (
            f"{who} set the room address to {alias}" if alias else f"{who} removed the room address"
        )
    return f"{who} sent {event_type}"
