"""Backfill: history from ``/messages`` into the cache, one gap at a time.

The cache records a gap wherever a sync left history out (a limited
timeline, a room's first sync) with the token to fetch it from. Backfill
takes the newest gap, asks ``/messages`` (``dir=b``) for a page, and the
cache stores the page under the gap in one transaction: the gap closes when
the page reaches history already cached or the room's first event, else it
moves down with the new token. Events already cached are never added twice.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from skiffyd.core.sync import MemberChange
from skiffyd.core.timeline import classify
from skiffyd.core.wire import MessagesResponse, messages_decoder
from skiffyd.matrix.transport import decode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ipc_schema import LoggedEvent
    from skiffyd.cache import Cache
    from skiffyd.core.timeline import Decrypt
    from skiffyd.matrix.transport import Transport

#: The most events asked for in one /messages page.
PAGE_LIMIT = 100
_FILTER = json.dumps({"lazy_load_members": True}, separators=(",", ":"))


@dataclass(slots=True)
class BackfillOutcome:
    added: int = 0
    fetched: int = 0
    reached_start: bool = False


async def fetch_page(
    transport: Transport, room_id: str, token: str, limit: int
) -> MessagesResponse:
    data = await transport.request(
        "GET",
        f"/_matrix/client/v3/rooms/{quote(room_id, safe='')}/messages",
        params={"dir": "b", "from": token, "limit": str(limit), "filter": _FILTER},
    )
    return decode(messages_decoder, data, "messages")


def _text(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _members(response: MessagesResponse) -> list[MemberChange]:
    out = []
    for ev in response.state:
        if ev.type == "m.room.member" and ev.state_key:
            c: dict[str, Any] = ev.content
            out.append(
                MemberChange(
                    user_id=ev.state_key,
                    membership=_text(c.get("membership")) or "leave",
                    display_name=_text(c.get("displayname")),
                    avatar_url=_text(c.get("avatar_url")),
                )
            )
    return out


async def backfill(
    *,
    transport: Transport,
    cache: Cache,
    db: Callable[..., Awaitable[Any]],
    publish: Callable[[Sequence[LoggedEvent]], None],
    room_id: str,
    limit: int,
    decrypt: Decrypt | None = None,
) -> BackfillOutcome:
    outcome = BackfillOutcome()
    while outcome.fetched < limit:
        gap = await db(cache.newest_gap, room_id)
        if gap is None:
            outcome.reached_start = True
            break
        page = await fetch_page(
            transport, room_id, gap.token, min(PAGE_LIMIT, limit - outcome.fetched)
        )
        # Classified (and decrypted) as the cache stores them, on its thread:
        # every call into the crypto machine runs there.
        items = (classify(room_id, ev, decrypt) for ev in page.chunk)
        events, added, closed = await db(
            cache.apply_backfill, gap, items, _members(page), page.end if page.chunk else None
        )
        publish(events)
        outcome.added += added
        outcome.fetched += len(page.chunk)
        if not page.chunk and not closed:
            break
    else:
        outcome.reached_start = await db(cache.newest_gap, room_id) is None
    return outcome
