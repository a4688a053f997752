"""The /sync loop: fetch, decode (msgspec), plan (pure), apply (one transaction), publish.

"Fetch" and "apply" are kept apart (:meth:`SyncService.fetch` returns a
decoded response; :func:`skiffyd.core.sync.plan_sync` and the cache do the
rest) so that a second protocol (sliding sync) can feed the same cache and
change log later.

Failures: transient ones (network, timeouts, 5xx, 429, garbage answers) put
the session ``offline`` and retry with backoff, resuming from the stored
token; a 401 ends the session (:class:`SessionExpiredError`).
"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

import structlog
import trio

from ipc_schema import Event, SessionState, Typing
from skiffyd.core.backoff import Backoff
from skiffyd.core.sync import SyncPlan, plan_sync
from skiffyd.core.wire import SyncResponse, sync_decoder
from skiffyd.errors import (
    BadResponseError,
    CacheError,
    MatrixError,
    RequestFailedError,
    SessionExpiredError,
)
from skiffyd.matrix.transport import Transport, decode

if TYPE_CHECKING:
    from skiffyd.cache import Cache
    from skiffyd.matrix.crypto import CryptoService, RoomKey

log = structlog.get_logger(__name__)

LONG_POLL_MS = 30_000
#: Read timeout margin over the long-poll timeout.
READ_MARGIN_S = 15.0
#: Initial sync: a bounded timeline per room, lazy-loaded members. History is
#: one backfill away.
SYNC_FILTER = json.dumps(
    {
        "room": {
            "timeline": {"limit": 50},
            "state": {"lazy_load_members": True},
        },
        "presence": {"not_types": ["*"]},
    },
    separators=(",", ":"),
)

Db = Callable[..., Awaitable[Any]]


class SyncService:
    def __init__(
        self,
        *,
        transport: Transport,
        cache: Cache,
        db: Db,
        publish: Callable[[Sequence[Event]], None],
        set_state: Callable[[SessionState, str | None], None],
        on_synced: Callable[[], None],
        own_user_id: str,
        crypto: CryptoService | None = None,
    ) -> None:
        self.crypto = crypto
        self._transport = transport
        self._cache = cache
        self._db = db
        self._publish = publish
        self._set_state = set_state
        self._on_synced = on_synced
        self._own_user_id = own_user_id
        self.full_syncs = 0
        self.syncs = 0

    async def fetch(self, since: str | None, *, wait: bool = True) -> SyncResponse:
        """One /sync. ``wait`` long-polls; without it the server answers at once."""
        params = {"filter": SYNC_FILTER, "timeout": str(LONG_POLL_MS if since and wait else 0)}
        if since:
            params["since"] = since
        data = await self._transport.request(
            "GET",
            "/_matrix/client/v3/sync",
            params=params,
            read_timeout=LONG_POLL_MS / 1000 + READ_MARGIN_S,
        )
        return decode(sync_decoder, data, "sync")

    async def apply(self, plan: SyncPlan) -> None:
        events = await self._db(self._cache.apply_sync, plan)
        self._publish(events)
        # Typing is ephemeral: published, never stored.
        typing = [
            Typing(seq=self._cache.last_seq, room_id=room_id, user_ids=user_ids)
            for room_id, user_ids in plan.typing()
        ]
        if typing:
            self._publish(typing)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        since: str | None = await self._db(self._cache.next_batch)
        task_status.started()
        backoff = Backoff()
        rng = random.Random()
        self._set_state("connecting" if since else "syncing", None)
        # The first sync after a start answers at once (timeout 0), so a quiet
        # account is "ready" in one round trip, not after a long-poll.
        caught_up = False
        while True:
            try:
                response = await self.fetch(since, wait=caught_up)
            except MatrixError as exc:
                if (
                    isinstance(exc, RequestFailedError)
                    and exc.status == 401
                    and exc.errcode == "M_UNKNOWN_TOKEN"
                ):
                    # The transport already tried a refresh: the session is over.
                    log.warning("sync.unauthorized", errcode=exc.errcode)
                    raise SessionExpiredError(
                        "the homeserver no longer accepts this session: log in again",
                        revoked=not exc.soft_logout,
                    ) from exc
                floor = (
                    exc.retry_after_ms / 1000
                    if isinstance(exc, RequestFailedError) and exc.retry_after_ms
                    else 0.0
                )
                delay = backoff.next_delay(rng.random(), at_least=floor)
                log.info("sync.failed", code=exc.code, retry_in_s=round(delay, 2))
                self._set_state("offline", exc.code)
                caught_up = False  # back online: report it in one round trip
                await trio.sleep(delay)
                continue
            keys: list[RoomKey] = []
            machine = self.crypto.crypto if self.crypto is not None else None
            if machine is not None:
                # Before the rooms: a key and the messages it opens may come
                # in the same response. Keys are stored as they come; if the
                # apply below fails, the same sync comes again, harmlessly.
                keys = await self._db(
                    machine.receive,
                    response.to_device.events,
                    response.device_lists.changed,
                    response.device_lists.left,
                    response.device_one_time_keys_count,
                )
            plan = plan_sync(response, self._own_user_id, machine)
            plan.initial = since is None and await self._db(self._cache.is_empty)
            next_batch = response.next_batch
            del response  # the plan keeps what it needs; a big sync is big
            try:
                await self.apply(plan)
                if keys and machine is not None:
                    # Messages that came before their key: read them now.
                    self._publish(await self._db(self._cache.apply_decrypted, machine, keys))
            except (BadResponseError, CacheError) as exc:
                # A room that does not validate (rooms are decoded as they are
                # stored), or a failed write: nothing was stored (one
                # transaction) and the token did not move. Retry later rather
                # than take the daemon down.
                delay = backoff.next_delay(rng.random())
                log.error("sync.apply_failed", code=exc.code, retry_in_s=round(delay, 2))
                self._set_state("offline", exc.code)
                caught_up = False
                await trio.sleep(delay)
                continue
            if since is None:
                self.full_syncs += 1
                log.info("sync.initial_done", rooms=len(plan.rooms), events=plan.event_count)
            since = next_batch
            caught_up = True
            self.syncs += 1
            backoff.reset()
            self._set_state("ready", None)
            self._on_synced()
            if self.crypto is not None:
                self.crypto.wake()
