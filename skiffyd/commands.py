"""Command handlers for what a user does in a chat: messages, rooms, people, the outbox.

Every handler validates its input before anything is queued (id syntax,
empty bodies, the 65,536-byte event limit, whose message an edit targets),
so a bad command changes nothing and answers a stable error code.

Message-like writes (send, edit, redact, react, unreact, mark read) are
written to the outbox first and answered at once with their txn id: they
work offline and are delivered in order. Room management, profiles and the
user directory need the server's answer, so they wait on the network.
"""

from __future__ import annotations

import time
import uuid
from typing import TYPE_CHECKING, Any

import msgspec

import ipc_schema as wire
from skiffyd.core.identifiers import check_room_id, check_user_id
from skiffyd.core.markdown import message_content
from skiffyd.core.outbox import is_event_id
from skiffyd.errors import OutboxError, SkiffyError
from skiffyd.matrix import rooms as matrix_rooms

if TYPE_CHECKING:
    from skiffyd.daemon import AccountSession, Daemon

#: The spec's limit on a whole event (its JSON, with envelope).
MAX_EVENT_BYTES = 65_536
#: What the server adds around content (ids, sender, signatures, unsigned).
_ENVELOPE_BYTES = 1_024
_MSGTYPES = frozenset({"m.text", "m.notice", "m.emote"})


def new_txn_id() -> str:
    return f"skf{uuid.uuid4().hex}"


def _check_ref(value: str, field: str) -> str:
    """An event id ($…) or one of our txn ids (skf…)."""
    if not (is_event_id(value) or value.startswith("skf")) or len(value) > 255 or " " in value:
        raise SkiffyError(
            "not an event id ($…) or a pending txn id (skf…)",
            code=wire.ErrorCode.IPC_INVALID_ARGUMENT,
            details={"field": field},
        )
    return value


def _check_size(content: dict[str, Any]) -> None:
    size = len(msgspec.json.encode(content))
    if size + _ENVELOPE_BYTES > MAX_EVENT_BYTES:
        raise OutboxError(
            f"the message is too large ({size} bytes; an event is at most {MAX_EVENT_BYTES})",
            code=wire.ErrorCode.OUTBOX_TOO_LARGE,
            details={"bytes": size, "limit": MAX_EVENT_BYTES - _ENVELOPE_BYTES},
        )


def _check_body(body: str) -> None:
    if not body.strip():
        raise OutboxError("the message is empty", code=wire.ErrorCode.OUTBOX_EMPTY_BODY)


async def _check_room(d: Daemon, s: AccountSession, room_id: str) -> None:
    check_room_id(room_id)
    if not await d.db(s.cache.has_room, room_id):
        raise SkiffyError(
            "no such room in the cache (join it first)",
            code=wire.ErrorCode.CACHE_UNKNOWN_ROOM,
            details={"room_id": room_id},
        )


async def _check_target(d: Daemon, s: AccountSession, target: str, *, own: bool) -> None:
    sender = await d.db(s.cache.message_sender, target)
    if sender is None:
        if not is_event_id(target):
            raise OutboxError(
                "no pending message with that txn id",
                code=wire.ErrorCode.OUTBOX_UNKNOWN_TARGET,
                details={"target": target},
            )
        return  # an event the cache has not seen (older history): the server decides
    if own and sender != s.creds.user_id:
        raise OutboxError(
            "only your own messages can be edited", code=wire.ErrorCode.OUTBOX_NOT_YOURS
        )


async def _enqueue(
    d: Daemon,
    s: AccountSession,
    *,
    room_id: str,
    kind: str,
    event_type: str | None,
    content: dict[str, Any],
    target: str | None = None,
    echo: bool = False,
) -> wire.SendResult:
    txn_id = new_txn_id()
    events = await d.db(
        lambda: s.cache.enqueue(
            room_id=room_id,
            txn_id=txn_id,
            kind=kind,
            event_type=event_type,
            content=content,
            target=target,
            ts=int(time.time() * 1000),
            echo=echo,
        )
    )
    d.publish(events)
    if s.outbox is not None:
        s.outbox.wake()
    return wire.SendResult(txn_id=txn_id)


