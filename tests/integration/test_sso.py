"""``skiffyd login --sso`` end to end: Synapse with CAS, a scripted browser.

The identity provider is :class:`skiffyd.devenv.cas.CasServer`, a real CAS
server on 127.0.0.1 that Synapse validates tickets against over HTTP. The
browser is an ``httpx`` client that follows the redirects one hop at a time,
so each leg of the flow is checked: homeserver → CAS login form → CAS →
Synapse's ticket endpoint → the daemon's one-shot listener with a
``loginToken``.
"""

from __future__ import annotations

import html
import re
import secrets
import socket
import subprocess
from typing import TYPE_CHECKING
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from skiffyd.devenv.cas import CasServer
from skiffyd.devenv.procs import stop_process, tail
from skiffyd.devenv.synapse import Synapse
from skiffyd.devenv.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from skiffyd.devenv.instance import SkiffyInstance

pytestmark = pytest.mark.integration

FAILURE_CODES = ("SKIFFY_SESSION_LOGIN_FAILED", "SKIFFY_IPC_TIMEOUT")


@pytest.fixture(scope="module")
def cas() -> Iterator[CasServer]:
    with CasServer() as server:
        yield server


@pytest.fixture(scope="module")
def cas_synapse(cas: CasServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Synapse]:
    """A Synapse whose single sign-on is the CAS server above.

    ``sso.client_whitelist`` lets Synapse redirect to the daemon's loopback
    listener without its "continue to your client?" confirmation page.
    """
    hs = Synapse(
        tmp_path_factory.mktemp("synapse-cas"),
        extra_config={
            "cas_config": {
                "enabled": True,
                "server_url": cas.url,
                "displayname_attribute": "displayName",
            },
            "sso": {"client_whitelist": ["http://127.0.0.1:"]},
        },
    )
    hs.start()
    yield hs
    hs.stop()


def new_cas_user(cas: CasServer) -> tuple[str, str]:
    """A fresh CAS account; (username, password)."""
    username = f"sso-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(18)
    cas.users[username] = password
    cas.attributes[username] = {"displayName": f"SSO {username}"}
    return username, password


class SsoLogin:
    """A running ``skiffyd login --sso --no-browser``; its output goes to files."""

    def __init__(self, inst: SkiffyInstance, homeserver: str, *args: str) -> None:
        stem = f"sso-login-{secrets.token_hex(3)}"
        self.stdout_path = inst.root / f"{stem}.stdout"
        self.stderr_path = inst.root / f"{stem}.stderr"
        with self.stdout_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self.proc = subprocess.Popen(
                [
                    *inst.command,
                    "login",
                    "--sso",
                    "--homeserver",
                    homeserver,
                    "--no-browser",
                    *args,
                ],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=inst.env,
                cwd=inst.root,
                start_new_session=True,
            )

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def describe(self) -> str:
        return (
            f"exit status {self.proc.poll()}\n--- stdout\n{tail(self.stdout_path)}\n"
            f"--- stderr\n{tail(self.stderr_path)}"
        )

    def open_url(self, timeout: float = 30.0) -> str:
        """The URL of its ``open: URL`` line, as soon as it is printed."""

        def probe() -> str | None:
            for line in self.stdout().splitlines():
                if line.startswith("open: "):
                    return line.removeprefix("open: ").strip()
            if self.proc.poll() is not None:
                raise AssertionError(f"`skiffyd login --sso` exited early: {self.describe()}")
            return None

        return wait_for(
            probe,
            timeout=timeout,
            interval=0.05,
            what="the `open:` line of `skiffyd login --sso`",
            describe=self.describe,
            fatal=(AssertionError,),
        )

    def wait(self, timeout: float) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(self.proc, timeout=5)
            raise AssertionError(
                f"`skiffyd login --sso` still running after {timeout:g} s: {self.describe()}"
            ) from None

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)


