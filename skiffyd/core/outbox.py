"""The outbox's decisions: what to send next, and what a failure means.

Theory of operation
-------------------
An outbox item is written to the cache (with its local echo) before any
network I/O. Its ``txn_id`` is generated once, at that moment, and is the
Matrix transaction id of every attempt: the homeserver scopes txnIds to the
device and answers a repeated PUT with the original event id, so a retry
after a crash, an outage or a restart can never create a second event.

Per room the queue is FIFO with one item in flight: :func:`heads` picks, for
each room, its oldest item, and a room whose oldest item has failed
permanently is held (nothing behind it is sent out of order) until the user
retries or cancels it.

:func:`on_failure` classifies an error: transient (network, timeouts, bad
gateway answers, 5xx, 429) and 401 (a session matter, not the message's) →
retry after a backoff delay that honours ``retry_after_ms``; anything else (403, 413, unknown room, …) → permanent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from skiffyd.errors import MatrixError, RequestFailedError

if TYPE_CHECKING:
    from collections.abc import Iterable

    from skiffyd.core.backoff import Backoff

ItemState = Literal["queued", "failed"]


@dataclass(slots=True, frozen=True)
class OutboxItem:
    ord: int
    txn_id: str
    room_id: str
    msgtype: str
    body: str
    state: ItemState
    attempts: int = 0

    def __repr__(self) -> str:  # never show a message body
        return f"OutboxItem(ord={self.ord}, txn_id={self.txn_id!r}, state={self.state!r})"


@dataclass(slots=True, frozen=True)
class Retry:
    delay: float


@dataclass(slots=True, frozen=True)
class GiveUp:
    reason: str


def heads(items: Iterable[OutboxItem]) -> list[OutboxItem]:
    """The next item to send for each room, oldest room head first."""
    first: dict[str, OutboxItem] = {}
    for item in sorted(items, key=lambda i: i.ord):
        first.setdefault(item.room_id, item)
    return [i for i in first.values() if i.state == "queued"]


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
