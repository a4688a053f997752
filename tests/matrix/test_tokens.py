"""Token refresh: single flight, keyring before use, revocation (MockTransport, no sockets)."""

from __future__ import annotations

import json

import httpx
import pytest
import trio

from skiffyd.credentials import Credentials
from skiffyd.errors import RequestFailedError, SessionExpiredError
from skiffyd.matrix.session import TokenManager
from skiffyd.matrix.transport import Transport


def creds(
    access: str = "a0", refresh: str | None = "r0", expires: int | None = None
) -> Credentials:
    return Credentials(
        homeserver="http://127.0.0.1:1",
        user_id="@u:x",
        device_id="D",
        access_token=access,
        refresh_token=refresh,
        expires_at_ms=expires,
        cache_key="0" * 64,
        pickle_key="p",
    )


class FakeServer:
    """Accepts only the current access token; rotates on /refresh like Synapse."""

    def __init__(self, *, soft_logout: bool = True) -> None:
        self.access, self.refresh_token, self.n = "a0", "r0", 0
        self.refresh_calls = 0
        self.soft_logout = soft_logout
        self.log: list[str] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/refresh"):
            self.refresh_calls += 1
            if json.loads(request.content)["refresh_token"] != self.refresh_token:
                return httpx.Response(
                    401, json={"errcode": "M_UNKNOWN_TOKEN", "soft_logout": False}
                )
            self.n += 1
            self.access, self.refresh_token = f"a{self.n}", f"r{self.n}"
            self.log.append("refreshed")
            return httpx.Response(
                200,
                json={
                    "access_token": self.access,
                    "refresh_token": self.refresh_token,
                    "expires_in_ms": 3000,
                },
            )
        token = request.headers.get("Authorization", "").removeprefix("Bearer ")
        if token != self.access:
            return httpx.Response(
                401, json={"errcode": "M_UNKNOWN_TOKEN", "soft_logout": self.soft_logout}
            )
        self.log.append(f"used {token}")
        return httpx.Response(200, json={})


def setup(server: FakeServer, c: Credentials, clock: list[float] | None = None):  # type: ignore[no-untyped-def]
    saved: list[Credentials] = []
    expired: list[SessionExpiredError] = []
    transport = Transport("http://127.0.0.1:1", transport=httpx.MockTransport(server))

    async def save(new: Credentials) -> None:
        server.log.append(f"saved {new.access_token}")
        saved.append(new)

    tm = TokenManager(
        c,
        transport=transport,
        save=save,
        on_expired=expired.append,
        clock=(lambda: clock[0]) if clock else __import__("time").time,
    )
    transport.auth = tm
    return transport, tm, saved, expired


async def test_concurrent_401s_refresh_once_and_all_succeed() -> None:
    server = FakeServer()
    server.access = "a-new-on-server"  # the daemon's token expired
    server.refresh_token = "r0"
    transport, tm, saved, expired = setup(server, creds())
    async with trio.open_nursery() as nursery:
        for _ in range(20):
            nursery.start_soon(transport.request, "GET", "/_matrix/client/v3/account/whoami")
    await transport.aclose()
    assert server.refresh_calls == 1
    assert tm.refreshes == 1
    assert [c.access_token for c in saved] == ["a1"]
    assert expired == []
    # The new pair reached the keyring before the new token was used.
    assert server.log.index("saved a1") < server.log.index("used a1")


async def test_refresh_ahead_of_expiry() -> None:
    server = FakeServer()
    clock = [1000.0]
    transport, _tm, _saved, _ = setup(server, creds(expires=1_000_000 + 500), clock)
    await transport.request("GET", "/x")
    await transport.aclose()
    assert server.refresh_calls == 1  # 0.5 s left: refreshed before the request
    assert server.log[-1] == "used a1"


async def test_revoked_token_is_not_refreshed() -> None:
    server = FakeServer(soft_logout=False)
    server.access = "other"
    transport, _tm, _saved, expired = setup(server, creds())
    with pytest.raises(RequestFailedError):
        await transport.request("GET", "/x")
    await transport.aclose()
    assert server.refresh_calls == 0
    assert [e.revoked for e in expired] == [True]


async def test_refused_refresh_expires_the_session() -> None:
    server = FakeServer()
    server.access, server.refresh_token = "other", "r-other"  # ours are both stale
    transport, _tm, saved, expired = setup(server, creds())
    with pytest.raises(SessionExpiredError):
        await transport.request("GET", "/x")
    await transport.aclose()
    assert saved == []
    assert len(expired) == 1