async def _take_back(d: Daemon, s: AccountSession, txn_id: str | None) -> bool:
    """Cancel an outbox item that was never sent; False if it is gone or in flight."""
    if txn_id is None or s.outbox is None or txn_id in s.outbox.in_flight:
        return False
    if await d.db(s.cache.outbox_item, txn_id) is None:
        return False
    d.publish(await d.db(s.cache.cancel, txn_id))
    return True


async def send(d: Daemon, req: wire.Send) -> wire.SendResult:
    s = d.require_session()
    await _check_room(d, s, req.room_id)
    _check_body(req.body)
    if req.msgtype not in _MSGTYPES:
        raise SkiffyError(
            "msgtype must be m.text, m.notice or m.emote",
            code=wire.ErrorCode.IPC_INVALID_ARGUMENT,
            details={"field": "msgtype"},
        )
    content = message_content(req.body, req.msgtype, markdown=req.markdown)
    if req.thread_root is not None:
        root = _check_ref(req.thread_root, "thread_root")
        relates: dict[str, Any] = {"rel_type": "m.thread", "event_id": root}
        if req.reply_to is not None:
            relates["m.in_reply_to"] = {"event_id": _check_ref(req.reply_to, "reply_to")}
            relates["is_falling_back"] = False
        else:
            relates["m.in_reply_to"] = {"event_id": root}
            relates["is_falling_back"] = True
        content["m.relates_to"] = relates
    elif req.reply_to is not None:
        content["m.relates_to"] = {
            "m.in_reply_to": {"event_id": _check_ref(req.reply_to, "reply_to")}
        }
    _check_size(content)
    return await _enqueue(
        d,
        s,
        room_id=req.room_id,
        kind="event",
        event_type="m.room.message",
        content=content,
        echo=True,
    )


async def edit(d: Daemon, req: wire.Edit) -> wire.SendResult:
    s = d.require_session()
    await _check_room(d, s, req.room_id)
    target = _check_ref(req.target, "target")
    _check_body(req.body)
    await _check_target(d, s, target, own=True)
    new_content = message_content(req.body, "m.text", markdown=req.markdown)
    content: dict[str, Any] = {
        "msgtype": "m.text",
        "body": f"* {req.body}",
        "m.new_content": new_content,
        "m.relates_to": {"rel_type": "m.replace", "event_id": target},
    }
    if "formatted_body" in new_content:
        content["format"] = new_content["format"]
        content["formatted_body"] = f"* {new_content['formatted_body']}"
    _check_size(content)
    return await _enqueue(
        d,
        s,
        room_id=req.room_id,
        kind="event",
        event_type="m.room.message",
        content=content,
        target=target,
    )


async def redact(d: Daemon, req: wire.Redact) -> wire.SendResult:
    s = d.require_session()
    await _check_room(d, s, req.room_id)
    target = _check_ref(req.target, "target")
    await _check_target(d, s, target, own=False)
    if not is_event_id(target) and await _take_back(d, s, target):
        # Never sent: deleting it is taking it back.
        return wire.SendResult(txn_id=target)
    content: dict[str, Any] = {"reason": req.reason} if req.reason else {}
    _check_size(content)
    return await _enqueue(
        d, s, room_id=req.room_id, kind="redaction", event_type=None, content=content, target=target
    )


async def react(d: Daemon, req: wire.React) -> wire.SendResult:
    s = d.require_session()
    await _check_room(d, s, req.room_id)
    target = _check_ref(req.target, "target")
    if not req.key or len(req.key.encode()) > 256:
        raise SkiffyError(
            "a reaction key is 1 to 256 bytes",
            code=wire.ErrorCode.IPC_INVALID_ARGUMENT,
            details={"field": "key"},
        )
    await _check_target(d, s, target, own=False)
    content = {"m.relates_to": {"rel_type": "m.annotation", "event_id": target, "key": req.key}}
    return await _enqueue(
        d,
        s,
        room_id=req.room_id,
        kind="event",
        event_type="m.reaction",
        content=content,
        target=target,
    )


