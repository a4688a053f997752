"""The outbox service: delivers queued messages, exactly once, FIFO per room.

The decisions (which item next, retry or give up) are in
:mod:`skiffyd.core.outbox`; this service only moves bytes and records
outcomes. Each PUT reuses the item's txnId, so a repeat after a crash or a
lost answer returns the original event id instead of a second event.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import structlog
import trio

from skiffyd.core.backoff import Backoff
from skiffyd.core.outbox import GiveUp, OutboxItem, heads, on_failure
from skiffyd.core.wire import send_decoder
from skiffyd.errors import MatrixError
from skiffyd.matrix.transport import Transport, decode

if TYPE_CHECKING:
    from ipc_schema import LoggedEvent
    from skiffyd.cache import Cache

log = structlog.get_logger(__name__)

Db = Callable[..., Awaitable[Any]]


class OutboxService:
    def __init__(
        self,
        *,
        transport: Transport,
        cache: Cache,
        db: Db,
        publish: Callable[[Sequence[LoggedEvent]], None],
    ) -> None:
        self._transport = transport
        self._cache = cache
        self._db = db
        self._publish = publish
        self._wake = trio.Event()

    def wake(self) -> None:
        self._wake.set()

    async def _sleep_until_woken(self, seconds: float = float("inf")) -> None:
        with trio.move_on_after(seconds):
            await self._wake.wait()
        self._wake = trio.Event()

    async def _send(self, item: OutboxItem) -> str:
        path = (
            f"/_matrix/client/v3/rooms/{quote(item.room_id, safe='')}/send/"
            f"m.room.message/{quote(item.txn_id, safe='')}"
        )
        data = await self._transport.request(
            "PUT", path, json={"msgtype": item.msgtype, "body": item.body}
        )
        return decode(send_decoder, data, "send").event_id

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = Backoff()
        rng = random.Random()
        while True:
            todo = heads(await self._db(self._cache.outbox_items))
            if not todo:
                await self._sleep_until_woken()
                continue
            retry_in: float | None = None
            for item in todo:
                try:
                    event_id = await self._send(item)
                except MatrixError as exc:
                    decision = on_failure(exc, backoff, rng.random())
                    if isinstance(decision, GiveUp):
                        log.warning("outbox.failed", txn_id=item.txn_id, reason=decision.reason)
                        self._publish(
                            await self._db(self._cache.mark_failed, item.txn_id, decision.reason)
                        )
                        continue
                    await self._db(self._cache.record_attempt, item.txn_id, exc.code)
                    log.info(
                        "outbox.retry",
                        txn_id=item.txn_id,
                        code=exc.code,
                        retry_in_s=round(decision.delay, 2),
                    )
                    retry_in = decision.delay
                    break
                backoff.reset()
                self._publish(await self._db(self._cache.mark_sent, item.txn_id, event_id))
                log.info("outbox.sent", txn_id=item.txn_id)
            if retry_in is not None:
                await self._sleep_until_woken(retry_in)
