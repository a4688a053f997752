"""A tiny CAS 2.0/3.0 identity provider on 127.0.0.1, for testing SSO.

Synapse's ``cas_config`` speaks CAS (see ``synapse/handlers/cas.py``): it
sends the browser to ``{server_url}/login?service=S``, the provider logs the
user in and redirects to ``S`` with ``ticket=ST-…`` appended, and Synapse
checks the ticket with ``GET {server_url}/proxyValidate?ticket=…&service=S``
(``/p3/proxyValidate`` with ``protocol_version: 3``), which answers::

    <cas:serviceResponse xmlns:cas="http://www.yale.edu/tp/cas">
      <cas:authenticationSuccess><cas:user>alice</cas:user>…

::

    with CasServer({"alice": "pw"}) as cas:
        cas.url                  # http://127.0.0.1:<port>
        Synapse(dir, extra_config={"cas_config": {"enabled": True,
                                                  "server_url": cas.url}})

``/login`` shows a username/password form on GET and takes the answer as a
form POST (or as ``username``/``password`` query parameters on GET, for a
scripted browser). ``/serviceValidate``, ``/proxyValidate`` and their
``/p3/`` forms validate a ticket once: a ticket is single-use, bound to the
service URL it was issued for, and expires after ``ticket_lifetime``
seconds. Unknown, reused or expired tickets get
``<cas:authenticationFailure code="INVALID_TICKET">``, a ticket presented
with another service ``INVALID_SERVICE`` (and it is spent too, as the
protocol requires). There are no single sign-on cookies and no proxy
tickets. It serves on 127.0.0.1 only, in a background thread.
"""

from __future__ import annotations

import hmac
import html
import secrets
import threading
import time
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, cast
from urllib.parse import parse_qs, urlencode, urlsplit, urlunsplit
from xml.sax.saxutils import escape

if TYPE_CHECKING:
    from collections.abc import Mapping

CAS_NAMESPACE = "http://www.yale.edu/tp/cas"
VALIDATE_PATHS = frozenset(
    {"/serviceValidate", "/proxyValidate", "/p3/serviceValidate", "/p3/proxyValidate"}
)
_MAX_BODY = 16 * 1024

_FORM = """<!doctype html>
<html><head><meta charset="utf-8"><title>CAS login</title></head>
<body>
<h1>CAS login</h1>
{error}
<form method="post" action="/login">
<input type="hidden" name="service" value="{service}">
<label>Username <input name="username" autocomplete="username"></label>
<label>Password <input name="password" type="password" autocomplete="current-password"></label>
<button type="submit">Log in</button>
</form>
</body></html>
"""


@dataclass(frozen=True)
class _Ticket:
    user: str
    service: str
    expires: float


def with_ticket(service: str, ticket: str) -> str:
    """``service`` with ``ticket=…`` appended to its query string."""
    parts = urlsplit(service)
    query = f"{parts.query}&" if parts.query else ""
    query += urlencode({"ticket": ticket})
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, parts.fragment))


def success_xml(user: str, attributes: Mapping[str, str] | None = None) -> str:
    attrs = ""
    if attributes:
        inner = "".join(
            f"<cas:{name}>{escape(value)}</cas:{name}>" for name, value in attributes.items()
        )
        attrs = f"<cas:attributes>{inner}</cas:attributes>"
    return (
        f'<cas:serviceResponse xmlns:cas="{CAS_NAMESPACE}">'
        f"<cas:authenticationSuccess><cas:user>{escape(user)}</cas:user>{attrs}"
        "</cas:authenticationSuccess></cas:serviceResponse>\n"
    )


def failure_xml(code: str, message: str) -> str:
    return (
        f'<cas:serviceResponse xmlns:cas="{CAS_NAMESPACE}">'
        f'<cas:authenticationFailure code="{escape(code)}">{escape(message)}'
        "</cas:authenticationFailure></cas:serviceResponse>\n"
    )


