"""Login, logout and the session's tokens."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import msgspec
import structlog
import trio

from skiffyd.core.wire import LoginResponse, join_decoder, login_decoder
from skiffyd.errors import LoginFailedError, RequestFailedError, SessionExpiredError
from skiffyd.matrix.transport import decode

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from skiffyd.credentials import Credentials
    from skiffyd.matrix.transport import Transport

log = structlog.get_logger(__name__)

DEVICE_DISPLAY_NAME = "skiffyd"


async def _login(transport: Transport, credentials: dict[str, Any], what: str) -> LoginResponse:
    body = {
        **credentials,
        "initial_device_display_name": DEVICE_DISPLAY_NAME,
        # Long-lived sessions renew short-lived access tokens (see TokenManager).
        "refresh_token": True,
    }
    try:
        data = await transport.request(
            "POST", "/_matrix/client/v3/login", json=body, authenticated=False
        )
    except RequestFailedError as exc:
        if exc.status in (400, 401, 403):
            raise LoginFailedError(
                f"the homeserver refused the {what}: {exc.errcode or exc.status}",
                details={"errcode": exc.errcode},
            ) from exc
        raise
    return decode(login_decoder, data, "login")


async def password_login(transport: Transport, user: str, password: str) -> LoginResponse:
    return await _login(
        transport,
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user},
            "password": password,
        },
        "login",
    )


class _Versions(msgspec.Struct, kw_only=True):
    versions: list[str] = msgspec.field(default_factory=list)


_versions_decoder = msgspec.json.Decoder(_Versions)


async def versions(transport: Transport) -> list[str]:
    data = await transport.request("GET", "/_matrix/client/versions", authenticated=False)
    return decode(_versions_decoder, data, "versions").versions


class _Flow(msgspec.Struct, kw_only=True):
    type: str


class _Flows(msgspec.Struct, kw_only=True):
    flows: list[_Flow] = msgspec.field(default_factory=list)


_flows_decoder = msgspec.json.Decoder(_Flows)


async def login_flows(transport: Transport) -> set[str]:
    data = await transport.request("GET", "/_matrix/client/v3/login", authenticated=False)
    return {f.type for f in decode(_flows_decoder, data, "login flows").flows}


async def token_login(transport: Transport, token: str) -> LoginResponse:
    """``m.login.token``: the last step of single sign-on."""
    return await _login(transport, {"type": "m.login.token", "token": token}, "login token")


async def logout(transport: Transport) -> None:
    await transport.request("POST", "/_matrix/client/v3/logout", json={})


async def join(transport: Transport, room: str) -> str:
    data = await transport.request(
        "POST", f"/_matrix/client/v3/join/{quote(room, safe='')}", json={}
    )
    return decode(join_decoder, data, "join").room_id


class _RefreshResponse(msgspec.Struct, kw_only=True):
    access_token: str
    refresh_token: str | None = None
    expires_in_ms: int | None = None

    def __repr__(self) -> str:
        return "_RefreshResponse(<tokens redacted>)"


_refresh_decoder = msgspec.json.Decoder(_RefreshResponse)


class TokenManager:
    """The session's tokens: refreshed ahead of expiry and after a soft 401, single flight.

    Theory of operation
    -------------------
    Login asks for a refresh token. Before each request the transport calls
    :meth:`ensure_fresh`: when less than a third of the token's lifetime is
    left, it refreshes. A 401 calls :meth:`recover`: ``soft_logout: true``
    means "expired" and is healed by a refresh; ``soft_logout: false`` means
    the session was revoked (logged out elsewhere) and cannot be.

    Only one refresh runs at a time: requests that fail together all wait for
    the same lock, and those that find the token already changed since their
    failure just retry with the new one. Synapse rotates the refresh token
    and invalidates the old one as soon as the new access token is used, so
    the new pair is written to the keyring *before* it is used: a crash in
    between leaves the keyring with a pair that still works.
    """

    def __init__(
        self,
        creds: Credentials,
        *,
        transport: Transport,
        save: Callable[[Credentials], Awaitable[None]],
        on_expired: Callable[[SessionExpiredError], None],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.creds = creds
        self._transport = transport
        self._save = save
        self._on_expired = on_expired
        self._clock = clock
        self._lock = trio.Lock()
        self._lifetime_ms: int | None = None
        self.refreshes = 0

    @property
    def access_token(self) -> str:
        return self.creds.access_token

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def ensure_fresh(self) -> None:
        expires = self.creds.expires_at_ms
        if expires is None or self.creds.refresh_token is None:
            return
        lifetime = self._lifetime_ms or 60_000
        if self._now_ms() >= expires - lifetime // 3:
            await self.refresh(self.creds.access_token)

    async def recover(self, stale_token: str, error: RequestFailedError) -> bool:
        if error.errcode != "M_UNKNOWN_TOKEN":
            return False  # not about the token (interactive auth, a proxy): not ours to heal
        if not error.soft_logout:
            expired = SessionExpiredError(
                "the session was revoked (logged out elsewhere): log in again", revoked=True
            )
            self._on_expired(expired)
            return False
        if self.creds.refresh_token is None:
            self._on_expired(
                SessionExpiredError("the session expired: log in again", revoked=False)
            )
            return False
        await self.refresh(stale_token)
        return True

    async def refresh(self, stale_token: str) -> None:
        async with self._lock:
            if self.creds.access_token != stale_token:
                return  # another request refreshed while this one waited
            refresh_token = self.creds.refresh_token
            if refresh_token is None:
                return
            try:
                data = await self._transport.request(
                    "POST",
                    "/_matrix/client/v3/refresh",
                    json={"refresh_token": refresh_token},
                    authenticated=False,
                )
            except RequestFailedError as exc:
                if exc.status in (400, 401, 403):
                    expired = SessionExpiredError(
                        "the session expired and could not be renewed: log in again",
                        revoked=not exc.soft_logout and exc.status == 401,
                    )
                    log.warning("session.refresh_refused", errcode=exc.errcode, status=exc.status)
                    self._on_expired(expired)
                    raise expired from exc
                raise
            answer = decode(_refresh_decoder, data, "refresh")
            new = msgspec.structs.replace(
                self.creds,
                access_token=answer.access_token,
                refresh_token=answer.refresh_token or refresh_token,
                expires_at_ms=(
                    self._now_ms() + answer.expires_in_ms if answer.expires_in_ms else None
                ),
            )
            # The keyring first: once the new token is used, the old refresh
            # token is dead.
            await self._save(new)
            self.creds = new
            self._lifetime_ms = answer.expires_in_ms
            self.refreshes += 1
            log.info("session.refreshed", expires_in_ms=answer.expires_in_ms)
