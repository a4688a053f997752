"""Single sign-on: a one-shot listener on 127.0.0.1 for the homeserver's redirect.

Theory of operation
-------------------
``m.login.sso``: the user's browser goes to the homeserver's
``/login/sso/redirect?redirectUrl=…``, logs in at the identity provider, and
is sent back to ``redirectUrl`` with a ``loginToken``, which the client
trades for an access token with ``m.login.token``. The redirect URL here is
a listener the daemon opens on 127.0.0.1 with a random port and a random
path (the flow id): it accepts connections until one brings the token for
its path, answers the browser with a page saying it can be closed, and
closes. It binds loopback only and lives at most ``timeout`` seconds.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field
from urllib.parse import parse_qs, quote, urlsplit

import structlog
import trio

log = structlog.get_logger(__name__)

_PAGE = "<!doctype html><meta charset=utf-8><title>skiffyd</title><p>{text}</p>"
_MAX_REQUEST = 16 * 1024


@dataclass(slots=True)
class SsoFlow:
    flow_id: str
    homeserver: str
    port: int
    deadline: float
    token: str | None = None
    done: trio.Event = field(default_factory=trio.Event)
    failed: str | None = None

    @property
    def redirect_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/skiffyd-sso/{self.flow_id}"

    @property
    def login_url(self) -> str:
        return (
            f"{self.homeserver}/_matrix/client/v3/login/sso/redirect"
            f"?redirectUrl={quote(self.redirect_url, safe='')}"
        )


def _response(status: str, text: str) -> bytes:
    body = _PAGE.format(text=text).encode()
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n"
        "Cache-Control: no-store\r\nReferrer-Policy: no-referrer\r\n\r\n"
    )
    return head.encode() + body


async def _read_request_line(stream: trio.SocketStream) -> str | None:
    data = b""
    with trio.move_on_after(10):
        while b"\r\n\r\n" not in data and len(data) < _MAX_REQUEST:
            chunk = await stream.receive_some(4096)
            if not chunk:
                break
            data += chunk
    line = data.split(b"\r\n", 1)[0].decode("latin-1")
    parts = line.split(" ")
    return parts[1] if len(parts) == 3 and parts[0] == "GET" else None


async def open_flow(homeserver: str, lifetime: float) -> tuple[SsoFlow, trio.SocketListener]:
    listeners = await trio.open_tcp_listeners(0, host="127.0.0.1")
    listener = listeners[0]
    port = listener.socket.getsockname()[1]
    flow = SsoFlow(
        flow_id=secrets.token_urlsafe(16),
        homeserver=homeserver,
        port=port,
        deadline=trio.current_time() + lifetime,
    )
    return flow, listener


async def serve_flow(flow: SsoFlow, listener: trio.SocketListener) -> None:
    """Accept until the redirect with a token for this flow arrives, or the deadline."""
    structlog.contextvars.clear_contextvars()  # not the starting command's context
    expected = f"/skiffyd-sso/{flow.flow_id}"
    try:
        with trio.move_on_at(flow.deadline):
            while flow.token is None:
                stream = await listener.accept()
                async with stream:
                    target = await _read_request_line(stream)
                    parts = urlsplit(target or "")
                    token = parse_qs(parts.query).get("loginToken", [""])[0]
                    if parts.path != expected or not token:
                        await stream.send_all(_response("404 Not Found", "Not a skiffyd login."))
                        continue
                    flow.token = token
                    await stream.send_all(
                        _response(
                            "200 OK",
                            "skiffyd got the sign-in. Close this window; your terminal "
                            "says whether the login succeeded.",
                        )
                    )
        if flow.token is None:
            flow.failed = "no redirect came back from the homeserver in time"
    finally:
        await listener.aclose()
        flow.done.set()
        log.info("sso.listener_closed", completed=flow.token is not None)
