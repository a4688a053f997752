"""The outbox's decisions: what to send next, how, and what a failure means.

Theory of operation
-------------------
An outbox item is written to the cache (with its local echo, for a message)
before any network I/O. Its ``txn_id`` is generated once, at that moment,
and is the Matrix transaction id of every attempt: the homeserver scopes
txnIds to the device and answers a repeated PUT with the original event id,
so a retry after a crash, an outage or a token refresh can never create a
second event. (A read-marker item has no txnId; it is idempotent anyway.)

Per room the queue is FIFO with one item in flight: :func:`heads` picks, for
each room, its oldest item. A room whose oldest item failed permanently is
held (nothing behind it is sent out of order) until the user retries or
cancels it. An item may point at an earlier item of the same room instead of
an event id (an edit, reaction or redaction of a message not yet sent): FIFO
means the earlier one is sent first, and :func:`request_for` puts its event
id into the request when the dependent's turn comes.

:func:`on_failure` classifies an error: transient (network, timeouts, bad
gateway answers, 5xx, 429) and 401 (a session matter, not the message's) →
retry after a backoff delay that honours ``retry_after_ms``; anything else
(403, 413, unknown room, …) → permanent. :class:`Breaker` stops all sending
for a while after consecutive failures against the homeserver.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote

from skiffyd.errors import MatrixError, RequestFailedError

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable

    from skiffyd.core.backoff import Backoff

ItemState = Literal["queued", "failed"]
Kind = Literal["event", "redaction", "receipt"]


@dataclass(slots=True, frozen=True)
class OutboxItem:
    seq: int
    txn_id: str
    room_id: str
    kind: Kind
    event_type: str | None
    content: dict[str, Any]
    state: ItemState
    #: An event id ($…), or the txn id of an earlier item of the same room.
    target: str | None = None
    attempts: int = 0
    last_error: str | None = None

    def __repr__(self) -> str:  # never show a message body
        return f"OutboxItem(seq={self.seq}, txn_id={self.txn_id!r}, kind={self.kind!r}, state={self.state!r})"


@dataclass(slots=True, frozen=True)
class Retry:
    delay: float


@dataclass(slots=True, frozen=True)
class GiveUp:
    reason: str


@dataclass(slots=True, frozen=True)
class HttpRequest:
    method: str
    path: str
    body: dict[str, Any] = field(default_factory=dict)


class Unresolved(Exception):
    """The item's target is an earlier item that has no event id yet."""


def is_event_id(value: str) -> bool:
    return value.startswith("$")


def heads(items: Iterable[OutboxItem]) -> list[OutboxItem]:
    """The next item to send for each room, in global FIFO order."""
    first: dict[str, OutboxItem] = {}
    for item in sorted(items, key=lambda i: i.seq):
        first.setdefault(item.room_id, item)
    return [i for i in first.values() if i.state == "queued"]


#: Why an item carried over from an ended session waits for the user.
CARRIED_MAYBE_SENT = (
    "carried over from a session that ended: it may have reached the server before; "
    "retry to send it (again) or cancel it"
)


def carry_over(
    items: Iterable[OutboxItem], resolve: Callable[[str], str | None]
) -> list[OutboxItem]:
    """What the next session of the account takes over from an ended session's outbox.

    The next session is a new device, and the homeserver scopes txnIds to a
    device: repeating an item the old device may have delivered would make a
    second event. Per room only the oldest item was ever in flight (FIFO, one
    at a time), so only that one is in doubt: a queued event or redaction
    there goes over ``failed`` (:data:`CARRIED_MAYBE_SENT`), for the user to
    retry or cancel. Everything behind it was never sent and goes over as it
    was, held behind it in order. Read receipts stay behind: the new
    session's first sync brings the server's read markers, and an old
    receipt applied on top would move them back.

    References to txn ids of items the old session delivered become their
    event ids (``resolve``: the old cache's answer; the new cache has never
    heard of those txn ids). A reference to an item that is itself carried
    stays, and is resolved when that item has been sent.
    """
    out: list[OutboxItem] = []
    rooms: set[str] = set()
    for item in sorted(items, key=lambda i: i.seq):
        oldest = item.room_id not in rooms
        rooms.add(item.room_id)
        if item.kind == "receipt":
            continue  # (after it has counted as its room's oldest)
        target = item.target
        if target is not None and not is_event_id(target):
            target = resolve(target) or target
        state, error = item.state, item.last_error
        if oldest and state == "queued":
            state, error = "failed", CARRIED_MAYBE_SENT
        out.append(
            dataclasses.replace(
                item,
                content=fill_references(item.content, lambda ref: resolve(ref) or ref),
                target=target,
                state=state,
                last_error=error,
                attempts=0,
            )
        )
    return out


