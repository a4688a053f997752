"""Login and logout against the homeserver."""

from __future__ import annotations

from urllib.parse import quote

from skiffyd.core.wire import LoginResponse, join_decoder, login_decoder
from skiffyd.errors import LoginFailedError, RequestFailedError
from skiffyd.matrix.transport import Transport, decode

DEVICE_DISPLAY_NAME = "skiffyd"


async def password_login(transport: Transport, user: str, password: str) -> LoginResponse:
    body = {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": user},
        "password": password,
        "initial_device_display_name": DEVICE_DISPLAY_NAME,
    }
    try:
        data = await transport.request(
            "POST", "/_matrix/client/v3/login", json=body, authenticated=False
        )
    except RequestFailedError as exc:
        if exc.status in (400, 401, 403):
            raise LoginFailedError(
                f"the homeserver refused the login: {exc.errcode or exc.status}",
                details={"errcode": exc.errcode},
            ) from exc
        raise
    return decode(login_decoder, data, "login")


async def logout(transport: Transport) -> None:
    await transport.request("POST", "/_matrix/client/v3/logout", json={})


async def join(transport: Transport, room: str) -> str:
    data = await transport.request(
        "POST", f"/_matrix/client/v3/join/{quote(room, safe='')}", json={}
    )
    return decode(join_decoder, data, "join").room_id
