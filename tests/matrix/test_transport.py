"""The transport's error translation, with httpx's MockTransport (no sockets)."""

from __future__ import annotations

import httpx
import pytest

from skiffyd.core.wire import sync_decoder
from skiffyd.errors import (
    BadResponseError,
    HomeserverUnreachableError,
    InsecureHomeserverError,
    RequestFailedError,
)
from skiffyd.matrix.transport import Transport, decode


def _transport(handler: object, token: str | None = "tok") -> Transport:
    return Transport(
        "http://127.0.0.1:1",
        access_token=token,
        transport=httpx.MockTransport(handler),  # type: ignore[arg-type]
    )


async def test_token_goes_in_header_never_in_url() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, json={"ok": True})

    t = _transport(handler, token="secret-token")
    await t.request("GET", "/_matrix/client/v3/sync", params={"since": "s1"})
    await t.aclose()
    [req] = seen
    assert req.headers["Authorization"] == "Bearer secret-token"
    assert "secret-token" not in str(req.url)


async def test_matrix_error_is_translated_with_retry_after() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(
            429, json={"errcode": "M_LIMIT_EXCEEDED", "error": "slow", "retry_after_ms": 1500}
        )

    t = _transport(handler)
    with pytest.raises(RequestFailedError) as info:
        await t.request("PUT", "/x", json={})
    await t.aclose()
    assert info.value.transient
    assert (info.value.status, info.value.errcode, info.value.retry_after_ms) == (
        429,
        "M_LIMIT_EXCEEDED",
        1500,
    )


async def test_html_502_is_transient_and_html_404_is_bad_response() -> None:
    status = 502

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, text="<html>proxy</html>")

    t = _transport(handler)
    with pytest.raises(RequestFailedError) as info:
        await t.request("GET", "/x")
    assert info.value.transient
    status = 404
    with pytest.raises(BadResponseError):
        await t.request("GET", "/x")
    await t.aclose()


async def test_forbidden_is_permanent() -> None:
    t = _transport(lambda r: httpx.Response(403, json={"errcode": "M_FORBIDDEN"}))
    with pytest.raises(RequestFailedError) as info:
        await t.request("PUT", "/x", json={})
    await t.aclose()
    assert not info.value.transient


async def test_network_errors_are_unreachable() -> None:
    def handler(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused", request=request)

    t = _transport(handler)
    with pytest.raises(HomeserverUnreachableError) as info:
        await t.request("GET", "/x")
    await t.aclose()
    assert info.value.code == "SKIFFY_MATRIX_UNREACHABLE"


def test_garbage_bodies_are_bad_responses() -> None:
    with pytest.raises(BadResponseError, match="not JSON"):
        decode(sync_decoder, b"<html>", "sync")
    with pytest.raises(BadResponseError, match=r"\$\.next_batch"):
        decode(sync_decoder, b'{"next_batch": 5}', "sync")


def test_plain_http_to_a_remote_host_is_refused() -> None:
    with pytest.raises(InsecureHomeserverError):
        Transport("http://matrix.example.org")