def fill_references(content: dict[str, Any], resolve: Callable[[str], str]) -> dict[str, Any]:
    """``content`` with txn-id references in its relation replaced by event ids."""
    relates = content.get("m.relates_to")
    if not isinstance(relates, dict):
        return content
    out = copy.deepcopy(content)
    rel = out["m.relates_to"]
    if isinstance(rel.get("event_id"), str) and not is_event_id(rel["event_id"]):
        rel["event_id"] = resolve(rel["event_id"])
    reply = rel.get("m.in_reply_to")
    reply_ref = reply.get("event_id") if isinstance(reply, dict) else None
    if isinstance(reply_ref, str) and not is_event_id(reply_ref):
        reply["event_id"] = resolve(reply_ref)
    return out


def request_for(item: OutboxItem, resolve: Callable[[str], str | None]) -> HttpRequest:
    """The HTTP request that delivers ``item``; :class:`Unresolved` if it must wait."""

    def must(ref: str) -> str:
        if is_event_id(ref):
            return ref
        event_id = resolve(ref)
        if event_id is None:
            raise Unresolved(ref)
        return event_id

    room = quote(item.room_id, safe="")
    txn = quote(item.txn_id, safe="")
    if item.kind == "event":
        assert item.event_type is not None
        return HttpRequest(
            "PUT",
            f"/_matrix/client/v3/rooms/{room}/send/{quote(item.event_type, safe='')}/{txn}",
            fill_references(item.content, must),
        )
    if item.kind == "redaction":
        assert item.target is not None
        target = quote(must(item.target), safe="")
        return HttpRequest(
            "PUT", f"/_matrix/client/v3/rooms/{room}/redact/{target}/{txn}", dict(item.content)
        )
    assert item.target is not None
    event_id = must(item.target)
    return HttpRequest(
        "POST",
        f"/_matrix/client/v3/rooms/{room}/read_markers",
        {"m.fully_read": event_id, "m.read": event_id},
    )


def encrypted_request(item: OutboxItem, body: dict[str, Any]) -> HttpRequest:
    """The request that sends ``item`` as ``m.room.encrypted`` with its txnId."""
    room = quote(item.room_id, safe="")
    txn = quote(item.txn_id, safe="")
    return HttpRequest("PUT", f"/_matrix/client/v3/rooms/{room}/send/m.room.encrypted/{txn}", body)


def on_failure(error: MatrixError, backoff: Backoff, unit_random: float) -> Retry | GiveUp:
    # 401 is about the session, not the message: the sync loop ends or renews
    # the session; the item waits for it.
    if error.transient or (isinstance(error, RequestFailedError) and error.status == 401):
        floor = 0.0
        if isinstance(error, RequestFailedError) and error.retry_after_ms:
            floor = error.retry_after_ms / 1000
        return Retry(backoff.next_delay(unit_random, at_least=floor))
    if isinstance(error, RequestFailedError):
        return GiveUp(f"{error.status} {error.errcode or 'error'}")
    return GiveUp(error.code)


@dataclass(slots=True)
class Breaker:
    """Opens after ``threshold`` consecutive failures, for ``cooldown`` seconds.

    The caller passes the clock (``now``), so this is plain arithmetic.
    """

    threshold: int = 5
    cooldown: float = 30.0
    consecutive: int = 0
    open_until: float | None = None

    def record_failure(self, now: float) -> None:
        self.consecutive += 1
        if self.consecutive >= self.threshold:
            self.open_until = now + self.cooldown

    def record_success(self) -> None:
        self.consecutive = 0
        self.open_until = None

    def wait(self, now: float) -> float:
        """Seconds until sending may resume (0 when closed)."""
        if self.open_until is None or now >= self.open_until:
            return 0.0
        return self.open_until - now