async def unreact(d: Daemon, req: wire.Unreact) -> wire.SendResult:
    s = d.require_session()
    await _check_room(d, s, req.room_id)
    target = _check_ref(req.target, "target")
    queued = await d.db(s.cache.queued_reaction, req.room_id, target, req.key)
    if queued is not None and await _take_back(d, s, queued):
        # Never sent: take it back instead of sending it and a redaction.
        return wire.SendResult(txn_id=queued)
    reaction = await d.db(s.cache.own_reaction, target, req.key) if is_event_id(target) else None
    reaction = reaction or queued
    if reaction is None:
        raise OutboxError(
            "you have not reacted with that key",
            code=wire.ErrorCode.OUTBOX_UNKNOWN_TARGET,
            details={"target": target},
        )
    return await _enqueue(
        d, s, room_id=req.room_id, kind="redaction", event_type=None, content={}, target=reaction
    )


async def mark_read(d: Daemon, req: wire.MarkRead) -> wire.OkResult:
    s = d.require_session()
    await _check_room(d, s, req.room_id)
    event_id = req.event_id or await d.db(s.cache.latest_event_id, req.room_id)
    if event_id is None:
        return wire.OkResult()  # nothing to read
    if not is_event_id(event_id):
        raise SkiffyError(
            "not an event id",
            code=wire.ErrorCode.IPC_INVALID_ARGUMENT,
            details={"field": "event_id"},
        )
    await _enqueue(
        d, s, room_id=req.room_id, kind="receipt", event_type=None, content={}, target=event_id
    )
    return wire.OkResult()


async def set_typing(d: Daemon, req: wire.SetTyping) -> wire.OkResult:
    s = d.require_session()
    await _check_room(d, s, req.room_id)
    timeout = max(1_000, min(req.timeout_ms, 120_000))
    await matrix_rooms.typing(s.transport, req.room_id, s.creds.user_id, req.typing, timeout)
    return wire.OkResult()


async def create_room(d: Daemon, req: wire.CreateRoom) -> wire.JoinResult:
    s = d.require_session()
    for user in req.invite:
        check_user_id(user)
    if req.direct and len(req.invite) != 1:
        raise SkiffyError(
            "a direct chat invites exactly one user",
            code=wire.ErrorCode.IPC_INVALID_ARGUMENT,
            details={"field": "invite"},
        )
    room_id = await matrix_rooms.create_room(
        s.transport,
        name=req.name,
        topic=req.topic,
        public=req.public,
        encrypted=req.encrypted,
        invite=list(req.invite),
        direct=req.direct,
    )
    d.publish(await d.db(lambda: s.cache.note_joined(room_id, encrypted=req.encrypted)))
    if req.direct:
        await _add_direct(s, req.invite[0], room_id)
    return wire.JoinResult(room_id=room_id)


async def _add_direct(s: AccountSession, user_id: str, room_id: str) -> None:
    # Read-modify-write of the server's copy: another client may have added
    # DMs the cache has not seen yet.
    direct = await matrix_rooms.get_direct(s.transport, s.creds.user_id)
    rooms = [r for r in direct.get(user_id, []) if isinstance(r, str)]
    if room_id not in rooms:
        direct[user_id] = [*rooms, room_id]
        await matrix_rooms.put_direct(s.transport, s.creds.user_id, direct)


async def open_direct(d: Daemon, req: wire.OpenDirect) -> wire.JoinResult:
    s = d.require_session()
    user_id = check_user_id(req.user_id)
    if user_id == s.creds.user_id:
        raise SkiffyError(
            "a direct chat is with someone else", code=wire.ErrorCode.IPC_INVALID_ARGUMENT
        )
    direct = await d.db(s.cache.direct_map)
    for room_id in direct.get(user_id, []):
        if await d.db(s.cache.room_membership, room_id) in ("join", "invite"):
            if await d.db(s.cache.room_membership, room_id) == "invite":
                await d.join_room(s, room_id)
            return wire.JoinResult(room_id=room_id)
    created = await create_room(d, wire.CreateRoom(invite=[user_id], direct=True))
    return created


