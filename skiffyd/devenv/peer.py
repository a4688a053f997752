"""The other side of a conversation: a Matrix client nobody here wrote.

A thin blocking wrapper around matrix-nio's ``AsyncClient`` (asyncio and
aiohttp). Each :class:`Peer` owns an asyncio loop in a worker thread; every
method submits one coroutine to it and waits for the result, so the peer is
callable from plain code, from sync tests, and from trio via
``trio.to_thread.run_sync(peer.send_text, room_id, "hi")``.

Encryption is off: the peer speaks plain rooms, which is all the walking
skeleton needs. :meth:`Peer.messages` reads the whole room history with
``/messages`` (paginating back to the room's creation), so it sees every
event — what exactly-once checks need.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

import nio

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

    def __init__(self, *, timeout: float = 60.0) -> None:
        self.timeout = timeout
        self.user_id: str | None = None
        self._client: Any = None  # nio.AsyncClient, created on the loop
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nio-peer", daemon=True)
        self._thread.start()
        self._closed = False

    @classmethod
    def logged_in(cls, homeserver: str, user: str, password: str) -> Peer:
        peer = cls()
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

    # ------------------------------------------------------------------ verbs

    def login(self, homeserver: str, user: str, password: str) -> str:
        """Password login; returns the user id."""

        async def go() -> str:
            config = nio.AsyncClientConfig(encryption_enabled=False, store_sync_tokens=False)
            client = nio.AsyncClient(homeserver, user, store_path=None, config=config)
            resp = await client.login(password, device_name="skiffyd-test-peer")
            if not isinstance(resp, nio.LoginResponse):
                await client.close()
                raise PeerError(f"login failed: {_describe(resp)}")
            self._client = client
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
            resp = await self.client.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": body}
            )
            if not isinstance(resp, nio.RoomSendResponse):
                raise PeerError(f"send failed: {_describe(resp)}")
            return str(resp.event_id)

        return self._run(go())

    def send(self, room_id: str, event_type: str, content: dict[str, Any]) -> str:
        """Send any room event; returns its event id."""

        async def go() -> str:
            resp = await self.client.room_send(room_id, event_type, content)
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


def _describe(resp: object) -> str:
    status = getattr(resp, "status_code", None)
    message = getattr(resp, "message", None)
    return f"{type(resp).__name__} {status or ''} {message or ''}".strip()
