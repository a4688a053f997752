"""Direct homeserver calls for room management, profiles and the user directory.

These wait on the network (they need the server's answer: a new room's id,
a search result); message-like writes go through the outbox instead.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec

from skiffyd.matrix.transport import decode

if TYPE_CHECKING:
    from skiffyd.matrix.transport import Transport


def _q(value: str) -> str:
    return quote(value, safe="")


class _RoomId(msgspec.Struct):
    room_id: str


class Profile(msgspec.Struct, kw_only=True):
    displayname: str | None = None
    avatar_url: str | None = None


class DirectoryUser(msgspec.Struct, kw_only=True):
    user_id: str
    display_name: str | None = None
    avatar_url: str | None = None


class DirectoryResult(msgspec.Struct, kw_only=True):
    results: list[DirectoryUser] = msgspec.field(default_factory=list)
    limited: bool = False


_room_id = msgspec.json.Decoder(_RoomId)
_profile = msgspec.json.Decoder(Profile)
_directory = msgspec.json.Decoder(DirectoryResult)
_account_data = msgspec.json.Decoder(dict[str, Any])


async def create_room(
    t: Transport,
    *,
    name: str | None,
    topic: str | None,
    public: bool,
    encrypted: bool,
    invite: list[str],
    direct: bool,
) -> str:
    body: dict[str, Any] = {
        "preset": "public_chat"
        if public
        else ("trusted_private_chat" if direct else "private_chat"),
        "visibility": "public" if public else "private",
        "invite": invite,
        "is_direct": direct,
    }
    if name:
        body["name"] = name
    if topic:
        body["topic"] = topic
    if encrypted:
        body["initial_state"] = [
            {
                "type": "m.room.encryption",
                "state_key": "",
                "content": {"algorithm": "m.megolm.v1.aes-sha2"},
            }
        ]
    data = await t.request("POST", "/_matrix/client/v3/createRoom", json=body)
    return decode(_room_id, data, "createRoom").room_id


async def leave(t: Transport, room_id: str) -> None:
    await t.request("POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/leave", json={})


async def forget(t: Transport, room_id: str) -> None:
    await t.request("POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/forget", json={})


async def membership(
    t: Transport, action: str, room_id: str, user_id: str, reason: str | None
) -> None:
    body: dict[str, Any] = {"user_id": user_id}
    if reason:
        body["reason"] = reason
    await t.request("POST", f"/_matrix/client/v3/rooms/{_q(room_id)}/{action}", json=body)


async def typing(t: Transport, room_id: str, user_id: str, on: bool, timeout_ms: int) -> None:
    body: dict[str, Any] = {"typing": on}
    if on:
        body["timeout"] = timeout_ms
    await t.request(
        "PUT", f"/_matrix/client/v3/rooms/{_q(room_id)}/typing/{_q(user_id)}", json=body
    )


async def get_profile(t: Transport, user_id: str) -> Profile:
    data = await t.request("GET", f"/_matrix/client/v3/profile/{_q(user_id)}")
    return decode(_profile, data, "profile")


async def set_display_name(t: Transport, user_id: str, name: str) -> None:
    await t.request(
        "PUT", f"/_matrix/client/v3/profile/{_q(user_id)}/displayname", json={"displayname": name}
    )


async def search_users(t: Transport, query: str, limit: int) -> DirectoryResult:
    data = await t.request(
        "POST",
        "/_matrix/client/v3/user_directory/search",
        json={"search_term": query, "limit": limit},
    )
    return decode(_directory, data, "user directory")


async def get_direct(t: Transport, user_id: str) -> dict[str, Any]:
    """The account's ``m.direct``, fresh from the server (empty if unset)."""
    from skiffyd.errors import RequestFailedError

    try:
        data = await t.request(
            "GET", f"/_matrix/client/v3/user/{_q(user_id)}/account_data/m.direct"
        )
    except RequestFailedError as exc:
        if exc.status == 404:
            return {}
        raise
    return decode(_account_data, data, "account data")


async def put_direct(t: Transport, user_id: str, content: dict[str, Any]) -> None:
    await t.request(
        "PUT", f"/_matrix/client/v3/user/{_q(user_id)}/account_data/m.direct", json=content
    )