@pytest.fixture
def sso_logins() -> Iterator[list[SsoLogin]]:
    logins: list[SsoLogin] = []
    yield logins
    for login in logins:
        login.stop()


def listener_of(open_url: str) -> tuple[int, str]:
    """The port and path of the daemon's listener, from the redirectUrl in ``open_url``."""
    redirect = parse_qs(urlsplit(open_url).query)["redirectUrl"][0]
    parts = urlsplit(redirect)
    assert parts.scheme == "http"
    assert parts.hostname == "127.0.0.1", redirect
    assert parts.port is not None
    return parts.port, parts.path


def refused(port: int) -> bool:
    """Whether a TCP connection to 127.0.0.1:``port`` is refused (nothing listens)."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            return False
    except ConnectionRefusedError:
        return True


def browser() -> httpx.Client:
    """A scripted browser: keeps cookies, follows no redirects by itself."""
    return httpx.Client(trust_env=False, follow_redirects=False, timeout=30.0)


def redirect_target(r: httpx.Response) -> str:
    assert r.status_code in (302, 303, 307), (r.status_code, r.text[:300])
    return str(r.url.join(r.headers["location"]))


def cas_form(client: httpx.Client, open_url: str, hs: Synapse, cas: CasServer) -> str:
    """Follow ``open_url`` to the CAS login form; the form's ``service`` value."""
    assert open_url.startswith(f"{hs.base_url}/_matrix/client/"), open_url
    assert "/login/sso/redirect" in open_url
    login_url = redirect_target(client.get(open_url))
    assert login_url.startswith(f"{cas.url}/login?"), login_url
    form = client.get(login_url)
    assert form.status_code == 200
    assert 'name="password"' in form.text
    match = re.search(r'name="service" value="([^"]*)"', form.text)
    assert match is not None, form.text
    service = html.unescape(match.group(1))
    assert service == parse_qs(urlsplit(login_url).query)["service"][0]
    assert service.startswith(f"{hs.base_url}/_matrix/client/")
    return service


def test_sso_login_end_to_end(
    cas: CasServer,
    cas_synapse: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    sso_logins: list[SsoLogin],
) -> None:
    hs = cas_synapse
    username, password = new_cas_user(cas)
    inst = make_instance()
    login = SsoLogin(inst, hs.base_url, "--timeout", "120")
    sso_logins.append(login)
    open_url = login.open_url()
    port, path = listener_of(open_url)
    validated_before = cas.validations_ok

    with browser() as client:
        # Something else on this machine knocking on the listener does not
        # end the flow: only the redirect with a token for its path does.
        assert client.get(f"http://127.0.0.1:{port}/").status_code != 200
        assert client.get(f"http://127.0.0.1:{port}{path}").status_code != 200
        assert login.proc.poll() is None, login.describe()

        service = cas_form(client, open_url, hs, cas)
        r = client.post(
            f"{cas.url}/login",
            data={"service": service, "username": username, "password": password},
        )
        ticket_url = redirect_target(r)
        assert ticket_url.startswith(service + "&ticket=ST-"), ticket_url

        # Synapse checks the ticket with CAS (a real HTTP round trip) and sends
        # the browser straight back to the daemon, no confirmation page.
        back = redirect_target(client.get(ticket_url))
        assert cas.validations_ok == validated_before + 1
        parts = urlsplit(back)
        assert (parts.hostname, parts.port, parts.path) == ("127.0.0.1", port, path), back
        login_token = parse_qs(parts.query)["loginToken"][0]
        page = client.get(back)
        assert page.status_code == 200, page.text
        assert "text/html" in page.headers["content-type"]

    assert login.wait(timeout=60) == 0, login.describe()
    user_id = f"@{username}:localhost"
    assert f"logged in as {user_id} (device " in login.stdout()
    # The one-shot listener is gone once the flow is done.
    assert refused(port), f"the SSO listener on port {port} still accepts connections"

    status = inst.wait_state("ready", timeout=60)
    assert status["user_id"] == user_id
    assert status["homeserver"].rstrip("/") == hs.base_url

    # The login token was for one use and stays out of every output.
    for text in (login.stdout(), login.stderr(), inst.log_path.read_text()):
        assert login_token not in text
        assert password not in text


