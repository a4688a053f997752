"""The other side of a conversation: a Matrix client nobody here wrote.

A thin blocking wrapper around matrix-nio's ``AsyncClient`` (asyncio and
aiohttp). Each :class:`Peer` owns an asyncio loop in a worker thread; every
method submits one coroutine to it and waits for the result, so the peer is
callable from plain code, from sync tests, and from trio via
``trio.to_thread.run_sync(peer.send_text, room_id, "hi")``.

Encryption is off unless asked for (``Peer.logged_in(..., encrypted=True)``):
then nio's own Olm machine, with a crypto store in a directory of the
caller's, shares and reads Megolm keys like any nio bot; every verb syncs
and does nio's key upkeep first, so it sees keys sent to it. :meth:`Peer.messages` reads the whole room history with
``/messages`` (paginating back to the room's creation), so it sees every
event — what exactly-once checks need. The other readers (:meth:`Peer.events`,
:meth:`Peer.state`, :meth:`Peer.read_receipts`, :meth:`Peer.typing_users`,
:meth:`Peer.account_data`, …) ask the server directly too, so a test checks
what any other client would see.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import threading
import time
import urllib.parse
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import nio
from nio.crypto.sas import Sas

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterable, Sequence

T = TypeVar("T")


class PeerError(RuntimeError):
    """The homeserver refused what the peer asked."""


class PeerMessage(NamedTuple):
    sender: str
    body: str
    event_id: str


class Peer:
    """A matrix-nio ``AsyncClient`` behind a blocking API."""

    def __init__(self, *, timeout: float = 60.0, store_dir: str | None = None) -> None:
        self.timeout = timeout
        #: Where nio keeps its crypto store; None: encryption off.
        self.store_dir = store_dir
        #: Room → (session id, session key at index 0) kept back from someone.
        self._withheld: dict[str, tuple[str, str]] = {}
        #: Verifications the other side canceled.
        self._canceled: set[str] = set()
        #: To-device events nio has no class for, as received.
        self.to_device_seen: list[dict[str, Any]] = []
        self.user_id: str | None = None
        self._client: Any = None  # nio.AsyncClient, created on the loop
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nio-peer", daemon=True)
        self._thread.start()
        self._closed = False

    @classmethod
    def logged_in(
        cls, homeserver: str, user: str, password: str, *, store_dir: str | None = None
    ) -> Peer:
        peer = cls(store_dir=store_dir)
        try:
            peer.login(homeserver, user, password)
        except BaseException:
            peer.close()
            raise
        return peer

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        if self._closed:
            coro.close()
            raise PeerError("the peer is closed")
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(self.timeout)

    @property
    def client(self) -> Any:
        if self._client is None:
            raise PeerError("the peer is not logged in")
        return self._client

    @property
    def encrypted(self) -> bool:
        return self.store_dir is not None

    async def _crypto_round(self) -> None:
        """One sync (to-device keys, room state), then nio's key upkeep."""
        c = self.client
        resp = await c.sync(timeout=0, full_state=c.next_batch is None)
        if not isinstance(resp, nio.SyncResponse):
            raise PeerError(f"sync failed: {_describe(resp)}")
        if c.should_upload_keys:
            await c.keys_upload()
        if c.should_query_keys:
            await c.keys_query()
        if c.should_claim_keys:
            await c.keys_claim(c.get_users_for_key_claiming())
            # Key requests that waited for the Olm session: nio collects them
            # only in a sync with a new token, so collect them now.
            c.olm.collect_key_requests()
        if c.outgoing_to_device_messages:
            await c.send_to_device_messages()  # verification steps nio queued

    def sync_keys(self) -> None:
        """Sync and do nio's key upkeep (encrypted peers)."""
        self._run(self._crypto_round())

    async def _send(self, room_id: str, event_type: str, content: dict[str, Any]) -> Any:
        if self.encrypted:
            await self._crypto_round()
        return await self.client.room_send(
            room_id, event_type, content, ignore_unverified_devices=True
        )

    def withhold_keys_from(self, user_id: str, room_id: str, device_id: str | None = None) -> None:
        """Share the room's next Megolm session with none of ``user_id``'s devices
        (or only not with ``device_id``, when given).

        The session is made now, so its key at index 0 can still be sent
        later (:meth:`send_withheld_key`): the way a key that was delayed
        reaches a client.
        """

        async def go() -> None:
            await self._crypto_round()
            c = self.client
            if c.should_query_keys:
                await c.keys_query()
            devices = []
            for d in c.device_store.active_user_devices(user_id):
                if device_id is None or d.id == device_id:
                    devices.append(d)
                else:
                    c.unblacklist_device(d)  # only the one device is held back
            if not devices:
                raise PeerError(f"the peer knows no such device of {user_id}")
            for device in devices:
                c.blacklist_device(device)
            c.olm.create_outbound_group_session(room_id)
            session = c.olm.outbound_group_sessions[room_id]
            self._withheld[room_id] = (session.id, session.session_key)

        self._run(go())

    def send_withheld_key(self, user_id: str, room_id: str) -> None:
        """Send ``user_id``'s devices the key withheld by :meth:`withhold_keys_from`."""

        async def go() -> None:
            c = self.client
            session_id, session_key = self._withheld.pop(room_id)
            session = c.olm.outbound_group_sessions.get(room_id)
            devices = list(c.device_store.active_user_devices(user_id))
            for device in devices:
                c.unblacklist_device(device)  # nio drops the room's session here
            if session is not None:
                c.olm.outbound_group_sessions[room_id] = session
            missing = c.olm.get_missing_sessions([user_id])
            if missing:
                await c.keys_claim(missing)
            content = {
                "algorithm": "m.megolm.v1.aes-sha2",
                "room_id": room_id,
                "session_id": session_id,
                "session_key": session_key,
            }
            for device in devices:
                olm_session = c.olm.session_store.get(device.curve25519)
                if olm_session is None:
                    raise PeerError(f"no Olm session with {device.id}")
                payload = c.olm._olm_encrypt(olm_session, device, "m.room_key", content)
                message = nio.ToDeviceMessage("m.room.encrypted", user_id, device.id, payload)
                resp = await c.to_device(message)
                if not isinstance(resp, nio.ToDeviceResponse):
                    raise PeerError(f"to-device failed: {_describe(resp)}")

        self._run(go())

    # ----------------------------------------------------------- verification

    def request_key(self, room_id: str, event_id: str) -> None:
        """Ask the account's own other devices for the key of an undecryptable event."""

        async def go() -> None:
            c = self.client
            await self._crypto_round()
            resp = await c.room_get_event(room_id, event_id)
            event = getattr(resp, "event", None)
            if not isinstance(event, nio.MegolmEvent):
                raise PeerError(f"{event_id} is not an undecryptable event here")
            # Not request_room_key: it refuses when nio already asked the
            # sender on its own (its "wedged session" rule); ask our devices.
            message = event.as_key_request(c.user_id, c.device_id)
            answer = await c.to_device(message)
            if not isinstance(answer, nio.ToDeviceResponse):
                raise PeerError(f"key request failed: {_describe(answer)}")

        self._run(go())

    def request_verification(self, user_id: str, device_id: str) -> str:
        """Begin as current clients do: ``m.key.verification.request`` (nio cannot)."""

        async def go() -> str:
            c = self.client
            txn = secrets.token_hex(12)
            content = {
                "from_device": c.device_id,
                "methods": ["m.sas.v1"],
                "timestamp": int(time.time() * 1000),
                "transaction_id": txn,
            }
            message = nio.ToDeviceMessage("m.key.verification.request", user_id, device_id, content)
            resp = await c.to_device(message)
            if not isinstance(resp, nio.ToDeviceResponse):
                raise PeerError(f"request failed: {_describe(resp)}")
            return txn

        return self._run(go())

    def start_requested(self, user_id: str, device_id: str, transaction_id: str) -> None:
        """After the other side's ``ready``: the SAS ``start`` under the request's id."""

        async def go() -> None:
            c = self.client
            device = c.device_store[user_id][device_id]
            sas = Sas(
                c.user_id,
                c.device_id,
                c.olm.account.identity_keys["ed25519"],
                device,
                transaction_id=transaction_id,
            )
            c.olm.key_verifications[transaction_id] = sas
            resp = await c.to_device(sas.start_verification())
            if not isinstance(resp, nio.ToDeviceResponse):
                raise PeerError(f"start failed: {_describe(resp)}")

        self._run(go())

    def learn_devices(self, user_id: str) -> None:
        """Fetch ``user_id``'s device keys (nio drops verification from unknown devices)."""

        async def go() -> None:
            self.client.olm.users_for_key_query.add(user_id)
            await self.client.keys_query()

        self._run(go())

    def start_verification(self, user_id: str, device_id: str) -> str:
        """Start an emoji verification with another device; its transaction id."""

        async def go() -> str:
            c = self.client
            await self._crypto_round()
            c.olm.users_for_key_query.add(user_id)
            await c.keys_query()
            device = c.device_store[user_id][device_id]
            resp = await c.start_key_verification(device)
            if not isinstance(resp, nio.ToDeviceResponse):
                raise PeerError(f"start failed: {_describe(resp)}")
            return str(resp.to_device_message.content["transaction_id"])

        return self._run(go())

    def verification(self, transaction_id: str) -> tuple[str, list[tuple[str, str]], bool]:
        """Sync, then (nio's state name, the emojis once known, whether verified)."""

        async def go() -> tuple[str, list[tuple[str, str]], bool]:
            await self._crypto_round()
            sas = self.client.key_verifications.get(transaction_id)
            if transaction_id in self._canceled:
                return ("canceled", [], False)
            if sas is None:
                return ("unknown", [], False)
            emojis: list[tuple[str, str]] = []
            if sas.established_sas is not None and not sas.canceled:
                emojis = list(sas.get_emoji())
            state = "canceled" if sas.canceled else sas.state.name
            return (state, emojis, bool(sas.verified))

        return self._run(go())

    def accept_verification(self, transaction_id: str) -> None:
        async def go() -> None:
            await self._crypto_round()
            resp = await self.client.accept_key_verification(transaction_id)
            if not isinstance(resp, nio.ToDeviceResponse):
                raise PeerError(f"accept failed: {_describe(resp)}")

        self._run(go())

    def confirm_verification(self, transaction_id: str) -> None:
        async def go() -> None:
            resp = await self.client.confirm_short_auth_string(transaction_id)
            if not isinstance(resp, nio.ToDeviceResponse):
                raise PeerError(f"confirm failed: {_describe(resp)}")

        self._run(go())

    def trusts(self, user_id: str, device_id: str) -> bool:
        """Whether nio marked that device verified."""
        device = self.client.device_store[user_id][device_id]
        return bool(self.client.olm.is_device_verified(device))

    # ------------------------------------------------------------------ verbs

    def login(self, homeserver: str, user: str, password: str) -> str:
        """Password login; returns the user id."""

        async def go() -> str:
            encrypted = self.store_dir is not None
            config = nio.AsyncClientConfig(encryption_enabled=encrypted, store_sync_tokens=False)
            client = nio.AsyncClient(
                homeserver, user, store_path=self.store_dir or "", config=config
            )
            resp = await client.login(password, device_name="skiffyd-test-peer")
            if not isinstance(resp, nio.LoginResponse):
                await client.close()
                raise PeerError(f"login failed: {_describe(resp)}")
            self._client = client
            if encrypted:
                if client.olm is None:
                    raise PeerError("the peer's encryption store did not load")

                def on_cancel(event: Any) -> None:
                    self._canceled.add(str(event.transaction_id))

                # nio forgets a verification the other side cancels: remember.
                client.add_to_device_callback(on_cancel, nio.KeyVerificationCancel)

                def on_unknown(event: Any) -> None:
                    self.to_device_seen.append(dict(event.source))

                # What nio does not speak (m.key.verification.ready, done).
                client.add_to_device_callback(on_unknown, nio.UnknownToDeviceEvent)
                await self._crypto_round()
            return str(resp.user_id)

        self.user_id = self._run(go())
        return self.user_id

    def create_room(self, name: str, topic: str | None = None, invite: Sequence[str] = ()) -> str:
        """A private room with ``name`` and ``topic``; returns its id."""

        async def go() -> str:
            resp = await self.client.room_create(name=name, topic=topic, invite=list(invite))
            if not isinstance(resp, nio.RoomCreateResponse):
                raise PeerError(f"room_create failed: {_describe(resp)}")
            return str(resp.room_id)

        return self._run(go())

    def invite(self, room_id: str, user_id: str) -> None:
        async def go() -> None:
            resp = await self.client.room_invite(room_id, user_id)
            if not isinstance(resp, nio.RoomInviteResponse):
                raise PeerError(f"invite failed: {_describe(resp)}")

        self._run(go())

    def join(self, room: str) -> str:
        """Join a room by id or alias; returns the room id."""

        async def go() -> str:
            resp = await self.client.join(room)
            if not isinstance(resp, nio.JoinResponse):
                raise PeerError(f"join failed: {_describe(resp)}")
            return str(resp.room_id)

        return self._run(go())

    def send_text(self, room_id: str, body: str) -> str:
        """Send an ``m.text`` message; returns its event id."""

        async def go() -> str:
            resp = await self._send(room_id, "m.room.message", {"msgtype": "m.text", "body": body})
            if not isinstance(resp, nio.RoomSendResponse):
                raise PeerError(f"send failed: {_describe(resp)}")
            return str(resp.event_id)

        return self._run(go())

    def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Send any room event; returns its event id."""

        async def go() -> str:
            resp = await self._send(room_id, event_type, content)
            if not isinstance(resp, nio.RoomSendResponse):
                raise PeerError(f"send failed: {_describe(resp)}")
            return str(resp.event_id)

        return self._run(go())

    def edit(self, room_id: str, event_id: str, body: str) -> str:
        return self.send(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": f"* {body}",
                "m.new_content": {"msgtype": "m.text", "body": body},
                "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
            },
        )

    def react(self, room_id: str, event_id: str, key: str) -> str:
        return self.send(
            room_id,
            "m.reaction",
            {"m.relates_to": {"rel_type": "m.annotation", "event_id": event_id, "key": key}},
        )

    def reply(self, room_id: str, event_id: str, body: str) -> str:
        return self.send(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": body,
                "m.relates_to": {"m.in_reply_to": {"event_id": event_id}},
            },
        )

    def thread_reply(self, room_id: str, root: str, body: str) -> str:
        return self.send(
            room_id,
            "m.room.message",
            {
                "msgtype": "m.text",
                "body": body,
                "m.relates_to": {
                    "rel_type": "m.thread",
                    "event_id": root,
                    "is_falling_back": True,
                    "m.in_reply_to": {"event_id": root},
                },
            },
        )

    def redact(self, room_id: str, event_id: str, reason: str | None = None) -> str:
        async def go() -> str:
            resp = await self.client.room_redact(room_id, event_id, reason=reason)
            if not isinstance(resp, nio.RoomRedactResponse):
                raise PeerError(f"redact failed: {_describe(resp)}")
            return str(resp.event_id)

        return self._run(go())

    def put_state(
        self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = ""
    ) -> str:
        async def go() -> str:
            resp = await self.client.room_put_state(
                room_id, event_type, content, state_key=state_key
            )
            if not isinstance(resp, nio.RoomPutStateResponse):
                raise PeerError(f"put_state failed: {_describe(resp)}")
            return str(resp.event_id)

        return self._run(go())

    def kick(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        async def go() -> None:
            resp = await self.client.room_kick(room_id, user_id, reason=reason)
            if not isinstance(resp, nio.RoomKickResponse):
                raise PeerError(f"kick failed: {_describe(resp)}")

        self._run(go())

    def typing(self, room_id: str, on: bool = True) -> None:
        async def go() -> None:
            resp = await self.client.room_typing(room_id, typing_state=on, timeout=30000)
            if not isinstance(resp, nio.RoomTypingResponse):
                raise PeerError(f"typing failed: {_describe(resp)}")

        self._run(go())

    def messages(self, room_id: str) -> list[PeerMessage]:
        """Every ``m.room.message`` in the room, oldest first, from ``/messages``."""

        async def go() -> list[PeerMessage]:
            if self.encrypted:
                await self._crypto_round()  # keys first: /messages is decrypted with them
            found: list[PeerMessage] = []
            start: str | None = None
            for _ in range(10_000):
                resp = await self.client.room_messages(room_id, start=start, limit=100)
                if not isinstance(resp, nio.RoomMessagesResponse):
                    raise PeerError(f"/messages failed: {_describe(resp)}")
                for event in resp.chunk:
                    source = getattr(event, "source", {})
                    if source.get("type") != "m.room.message":
                        continue
                    body = source.get("content", {}).get("body")
                    if isinstance(body, str):
                        found.append(PeerMessage(source["sender"], body, source["event_id"]))
                if not resp.chunk or not resp.end or resp.end == start:
                    break
                start = resp.end
            found.reverse()
            return found

        return self._run(go())

    def wait_for_bodies(
        self, room_id: str, bodies: Iterable[str], *, timeout: float = 30.0
    ) -> list[PeerMessage]:
        """Poll :meth:`messages` until every one of ``bodies`` is there; return them all."""
        wanted = set(bodies)
        deadline = time.monotonic() + timeout
        while True:
            seen = self.messages(room_id)
            missing = wanted - {m.body for m in seen}
            if not missing:
                return seen
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"the peer did not see {len(missing)} of {len(wanted)} messages "
                    f"within {timeout:g} s"
                )
            time.sleep(0.2)

    # ------------------------------------------------- reading the server

    def request(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> tuple[int, dict[str, Any]]:
        """A raw client-server API call as this user: (HTTP status, JSON body).

        ``path`` starts with ``/_matrix/``; ids in it must already be quoted
        (see :func:`q`). Never raises on an error status: the caller decides.
        """

        async def go() -> tuple[int, dict[str, Any]]:
            headers = {
                "Authorization": f"Bearer {self.client.access_token}",
                "Content-Type": "application/json",
            }
            data = json.dumps(body) if body is not None else None
            resp = await self.client.send(method, path, data=data, headers=headers)
            try:
                value = await resp.json(content_type=None)
            finally:
                resp.release()
            return int(resp.status), value if isinstance(value, dict) else {}

        return self._run(go())

    def request_ok(
        self, method: str, path: str, body: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """:meth:`request`, raising :class:`PeerError` unless the answer is 200."""
        status, value = self.request(method, path, body)
        if status != 200:
            raise PeerError(f"{method} {path.split('?')[0]}: {status} {value.get('errcode')}")
        return value

    def create_room_with(self, body: dict[str, Any]) -> str:
        """``POST /createRoom`` with any request body (preset, alias, …); its room id."""
        return str(self.request_ok("POST", "/_matrix/client/v3/createRoom", body)["room_id"])

    def events(self, room_id: str) -> list[dict[str, Any]]:
        """Every event of the room as the server serves it, oldest first (``/messages``).

        Raw JSON, never decrypted: in an encrypted room this is the ciphertext.
        """
        found: list[dict[str, Any]] = []
        start: str | None = None
        for _ in range(10_000):
            query = "dir=b&limit=100" + (f"&from={q(start)}" if start else "")
            page = self.request_ok("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/messages?{query}")
            chunk = page.get("chunk") or []
            found += [e for e in chunk if isinstance(e, dict) and "event_id" in e]
            end = page.get("end")
            if not chunk or not end or end == start:
                break
            start = end
        found.reverse()
        return found

    def event(self, room_id: str, event_id: str) -> dict[str, Any]:
        """One event (``GET /rooms/{id}/event/{event_id}``); a redacted one has no content."""
        return self.request_ok("GET", f"/_matrix/client/v3/rooms/{q(room_id)}/event/{q(event_id)}")

    def state(self, room_id: str, event_type: str, state_key: str = "") -> dict[str, Any] | None:
        """The content of a state event, or None if the room has none (404)."""
        status, value = self.request(
            "GET",
            f"/_matrix/client/v3/rooms/{q(room_id)}/state/{q(event_type)}/{q(state_key)}",
        )
        if status == 404:
            return None
        if status != 200:
            raise PeerError(f"state {event_type} in {room_id}: {status} {value.get('errcode')}")
        return value

    def membership(self, room_id: str, user_id: str) -> dict[str, Any] | None:
        """The ``m.room.member`` content of ``user_id`` in the room, as this peer sees it."""
        return self.state(room_id, "m.room.member", user_id)

    def sync_once(self, room_filter: dict[str, Any] | None = None) -> dict[str, Any]:
        """A fresh initial ``/sync`` (timeout 0) with ``room_filter`` as the filter's "room".

        Synapse answers a repeated identical /sync from a cache for two minutes
        (``sync_response_cache_duration``), which would hide a change (a receipt
        moved, typing stopped): a nonce in the filter (unknown filter fields are
        allowed) makes each request new.
        """
        sync_filter = {
            "room": room_filter or {},
            "presence": {"types": []},
            "account_data": {"types": []},
            "org.skiffyd.devenv.nonce": secrets.token_hex(8),
        }
        query = urllib.parse.urlencode({"timeout": "0", "filter": json.dumps(sync_filter)})
        return self.request_ok("GET", f"/_matrix/client/v3/sync?{query}")

    def _ephemeral(self, room_id: str, event_type: str) -> list[dict[str, Any]]:
        body = self.sync_once(
            {
                "rooms": [room_id],
                "timeline": {"limit": 1},
                "state": {"types": []},
                "ephemeral": {"types": [event_type]},
            }
        )
        room = body.get("rooms", {}).get("join", {}).get(room_id, {})
        events = room.get("ephemeral", {}).get("events", [])
        return [e for e in events if isinstance(e, dict) and e.get("type") == event_type]

    def read_receipts(self, room_id: str) -> dict[str, str]:
        """Each user's public read receipt (``m.read``) in the room: user id → event id."""
        receipts: dict[str, tuple[int, str]] = {}
        for event in self._ephemeral(room_id, "m.receipt"):
            for event_id, by_type in event.get("content", {}).items():
                for user_id, info in by_type.get("m.read", {}).items():
                    ts = int(info.get("ts", 0)) if isinstance(info, dict) else 0
                    if user_id not in receipts or ts >= receipts[user_id][0]:
                        receipts[user_id] = (ts, event_id)
        return {user: event_id for user, (_, event_id) in receipts.items()}

    def typing_users(self, room_id: str) -> list[str]:
        """Who the server says is typing in the room now."""
        users: list[str] = []
        for event in self._ephemeral(room_id, "m.typing"):
            users.extend(str(u) for u in event.get("content", {}).get("user_ids", []))
        return users

    def invites(self) -> dict[str, list[dict[str, Any]]]:
        """The rooms this peer is invited to: room id → the stripped invite state."""
        body = self.sync_once({"timeline": {"limit": 1}})
        invited = body.get("rooms", {}).get("invite", {})
        return {
            room_id: list(room.get("invite_state", {}).get("events", []))
            for room_id, room in invited.items()
        }

    def joined_rooms(self) -> list[str]:
        value = self.request_ok("GET", "/_matrix/client/v3/joined_rooms")
        return [str(r) for r in value.get("joined_rooms", [])]

    def account_data(self, event_type: str, room_id: str | None = None) -> dict[str, Any] | None:
        """This user's account data of ``event_type`` (per room if ``room_id``); None if unset."""
        user = q(self.user_id or "")
        path = (
            f"/_matrix/client/v3/user/{user}/rooms/{q(room_id)}/account_data/{q(event_type)}"
            if room_id is not None
            else f"/_matrix/client/v3/user/{user}/account_data/{q(event_type)}"
        )
        status, value = self.request("GET", path)
        if status == 404:
            return None
        if status != 200:
            raise PeerError(f"account data {event_type}: {status} {value.get('errcode')}")
        return value

    def profile(self, user_id: str) -> dict[str, Any]:
        """``GET /profile/{user_id}``: displayname and avatar_url (absent when unset)."""
        return self.request_ok("GET", f"/_matrix/client/v3/profile/{q(user_id)}")

    def ban(self, room_id: str, user_id: str, reason: str | None = None) -> None:
        async def go() -> None:
            resp = await self.client.room_ban(room_id, user_id, reason=reason)
            if not isinstance(resp, nio.RoomBanResponse):
                raise PeerError(f"ban failed: {_describe(resp)}")

        self._run(go())

    def set_power_levels(self, room_id: str, **changes: Any) -> None:
        """Change top-level keys of the room's ``m.room.power_levels`` (e.g. events_default)."""
        levels = self.state(room_id, "m.room.power_levels") or {}
        levels.update(changes)
        self.put_state(room_id, "m.room.power_levels", levels)

    def close(self) -> None:
        """Log nothing out (the server is throwaway); close the HTTP session and the loop."""
        if self._closed:
            return
        try:
            if self._client is not None:
                self._run(self._client.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            if not self._thread.is_alive():
                self._loop.close()

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def q(value: str) -> str:
    """Quote an id (room, event, user) for a URL path segment."""
    return urllib.parse.quote(value, safe="")


def _describe(resp: object) -> str:
    status = getattr(resp, "status_code", None)
    message = getattr(resp, "message", None)
    return f"{type(resp).__name__} {status or ''} {message or ''}".strip()