async def leave(d: Daemon, req: wire.Leave) -> wire.OkResult:
    s = d.require_session()
    check_room_id(req.room_id)
    await matrix_rooms.leave(s.transport, req.room_id)
    return wire.OkResult()


async def forget(d: Daemon, req: wire.Forget) -> wire.OkResult:
    s = d.require_session()
    check_room_id(req.room_id)
    if await d.db(s.cache.room_membership, req.room_id) in ("join", "invite"):
        await matrix_rooms.leave(s.transport, req.room_id)
    await matrix_rooms.forget(s.transport, req.room_id)
    d.publish(await d.db(s.cache.forget_room, req.room_id))
    return wire.OkResult()


async def membership(d: Daemon, req: wire.Invite | wire.Kick | wire.Ban) -> wire.OkResult:
    s = d.require_session()
    check_room_id(req.room_id)
    check_user_id(req.user_id)
    action = {wire.Invite: "invite", wire.Kick: "kick", wire.Ban: "ban"}[type(req)]
    reason = None if isinstance(req, wire.Invite) else req.reason
    await matrix_rooms.membership(s.transport, action, req.room_id, req.user_id, reason)
    return wire.OkResult()


async def get_profile(d: Daemon, req: wire.GetProfile) -> wire.ProfileResult:
    s = d.require_session()
    user_id = check_user_id(req.user_id) if req.user_id else s.creds.user_id
    profile = await matrix_rooms.get_profile(s.transport, user_id)
    return wire.ProfileResult(
        profile=wire.ProfileInfo(
            user_id=user_id, display_name=profile.displayname, avatar_url=profile.avatar_url
        )
    )


async def set_display_name(d: Daemon, req: wire.SetDisplayName) -> wire.OkResult:
    s = d.require_session()
    name = req.display_name.strip()
    if not name or len(name.encode()) > 256:
        raise SkiffyError(
            "a display name is 1 to 256 bytes",
            code=wire.ErrorCode.IPC_INVALID_ARGUMENT,
            details={"field": "display_name"},
        )
    await matrix_rooms.set_display_name(s.transport, s.creds.user_id, name)
    return wire.OkResult()


async def search_users(d: Daemon, req: wire.SearchUsers) -> wire.UsersResult:
    s = d.require_session()
    if not req.query.strip():
        raise SkiffyError(
            "the search is empty",
            code=wire.ErrorCode.IPC_INVALID_ARGUMENT,
            details={"field": "query"},
        )
    found = await matrix_rooms.search_users(s.transport, req.query, max(1, min(req.limit, 100)))
    return wire.UsersResult(
        results=[
            wire.ProfileInfo(
                user_id=u.user_id, display_name=u.display_name, avatar_url=u.avatar_url
            )
            for u in found.results
        ],
        limited=found.limited,
    )


async def outbox_list(d: Daemon, _req: wire.OutboxList) -> wire.OutboxResult:
    s = d.require_session()
    in_flight = frozenset(s.outbox.in_flight) if s.outbox is not None else frozenset()
    return wire.OutboxResult(items=await d.db(s.cache.outbox_infos, in_flight))


async def outbox_retry(d: Daemon, req: wire.OutboxRetry) -> wire.OkResult:
    s = d.require_session()
    d.publish(await d.db(s.cache.retry, req.txn_id))
    if s.outbox is not None:
        s.outbox.wake()
    return wire.OkResult()


async def outbox_cancel(d: Daemon, req: wire.OutboxCancel) -> wire.OkResult:
    s = d.require_session()
    if s.outbox is not None and req.txn_id in s.outbox.in_flight:
        raise OutboxError(
            "that item is being sent right now; it cannot be taken back",
            code=wire.ErrorCode.OUTBOX_IN_FLIGHT,
        )
    d.publish(await d.db(s.cache.cancel, req.txn_id))
    if s.outbox is not None:
        s.outbox.wake()
    return wire.OkResult()