def test_sso_wrong_password_never_completes(
    cas: CasServer,
    cas_synapse: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    sso_logins: list[SsoLogin],
) -> None:
    hs = cas_synapse
    username, _ = new_cas_user(cas)
    inst = make_instance()
    login = SsoLogin(inst, hs.base_url, "--timeout", "20")
    sso_logins.append(login)
    open_url = login.open_url()
    port, _ = listener_of(open_url)
    issued_before = cas.tickets_issued
    failed_before = cas.failed_logins

    with browser() as client:
        service = cas_form(client, open_url, hs, cas)
        r = client.post(
            f"{cas.url}/login",
            data={"service": service, "username": username, "password": "not-the-password"},
        )
        assert r.status_code == 401
        assert "location" not in r.headers
        assert 'name="password"' in r.text  # the form again, with an error
    assert cas.failed_logins == failed_before + 1
    assert cas.tickets_issued == issued_before

    code = login.wait(timeout=20 + 60)
    assert code != 0, login.describe()
    assert any(c in login.stderr() for c in FAILURE_CODES), login.describe()
    assert "logged in as" not in login.stdout()
    assert refused(port), f"the SSO listener on port {port} outlived its timeout"
    assert inst.status()["state"] != "ready"


def test_sso_forged_login_token_is_refused(
    cas_synapse: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    sso_logins: list[SsoLogin],
) -> None:
    """A token the homeserver never issued reaches the listener: the login fails."""
    inst = make_instance()
    login = SsoLogin(inst, cas_synapse.base_url, "--timeout", "60")
    sso_logins.append(login)
    port, path = listener_of(login.open_url())

    with browser() as client:
        client.get(f"http://127.0.0.1:{port}{path}", params={"loginToken": "syl_forged"})

    code = login.wait(timeout=60)
    assert code != 0, login.describe()
    assert "SKIFFY_SESSION_LOGIN_FAILED" in login.stderr(), login.describe()
    assert refused(port)
    assert inst.status()["state"] != "ready"


def test_cas_server_protocol(cas: CasServer) -> None:
    """The test IdP itself: tickets are single-use and bound to their service."""
    username, password = new_cas_user(cas)
    service = "http://127.0.0.1:9/cb?x=1"
    with browser() as client:
        r = client.get(
            f"{cas.url}/login",
            params={"service": service, "username": username, "password": password},
        )
        target = redirect_target(r)
        assert target.startswith(service + "&ticket=ST-")
        ticket = parse_qs(urlsplit(target).query)["ticket"][0]

        ok = client.get(
            f"{cas.url}/p3/serviceValidate", params={"ticket": ticket, "service": service}
        )
        assert f"<cas:user>{username}</cas:user>" in ok.text
        assert f"<cas:displayName>SSO {username}</cas:displayName>" in ok.text
        again = client.get(
            f"{cas.url}/proxyValidate", params={"ticket": ticket, "service": service}
        )
        assert 'code="INVALID_TICKET"' in again.text

        other = redirect_target(
            client.post(
                f"{cas.url}/login",
                data={"service": service, "username": username, "password": password},
            )
        )
        ticket = parse_qs(urlsplit(other).query)["ticket"][0]
        wrong = client.get(
            f"{cas.url}/serviceValidate",
            params={"ticket": ticket, "service": "http://127.0.0.1:9/elsewhere"},
        )
        assert 'code="INVALID_SERVICE"' in wrong.text
        spent = client.get(
            f"{cas.url}/serviceValidate", params={"ticket": ticket, "service": service}
        )
        assert 'code="INVALID_TICKET"' in spent.text
