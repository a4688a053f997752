"""HTTP to the homeserver: one long-lived httpx client, errors translated once.

Every request to the homeserver goes through :meth:`Transport.request`, the
one place where httpx exceptions and Matrix error answers become the
:mod:`skiffyd.errors` tree. Access tokens travel only in the
``Authorization`` header, never in URLs, so they cannot reach a log line.
"""

from __future__ import annotations

from typing import Any, Protocol, TypeVar

import httpx
import msgspec

from skiffyd import __version__
from skiffyd.core.homeserver import normalize_homeserver
from skiffyd.core.wire import error_decoder
from skiffyd.errors import (
    BadResponseError,
    HomeserverUnreachableError,
    RequestFailedError,
)

T = TypeVar("T")

DEFAULT_TIMEOUT = httpx.Timeout(connect=10.0, read=30.0, write=30.0, pool=10.0)


class TokenAuth(Protocol):
    """Where the transport gets its access token, and how a 401 is healed."""

    @property
    def access_token(self) -> str: ...

    async def ensure_fresh(self) -> None:
        """Refresh ahead of expiry, if the token is about to lapse."""

    async def recover(self, stale_token: str, error: RequestFailedError) -> bool:
        """After a 401 with ``stale_token``: True when a retry may succeed."""


class Transport:
    def __init__(
        self,
        homeserver: str,
        *,
        access_token: str | None = None,
        auth: TokenAuth | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self.homeserver = normalize_homeserver(homeserver)
        self.access_token = access_token
        self.auth = auth
        self._transport = transport
        self._http: httpx.AsyncClient | None = None

    @property
    def _client(self) -> httpx.AsyncClient:
        # Made on the first request, not with the session: making one loads
        # httpcore and a TLS context with the system's CA certificates
        # (~0.1 s), which a start would otherwise pay before it serves the
        # cache.
        if self._http is None:
            self._http = httpx.AsyncClient(
                base_url=self.homeserver,
                timeout=DEFAULT_TIMEOUT,
                headers={"User-Agent": f"skiffyd/{__version__}"},
                transport=self._transport,
                follow_redirects=False,
            )
        return self._http

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        params: dict[str, str] | None = None,
        read_timeout: float | None = None,
        authenticated: bool = True,
    ) -> bytes:
        auth = self.auth if authenticated else None
        if auth is None:
            return await self._once(method, path, json, params, read_timeout, authenticated)
        await auth.ensure_fresh()
        token = auth.access_token
        try:
            return await self._once(method, path, json, params, read_timeout, True, token)
        except RequestFailedError as exc:
            # One retry, after the auth healed the token (a refresh, single flight).
            if exc.status != 401 or not await auth.recover(token, exc):
                raise
        return await self._once(method, path, json, params, read_timeout, True, auth.access_token)

    async def _once(
        self,
        method: str,
        path: str,
        json: Any,
        params: dict[str, str] | None,
        read_timeout: float | None,
        authenticated: bool,
        token: str | None = None,
    ) -> bytes:
        headers = {}
        token = token or self.access_token
        if authenticated and token:
            headers["Authorization"] = f"Bearer {token}"
        timeout = DEFAULT_TIMEOUT
        if read_timeout is not None:
            timeout = httpx.Timeout(connect=10.0, read=read_timeout, write=30.0, pool=10.0)
        content = msgspec.json.encode(json) if json is not None else None
        if content is not None:
            headers["Content-Type"] = "application/json"
        try:
            response = await self._client.request(
                method, path, content=content, params=params, headers=headers, timeout=timeout
            )
        except httpx.TimeoutException as exc:
            raise HomeserverUnreachableError(
                f"the homeserver timed out ({type(exc).__name__})"
            ) from exc
        except httpx.TransportError as exc:
            raise HomeserverUnreachableError(
                f"cannot reach the homeserver ({type(exc).__name__})"
            ) from exc
        if response.status_code >= 400:
            raise self._error(response)
        return response.content

    @staticmethod
    def _error(response: httpx.Response) -> RequestFailedError | BadResponseError:
        status = response.status_code
        try:
            body = error_decoder.decode(response.content)
        except msgspec.DecodeError:
            if status >= 500:
                # A proxy's HTML page while the server restarts: transient.
                return RequestFailedError(
                    f"the homeserver answered HTTP {status}", status=status, errcode=None
                )
            return BadResponseError(f"the homeserver answered HTTP {status} without a Matrix error")
        retry = body.retry_after_ms
        if retry is None and status == 429:
            header = response.headers.get("Retry-After")
            if header and header.isdigit():
                retry = int(header) * 1000
        # errcode and the server's message are not secret; the URL may be.
        return RequestFailedError(
            f"the homeserver refused the request: {body.errcode or status}"
            + (f" ({body.error})" if body.error else ""),
            status=status,
            errcode=body.errcode,
            retry_after_ms=retry,
            soft_logout=body.soft_logout,
        )


def decode(decoder: msgspec.json.Decoder[T], data: bytes, what: str) -> T:
    """Decode a homeserver answer; garbage becomes :class:`BadResponseError`."""
    try:
        return decoder.decode(data)
    except msgspec.ValidationError as exc:
        # msgspec names the path of the bad field, never its value.
        raise BadResponseError(f"the homeserver's {what} answer is invalid: {exc}") from exc
    except msgspec.DecodeError as exc:
        raise BadResponseError(f"the homeserver's {what} answer is not JSON") from exc
