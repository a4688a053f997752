"""The outbox service: delivers queued items, exactly once, FIFO per room.

The decisions (which item next, what request, retry or give up, the
breaker) are in :mod:`skiffyd.core.outbox`; this service only moves bytes and
records outcomes. Each PUT reuses the item's txnId, so a repeat after a crash
or a lost answer returns the original event id instead of a second event.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Any

import structlog
import trio

from skiffyd.core.backoff import Backoff
from skiffyd.core.outbox import (
    Breaker,
    GiveUp,
    OutboxItem,
    Unresolved,
    encrypted_request,
    heads,
    is_event_id,
    on_failure,
    request_for,
)
from skiffyd.core.wire import send_decoder
from skiffyd.errors import MatrixError, RequestFailedError
from skiffyd.matrix.transport import decode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Sequence

    from ipc_schema import Event
    from skiffyd.cache import Cache
    from skiffyd.matrix.crypto import CryptoService
    from skiffyd.matrix.transport import Transport

log = structlog.get_logger(__name__)


class _NoEncryption(Exception):
    """Plaintext is never sent into an encrypted room."""


def _references(item: OutboxItem) -> set[str]:
    """The txn ids ``item`` points at (they need event ids before it can go)."""
    refs = set()
    if item.target is not None and not is_event_id(item.target):
        refs.add(item.target)
    relates = item.content.get("m.relates_to")
    if isinstance(relates, dict):
        ref = relates.get("event_id")
        if isinstance(ref, str) and not is_event_id(ref):
            refs.add(ref)
        reply = relates.get("m.in_reply_to")
        reply_ref = reply.get("event_id") if isinstance(reply, dict) else None
        if isinstance(reply_ref, str) and not is_event_id(reply_ref):
            refs.add(reply_ref)
    return refs


class OutboxService:
    def __init__(
        self,
        *,
        transport: Transport,
        cache: Cache,
        db: Callable[..., Awaitable[Any]],
        publish: Callable[[Sequence[Event]], None],
        crypto: CryptoService | None = None,
    ) -> None:
        self.crypto = crypto
        self._transport = transport
        self._cache = cache
        self._db = db
        self._publish = publish
        self._wake = trio.Event()
        self._kick = trio.Event()
        self._waiting_for_network = False
        self.breaker = Breaker()
        #: The txn ids being sent right now (at most one per room).
        self.in_flight: set[str] = set()
        #: Shutting down: finish what is in flight, start nothing new.
        self.draining = False
        self._idle = trio.Event()
        self._idle.set()

    async def wait_idle(self) -> None:
        """Until nothing is in flight."""
        while self.in_flight:
            self._idle = trio.Event()
            await self._idle.wait()

    def wake(self) -> None:
        """New work: start now, unless waiting out a failure."""
        self._wake.set()

    def homeserver_reachable(self) -> None:
        """Sync got through: a wait for the network to come back may end early.

        A wait the server asked for (429 ``retry_after_ms``) is never cut short.
        """
        if self._waiting_for_network:
            self._kick.set()

    async def _sleep_until_woken(self, seconds: float = float("inf")) -> None:
        with trio.move_on_after(seconds):
            await self._wake.wait()
        self._wake = trio.Event()

    async def _deliver(self, item: OutboxItem) -> str | None:
        resolved = {
            ref: await self._db(self._cache.event_id_for_txn, ref) for ref in _references(item)
        }
        request = request_for(item, resolved.get)
        # Checked at send time: encryption may have been turned on after the
        # item was queued. Plaintext never goes into an encrypted room.
        if item.kind == "event" and await self._db(self._cache.room_is_encrypted, item.room_id):
            if self.crypto is None:
                raise _NoEncryption
            assert item.event_type is not None
            # A retry encrypts again: the same txnId still makes it one event.
            body = await self.crypto.encrypt(item.room_id, item.event_type, request.body)
            request = encrypted_request(item, body)
        data = await self._transport.request(request.method, request.path, json=request.body)
        if item.kind == "receipt":
            return None
        return decode(send_decoder, data, "send").event_id

    async def _attempt(
        self, item: OutboxItem, backoff: Backoff, rng: random.Random
    ) -> float | None:
        """Send one item and record the outcome; the delay before a retry, if any."""
        # Cancelled since the list was read? (A cancel refuses items in
        # flight, and its cache call was queued before this one.)
        if await self._db(self._cache.outbox_item, item.txn_id) is None:
            return None
        try:
            event_id = await self._deliver(item)
        except _NoEncryption:
            reason = "the room is end-to-end encrypted and the encryption store is not loaded"
            log.warning("outbox.failed", txn_id=item.txn_id, reason="room encrypted")
            self._publish(await self._db(self._cache.mark_failed, item.txn_id, reason))
            return None
        except Unresolved:
            reason = "what it points at was never sent"
            log.warning("outbox.failed", txn_id=item.txn_id, reason=reason)
            self._publish(await self._db(self._cache.mark_failed, item.txn_id, reason))
            return None
        except MatrixError as exc:
            decision = on_failure(exc, backoff, rng.random())
            if isinstance(decision, GiveUp):
                log.warning("outbox.failed", txn_id=item.txn_id, reason=decision.reason)
                self._publish(await self._db(self._cache.mark_failed, item.txn_id, decision.reason))
                return None
            self.breaker.record_failure(trio.current_time())
            await self._db(self._cache.record_attempt, item.txn_id, exc.code)
            log.info(
                "outbox.retry",
                txn_id=item.txn_id,
                code=exc.code,
                status=getattr(exc, "status", None),
                retry_in_s=round(decision.delay, 2),
            )
            self._waiting_for_network = not (
                isinstance(exc, RequestFailedError) and exc.retry_after_ms
            )
            return decision.delay
        backoff.reset()
        self.breaker.record_success()
        self._publish(await self._db(self._cache.mark_sent, item.txn_id, event_id))
        log.info("outbox.sent", txn_id=item.txn_id, kind=item.kind)
        return None

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        backoff = Backoff()
        rng = random.Random()
        while True:
            pause = self.breaker.wait(trio.current_time())
            if pause > 0:
                log.info("outbox.breaker_open", resume_in_s=round(pause, 1))
                await trio.sleep(pause)
            todo = heads(await self._db(self._cache.outbox_items))
            if not todo:
                await self._sleep_until_woken()
                continue
            retry_in: float | None = None
            for item in todo:
                if self.draining:
                    await trio.sleep_forever()  # cancelled by the shutdown
                self.in_flight.add(item.txn_id)
                try:
                    delay = await self._attempt(item, backoff, rng)
                finally:
                    # Only now: the outcome (sent, failed) is committed.
                    self.in_flight.discard(item.txn_id)
                    if not self.in_flight:
                        self._idle.set()
                if delay is not None:
                    retry_in = delay
                    break
            if retry_in is not None:
                self._kick = trio.Event()
                with trio.move_on_after(retry_in):
                    await self._kick.wait()
                self._waiting_for_network = False