class CasServer:
    """A CAS server with a fixed set of users (``{username: password}``).

    ``attributes`` (optional, ``{username: {name: value}}``) are sent in
    ``<cas:attributes>`` on a successful validation, e.g. a display name for
    Synapse's ``displayname_attribute``. Attribute names must be XML names.
    """

    def __init__(
        self,
        users: dict[str, str] | None = None,
        *,
        attributes: Mapping[str, Mapping[str, str]] | None = None,
        ticket_lifetime: float = 60.0,
    ) -> None:
        self.users: dict[str, str] = dict(users or {})
        self.attributes = {user: dict(attrs) for user, attrs in (attributes or {}).items()}
        self.ticket_lifetime = ticket_lifetime
        self._tickets: dict[str, _Ticket] = {}
        self._lock = threading.Lock()
        self._httpd: _CasHTTPServer | None = None
        self._thread: threading.Thread | None = None
        #: Counters for tests: logins that failed, tickets issued, validations
        #: that succeeded and that failed.
        self.failed_logins = 0
        self.tickets_issued = 0
        self.validations_ok = 0
        self.validations_failed = 0

    # -------------------------------------------------------------- lifecycle

    @property
    def port(self) -> int:
        if self._httpd is None:
            raise RuntimeError("the CAS server has not been started")
        return int(self._httpd.server_address[1])

    @property
    def url(self) -> str:
        """The ``server_url`` for Synapse's ``cas_config`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        if self._httpd is not None:
            return
        httpd = _CasHTTPServer(("127.0.0.1", 0), _CasHandler)
        httpd.cas = self
        self._httpd = httpd
        self._thread = threading.Thread(
            target=httpd.serve_forever, kwargs={"poll_interval": 0.1}, name="cas", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket. Safe to call twice."""
        httpd, self._httpd = self._httpd, None
        if httpd is None:
            return
        httpd.shutdown()
        httpd.server_close()
        if self._thread is not None:
            self._thread.join(timeout=10)
            self._thread = None

    def __enter__(self) -> CasServer:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -------------------------------------------------------------- protocol

    def check_password(self, username: str, password: str) -> bool:
        expected = self.users.get(username)
        # Compare something either way, so an unknown user takes as long.
        ok = hmac.compare_digest(
            (expected if expected is not None else secrets.token_hex(8)).encode(),
            password.encode(),
        )
        ok = ok and expected is not None
        if not ok:
            with self._lock:
                self.failed_logins += 1
        return ok

    def issue_ticket(self, user: str, service: str) -> str:
        ticket = f"ST-{secrets.token_urlsafe(24)}"
        with self._lock:
            self._tickets[ticket] = _Ticket(user, service, time.monotonic() + self.ticket_lifetime)
            self.tickets_issued += 1
        return ticket

    def validate(self, ticket: str, service: str) -> tuple[bool, str]:
        """Spend ``ticket``; returns (ok, the XML answer)."""
        if not ticket or not service:
            ok, body = False, failure_xml("INVALID_REQUEST", "ticket and service are required")
        else:
            with self._lock:
                issued = self._tickets.pop(ticket, None)
            if issued is None or issued.expires < time.monotonic():
                ok, body = False, failure_xml("INVALID_TICKET", f"ticket {ticket} not recognized")
            elif not hmac.compare_digest(issued.service.encode(), service.encode()):
                ok, body = (
                    False,
                    failure_xml("INVALID_SERVICE", "ticket issued for another service"),
                )
            else:
                ok, body = True, success_xml(issued.user, self.attributes.get(issued.user))
        with self._lock:
            if ok:
                self.validations_ok += 1
            else:
                self.validations_failed += 1
        return ok, body


class _CasHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    cas: CasServer


class _CasHandler(BaseHTTPRequestHandler):
    server_version = "skiffyd-devenv-cas/1"

    @property
    def cas(self) -> CasServer:
        return cast("_CasHTTPServer", self.server).cas

    def log_message(self, format: str, *args: object) -> None:
        # Quiet: query strings carry tickets and (scripted) passwords.
        pass

    def _send(
        self,
        status: HTTPStatus,
        body: str = "",
        content_type: str = "text/html; charset=utf-8",
        location: str | None = None,
    ) -> None:
        data = body.encode()
        self.send_response(status)
        if location is not None:
            self.send_header("Location", location)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(data)

    def _first(self, params: dict[str, list[str]], name: str) -> str:
        values = params.get(name)
        return values[0] if values else ""

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        params = parse_qs(parts.query)
        if parts.path == "/login":
            if "username" in params or "password" in params:
                self._login(params)
            else:
                self._form(self._first(params, "service"))
        elif parts.path in VALIDATE_PATHS:
            _, body = self.cas.validate(
                self._first(params, "ticket"), self._first(params, "service")
            )
            self._send(HTTPStatus.OK, body, "application/xml; charset=utf-8")
        else:
            self._send(HTTPStatus.NOT_FOUND, "not found\n", "text/plain; charset=utf-8")

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != "/login":
            self._send(HTTPStatus.NOT_FOUND, "not found\n", "text/plain; charset=utf-8")
            return
        try:
            length = int(self.headers.get("Content-Length") or "0")
        except ValueError:
            length = -1
        if not 0 <= length <= _MAX_BODY:
            self._send(HTTPStatus.BAD_REQUEST, "bad request\n", "text/plain; charset=utf-8")
            return
        body = self.rfile.read(length).decode("utf-8", "replace")
        params = parse_qs(parts.query)
        params.update(parse_qs(body, keep_blank_values=True))
        self._login(params)

    def _form(self, service: str, error: str = "", status: HTTPStatus = HTTPStatus.OK) -> None:
        note = f'<p class="error">{html.escape(error)}</p>' if error else ""
        self._send(status, _FORM.format(error=note, service=html.escape(service, quote=True)))

    def _login(self, params: dict[str, list[str]]) -> None:
        service = self._first(params, "service")
        username = self._first(params, "username")
        if not self.cas.check_password(username, self._first(params, "password")):
            self._form(service, "Invalid username or password.", HTTPStatus.UNAUTHORIZED)
            return
        if not service:
            self._send(HTTPStatus.OK, "<!doctype html><p>Logged in.</p>\n")
            return
        ticket = self.cas.issue_ticket(username, service)
        self._send(
            HTTPStatus.FOUND,
            "redirecting\n",
            "text/plain; charset=utf-8",
            with_ticket(service, ticket),
        )
