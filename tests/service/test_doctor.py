"""``skiffyd doctor`` (skiffyd.doctor, skiffyd.cli.ops).

Each check is a function returning a ``Check``; these tests run them against
real things: temporary directories with real modes, a real Unix socket, a
real encrypted cache, real HTTP and HTTPS servers on 127.0.0.1 (a
self-signed certificate from ``openssl``, a ``Date`` header set back), a real
Secret Service, and a real daemon logged in to a real Synapse. The keyring
library picks its backend at import, so keyring checks run in a child
process with the Secret Service's environment; so does the whole ``doctor``
command, through the real CLI.
"""

from __future__ import annotations

import email.utils
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any

import apsw
import msgspec
import pytest

from skiffyd.cache.migrations import MIGRATIONS
from skiffyd.cache.store import Cache
from skiffyd.config import Paths
from skiffyd.credentials import Credentials
from skiffyd.devenv.instance import SkiffyInstance
from skiffyd.devenv.procs import clean_env
from skiffyd.doctor import (
    Check,
    ServerTime,
    check_cache,
    check_clock,
    check_daemon,
    check_homeserver,
    check_runtime_dir,
    check_service,
    check_sockets,
    daemon_pid,
    failed,
    render_text,
)
from skiffyd.service import SystemdUserService
from tests.service.test_install import NO_BUS, FakeRunner, run_cli
from tests.service.test_units import require

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from skiffyd.devenv.secret_service import SecretService
    from skiffyd.devenv.synapse import Account, Synapse
    from tests.conftest import Ready


def make_paths(root: Path) -> Paths:
    return Paths(
        config_dir=root / "config" / "skiffyd",
        data_dir=root / "data" / "skiffyd",
        state_dir=root / "state" / "skiffyd",
        runtime_dir=root / "run" / "skiffyd",
    )


@pytest.fixture
def paths() -> Iterator[Paths]:
    # Short, under /tmp: the socket test binds real Unix sockets in the runtime dir.
    root = Path(tempfile.mkdtemp(prefix="skdoc-", dir="/tmp"))
    (root / "run").mkdir(mode=0o700)
    yield make_paths(root)
    shutil.rmtree(root, ignore_errors=True)


# ------------------------------------------------------------------ files


def test_runtime_dir(paths: Paths) -> None:
    rt = paths.runtime_dir
    assert check_runtime_dir(paths, daemon_running=False).status == "pass"
    assert check_runtime_dir(paths, daemon_running=True).status == "fail"
    rt.mkdir(mode=0o755)
    rt.chmod(0o755)
    c = check_runtime_dir(paths, daemon_running=False)
    assert (c.status, c.fix) == ("fail", f"`chmod 700 {rt}`")
    assert "0755" in c.detail
    rt.chmod(0o700)
    c = check_runtime_dir(paths, daemon_running=True)
    assert c.status == "pass"
    rt.rmdir()
    rt.symlink_to(paths.runtime_dir.parent)  # a link is not our directory
    c = check_runtime_dir(paths, daemon_running=False)
    assert c.status == "fail"
    assert "not a directory" in c.detail


def test_sockets(paths: Paths) -> None:
    paths.runtime_dir.mkdir(mode=0o700)
    assert check_sockets(paths, daemon_running=False).status == "pass"
    c = check_sockets(paths, daemon_running=True)
    assert c.status == "fail"
    assert "cmd.sock" in c.detail
    socks = []
    for path in (paths.command_socket, paths.event_socket):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind(str(path))
        socks.append(s)
        path.chmod(0o600)
    try:
        assert check_sockets(paths, daemon_running=True).status == "pass"
        paths.event_socket.chmod(0o666)
        c = check_sockets(paths, daemon_running=True)
        assert c.status == "fail"
        assert c.fix == f"`chmod 600 {paths.event_socket}`"
    finally:
        for s in socks:
            s.close()


def test_daemon_pid_only_for_a_live_skiffyd(paths: Paths) -> None:
    paths.runtime_dir.mkdir(mode=0o700)
    assert daemon_pid(paths) is None
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    paths.lock_file.write_text(f"{gone.pid}\n")
    assert daemon_pid(paths) is None
    code = "import time; time.sleep(60)"
    other = subprocess.Popen([sys.executable, "-c", code])
    named = subprocess.Popen([sys.executable, "-c", code, "skiffyd"])
    try:
        paths.lock_file.write_text(f"{other.pid}\n")
        assert daemon_pid(paths) is None  # a reused pid: not a skiffyd
        paths.lock_file.write_text(f"{named.pid}\n")
        assert daemon_pid(paths) == named.pid
    finally:
        for p in (other, named):
            p.kill()
            p.wait()


def test_no_daemon(paths: Paths) -> None:
    c, status = check_daemon(paths, timeout=2)
    assert status is None
    assert c.status == "fail"
    assert "not running" in c.detail
    assert c.fix is not None
    assert "skiffyd run" in c.fix


KEY = "ab" * 32


def test_cache(paths: Paths) -> None:
    user = "@doc:example"
    path = paths.account_dir(user) / "cache.db"
    c = check_cache(paths, user, KEY, daemon_has_it_open=False)
    assert c.status == "warn"
    assert not path.exists()  # doctor never creates the cache
    Cache.open(path, KEY, user).close()
    c = check_cache(paths, user, KEY, daemon_has_it_open=False)
    assert c.status == "pass", c
    assert "decrypts" in c.detail
    c = check_cache(paths, user, "cd" * 32, daemon_has_it_open=False)
    assert c.status == "fail"
    assert "cannot be decrypted" in c.detail
    assert c.fix is not None
    assert "cache.db.unreadable" in c.fix
    assert KEY not in repr(c)
    assert "cd" * 32 not in repr(c)
    # A daemon that runs the account opened it already: no second open.
    assert check_cache(paths, user, "cd" * 32, daemon_has_it_open=True).status == "pass"
    assert check_cache(paths, user, KEY, daemon_has_it_open=False, may_open=False).status == "warn"
    path.chmod(0o644)
    c = check_cache(paths, user, KEY, daemon_has_it_open=False)
    assert (c.status, c.fix) == ("fail", f"`chmod 600 {path}`")


# ------------------------------------------------------------------ clock


def server_time(skew: float) -> ServerTime:
    now = time.time()
    return ServerTime(email.utils.formatdate(now + skew, usegmt=True), now)


def test_clock() -> None:
    assert check_clock(server_time(0)).status == "pass"
    assert check_clock(server_time(25)).status == "pass"
    ahead = check_clock(server_time(-45))
    assert ahead.status == "warn"
    assert "ahead of" in ahead.detail
    behind = check_clock(server_time(120))
    assert behind.status == "warn"
    assert "120 s behind" in behind.detail or "119 s behind" in behind.detail
    assert behind.fix is not None
    assert "set-ntp" in behind.fix
    assert check_clock(None).status == "skip"
    assert check_clock(ServerTime(None, time.time())).status == "skip"
    assert check_clock(ServerTime("yesterday-ish", time.time())).status == "skip"


# ------------------------------------------------------------------ homeserver


class Server:
    """A real HTTP(S) server on 127.0.0.1 answering every GET with one reply."""

    def __init__(
        self,
        status: int = 200,
        body: bytes = b'{"versions": ["r0.6.1", "v1.1", "v1.12"]}',
        headers: dict[str, str] | None = None,
        *,
        date_skew: float = 0.0,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        reply = (status, body, headers or {"Content-Type": "application/json"})

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                code, content, extra = reply
                self.send_response(code)
                for k, v in extra.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def date_time_string(self, timestamp: float | None = None) -> str:
                return email.utils.formatdate(time.time() + date_skew, usegmt=True)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        scheme = "http"
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(str(tls[0]), str(tls[1]))
            self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
            scheme = "https"
        self.url = f"{scheme}://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


@pytest.fixture
def serve() -> Iterator[Callable[..., Server]]:
    servers: list[Server] = []

    def start(*args: Any, **kwargs: Any) -> Server:
        server = Server(*args, **kwargs)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (cert, key)."""
    openssl = require("openssl", "openssl")
    d = tmp_path_factory.mktemp("tls")
    cert, key = d / "cert.pem", d / "key.pem"
    subprocess.run(
        [
            openssl,
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
            "-addext",
            "subjectAltName=IP:127.0.0.1",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


@pytest.fixture
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    monkeypatch.delenv("SSL_CERT_DIR", raising=False)


@pytest.mark.usefixtures("no_proxy")
def test_homeserver_answers_over_plain_http_on_loopback(serve: Callable[..., Server]) -> None:
    server = serve()
    c, clock = check_homeserver(server.url + "/", timeout=5)
    assert c.status == "pass", c
    assert "plain HTTP (loopback)" in c.detail
    assert "r0.6.1 to v1.12" in c.detail
    assert clock is not None
    assert check_clock(clock).status == "pass"


@pytest.mark.usefixtures("no_proxy")
def test_clock_skew_from_a_real_date_header(serve: Callable[..., Server]) -> None:
    server = serve(date_skew=-300)
    c, clock = check_homeserver(server.url, timeout=5)
    assert c.status == "pass"
    skew = check_clock(clock)
    assert skew.status == "warn"
    assert "ahead of the homeserver" in skew.detail


@pytest.mark.usefixtures("no_proxy")
def test_homeserver_problems(serve: Callable[..., Server]) -> None:
    not_matrix = serve(404, b"<html>nope</html>", {"Content-Type": "text/html"})
    c, _ = check_homeserver(not_matrix.url, timeout=5)
    assert c.status == "fail"
    assert "HTTP 404" in c.detail
    assert c.fix is not None
    assert ".well-known/matrix/client" in c.fix

    moved = serve(301, b"", {"Location": "https://matrix.example.org/_matrix/client/versions"})
    c, _ = check_homeserver(moved.url, timeout=5)
    assert c.status == "fail"
    assert "redirects to https://matrix.example.org" in c.detail

    # A port nobody listens on.
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    c, clock = check_homeserver(f"http://127.0.0.1:{port}", timeout=5)
    assert c.status == "fail"
    assert "cannot reach" in c.detail
    assert "TLS" not in c.detail
    assert clock is None

    # Plain HTTP to anything but loopback is refused before connecting.
    c, _ = check_homeserver("http://matrix.example.org", timeout=5)
    assert c.status == "fail"
    assert "plain http" in c.detail.lower()


@pytest.mark.usefixtures("no_proxy")
def test_tls_errors_are_told_apart(
    serve: Callable[..., Server],
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = serve(tls=certificate)
    c, clock = check_homeserver(server.url, timeout=5)
    assert c.status == "fail"
    assert c.detail.startswith(f"TLS with {server.url} failed: certificate verify failed")
    assert "self-signed" in c.detail or "self signed" in c.detail
    assert c.fix is not None
    assert "SSL_CERT_FILE" in c.fix
    assert clock is None
    # Trusted (httpx reads SSL_CERT_FILE): the same server passes, TLS named.
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    c, clock = check_homeserver(server.url, timeout=5)
    assert c.status == "pass", c
    assert "TLS ok (TLSv1." in c.detail
    assert check_clock(clock).status == "pass"


# ------------------------------------------------------------------ service


def test_service_check(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "skiffyd"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    marker = tmp_path / "booted"
    marker.mkdir()

    def manager(enabled: Any, active: Any) -> SystemdUserService:
        runner = FakeRunner(
            {
                "systemctl --user is-enabled skiffyd.service": enabled,
                "systemctl --user is-active skiffyd.service": active,
            }
        )
        return SystemdUserService(tmp_path / "units", runner, booted_marker=marker)

    assert check_service(None).status == "skip"
    c = check_service(manager((1, ""), (3, "inactive\n")))
    assert c.status == "warn"
    assert c.fix is not None
    assert "skiffyd service install" in c.fix

    manager((0, ""), (0, "")).install(program=[str(program)], enable=False)
    assert check_service(manager((0, "enabled\n"), (0, "active\n"))).status == "pass"
    c = check_service(manager((1, "disabled\n"), (3, "inactive\n")))
    assert c.status == "warn"
    assert c.fix == "`systemctl --user enable --now skiffyd.service`"
    c = check_service(manager((0, "enabled\n"), (3, "failed\n")))
    assert c.status == "fail"
    assert c.fix is not None
    assert "journalctl --user -u skiffyd" in c.fix
    c = check_service(manager((1, "disabled\n"), NO_BUS))
    assert c.status == "warn"
    assert "Failed to connect to bus" in c.detail
    unit = tmp_path / "units" / "skiffyd.service"
    unit.write_text(unit.read_text() + "# edited\n")
    c = check_service(manager((0, "enabled\n"), (0, "active\n")))
    assert c.status == "warn"
    assert "differs" in c.detail
    program.unlink()
    c = check_service(manager((0, "enabled\n"), (0, "active\n")))
    assert c.status == "fail"
    assert "does not exist" in c.detail


def test_render_text() -> None:
    checks = [
        Check("keyring", "pass", "SecretService"),
        Check("daemon", "fail", "not running", "start it"),
        Check("service", "warn", "not installed", "install it"),
        Check("clock", "skip", "nothing to compare"),
    ]
    text = render_text(checks)
    lines = text.splitlines()
    assert lines[0] == "pass  keyring  SecretService"
    assert lines[1] == "fail  daemon   not running"
    assert lines[2] == "               fix: start it"
    assert lines[-1] == "1 failed, 1 warning"
    assert failed(checks)
    assert not failed([checks[0], checks[2]])
    assert render_text([checks[0]]).splitlines()[-1] == "all checks passed"


# ------------------------------------------------------------------ keyring


def _py(code: str, env: dict[str, str]) -> Any:
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


def _no_keyring_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    env = clean_env(HOME=str(tmp_path), XDG_RUNTIME_DIR=str(tmp_path), **extra)
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    return env


CHECK_KEYRING = """
    import json
    from skiffyd.config import Paths
    from skiffyd.doctor import check_credentials
    check, readable = check_credentials(Paths.from_env())
    print(json.dumps({**check.to_json(), "readable": readable}))
"""


@pytest.mark.integration
def test_keyring_check(secret_service: SecretService, tmp_path: Path) -> None:
    ok = _py(CHECK_KEYRING, clean_env(**secret_service.env()))
    assert ok["status"] == "pass"
    assert ok["name"] == "credentials"
    assert ok["detail"].startswith("keyring ")
    assert "SecretService" in ok["detail"]
    assert ok["readable"] is True
    missing = _py(CHECK_KEYRING, _no_keyring_env(tmp_path))
    assert missing["status"] == "fail"
    assert missing["readable"] is False
    assert "gnome-keyring" in missing["fix"]
    assert "PYTHON_KEYRING_BACKEND" in missing["fix"]
    null = _py(
        CHECK_KEYRING,
        _no_keyring_env(tmp_path, PYTHON_KEYRING_BACKEND="keyring.backends.null.Keyring"),
    )
    assert null["status"] == "fail"
    assert "plaintext" in null["detail"]


@pytest.mark.integration
def test_account_check(secret_service: SecretService, tmp_path: Path) -> None:
    root = tmp_path / "acct"
    user = "@doctor-account:example"
    creds = Credentials(
        homeserver="https://hs.example",
        user_id=user,
        device_id="DOCDEV",
        access_token="syt_secret_access_token",
        refresh_token="syr_secret_refresh_token",
        cache_key=Credentials.new_cache_key(),
        pickle_key=Credentials.new_pickle_key(),
    )
    code = f"""
        import json, msgspec
        from pathlib import Path
        from skiffyd import credentials
        from skiffyd.config import Paths
        from skiffyd.doctor import check_account, check_kept_outbox
        root = Path({str(root)!r})
        paths = Paths(root / "c", root / "d", root / "s", root / "r")
        out = {{}}
        out["none"] = check_account(paths)[0].to_json()
        paths.state_dir.mkdir(parents=True)
        paths.kept_outbox_note.write_text(json.dumps({{"user_id": {user!r}, "items": 2}}))
        out["kept"] = check_account(paths)[0].to_json()
        out["kept_other"] = check_kept_outbox(paths, "@someone-else:example").to_json()
        out["kept_same"] = check_kept_outbox(paths, {user!r})
        out["kept_none"] = check_kept_outbox(paths, None)
        paths.kept_outbox_note.unlink()
        out["no_note"] = check_kept_outbox(paths, "@someone-else:example")
        paths.account_pointer.write_text({user!r} + "\\n")
        out["no_item"] = check_account(paths)[0].to_json()
        creds = msgspec.json.decode({msgspec.json.encode(creds).decode()!r}, type=credentials.Credentials)
        credentials.save(creds)
        check, account = check_account(paths)
        out["ok"] = check.to_json()
        loaded = account.credentials if account is not None else None
        out["loaded"] = loaded is not None and loaded.cache_key == {creds.cache_key!r}
        credentials.delete({user!r})
        print(json.dumps(out))
    """
    try:
        out = _py(code, clean_env(**secret_service.env()))
    finally:
        secret_service.delete_items({"service": "skiffy"})
    assert out["none"]["status"] == "warn"
    assert "skiffyd login" in out["none"]["fix"]
    assert out["kept"]["status"] == "warn"
    assert f"the revoked session of {user} left 2 unsent messages" in out["kept"]["detail"]
    assert f"skiffyd forget-account {user} --discard-outbox" in out["kept"]["fix"]
    # Another account logged in: a check of its own says so.
    assert out["kept_other"]["status"] == "warn"
    assert f"the revoked session of {user} left 2 unsent messages" in out["kept_other"]["detail"]
    assert "`skiffyd logout`, then log in as" in out["kept_other"]["fix"]
    assert out["kept_same"] is None
    assert out["kept_none"] is None
    assert out["no_note"] is None
    assert out["no_item"]["status"] == "fail"
    assert "no item" in out["no_item"]["detail"]
    assert out["ok"]["status"] == "pass", out["ok"]
    assert out["ok"]["detail"] == (
        f"{user} on https://hs.example (device DOCDEV), keyring item present, with a refresh token"
    )
    assert out["loaded"] is True
    text = json.dumps(out)
    for secret in (creds.access_token, creds.refresh_token, creds.cache_key, creds.pickle_key):
        assert secret is not None
        assert secret not in text


# ------------------------------------------------------------------ the command


def doctor(inst: SkiffyInstance, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    r = run_cli("doctor", "--json", env=env or inst.env)
    assert "Traceback" not in r.stderr, r.stderr
    data = json.loads(r.stdout)
    assert data["ok"] is (r.returncode == 0)
    return r.returncode, data


def by_name(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    checks = data["checks"]
    assert [c["name"] for c in checks] == [
        "config",
        "credentials",
        "runtime dir",
        "sockets",
        "daemon",
        "account",
        "cache",
        "homeserver",
        "clock",
        "service",
    ]
    return {c["name"]: c for c in checks}


def stored_secrets(inst: SkiffyInstance, user_id: str) -> list[str]:
    out = _py(
        f"""
        import json
        from skiffyd import credentials
        c = credentials.load({user_id!r})
        print(json.dumps([c.access_token, c.refresh_token, c.cache_key, c.pickle_key]))
        """,
        inst.env,
    )
    return [s for s in out if s]


@pytest.mark.integration
def test_doctor_on_a_ready_daemon(ready: Ready) -> None:
    inst = ready.daemon
    code, data = doctor(inst)
    checks = by_name(data)
    statuses = {name: c["status"] for name, c in checks.items()}
    assert statuses == {
        "config": "pass",
        "credentials": "pass",
        "runtime dir": "pass",
        "sockets": "pass",
        "daemon": "pass",
        "account": "pass",
        "cache": "pass",
        "homeserver": "pass",
        "clock": "pass",
        # The instance's HOME and XDG_CONFIG_HOME are its own: nothing installed.
        "service": "warn",
    }, data
    assert code == 0
    assert "state ready" in checks["daemon"]["detail"]
    assert ready.account.user_id in checks["account"]["detail"]
    assert "open in the daemon with the stored key" in checks["cache"]["detail"]
    assert ready.synapse.base_url in checks["homeserver"]["detail"]

    human = run_cli("doctor", env=inst.env)
    assert human.returncode == 0
    assert human.stdout.splitlines()[0].startswith("pass  config")
    assert human.stdout.splitlines()[1].startswith("pass  credentials  keyring ")
    assert "fix: `skiffyd service install`" in human.stdout
    assert human.stdout.splitlines()[-1] == "1 warning"

    secrets = [*stored_secrets(inst, ready.account.user_id), ready.account.password]
    for text in (json.dumps(data), human.stdout, human.stderr):
        for secret in secrets:
            assert secret not in text


@pytest.mark.integration
def test_doctor_with_the_daemon_stopped_checks_the_cache_key(ready: Ready) -> None:
    inst = ready.daemon
    user = ready.account.user_id
    inst.terminate()
    code, data = doctor(inst)
    checks = by_name(data)
    assert code == 1
    assert checks["daemon"]["status"] == "fail"
    assert checks["account"]["status"] == "pass"
    assert checks["cache"]["status"] == "pass", checks["cache"]
    assert "decrypts with the stored key" in checks["cache"]["detail"]
    assert checks["homeserver"]["status"] == "pass"

    # Another cache key in the keyring: the cache no longer opens.
    _py(
        f"""
        import json, msgspec
        from skiffyd import credentials
        c = credentials.load({user!r})
        credentials.save(msgspec.structs.replace(c, cache_key=c.new_cache_key()))
        print("null")
        """,
        inst.env,
    )
    code, data = doctor(inst)
    cache = by_name(data)["cache"]
    assert code == 1
    assert cache["status"] == "fail"
    assert "cannot be decrypted" in cache["detail"]


@pytest.mark.integration
def test_doctor_on_a_logged_out_daemon(daemon: SkiffyInstance) -> None:
    code, data = doctor(daemon)
    checks = by_name(data)
    assert checks["daemon"]["status"] == "warn"
    assert "no account logged in" in checks["daemon"]["detail"]
    assert checks["account"]["status"] == "warn"
    for name in ("cache", "homeserver", "clock"):
        assert checks[name]["status"] == "skip"
    assert code == 0  # warnings only


@pytest.mark.integration
def test_doctor_without_a_keyring(make_instance: Callable[..., SkiffyInstance]) -> None:
    inst = make_instance(start=False)
    env = dict(inst.env)
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    code, data = doctor(inst, env)
    checks = by_name(data)
    assert code == 1
    assert checks["credentials"]["status"] == "fail"
    assert "gnome-keyring" in checks["credentials"]["fix"]
    assert checks["daemon"]["status"] == "fail"
    assert checks["account"]["status"] == "skip"
    r = run_cli("doctor", env=env)
    assert r.returncode == 1
    assert r.stdout.splitlines()[1].startswith("fail  credentials")
    assert r.stderr == ""


def test_doctor_reads_an_old_or_newer_cache_without_migrating_it(paths: Paths) -> None:
    """Doctor opens a stopped daemon's cache read-only: an older schema is
    reported (the daemon migrates it), a newer one is a failure, neither is
    changed."""
    user = "@old:example"
    path = paths.account_dir(user) / "cache.db"
    path.parent.mkdir(parents=True, mode=0o700)
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA hexkey='{KEY}'")
    for step in MIGRATIONS[:2]:
        conn.execute(step)
    conn.execute("PRAGMA user_version = 2")
    conn.close()
    path.chmod(0o600)
    c = check_cache(paths, user, KEY, daemon_has_it_open=False)
    assert c.status == "pass", c
    assert f"schema 2, the daemon brings it to {len(MIGRATIONS)}" in c.detail
    conn = apsw.Connection(str(path))
    conn.execute(f"PRAGMA hexkey='{KEY}'")
    assert conn.execute("PRAGMA user_version").fetchall() == [(2,)]
    assert "messages_keep_last_ord" not in str(
        conn.execute("SELECT name FROM sqlite_master").fetchall()
    )
    conn.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    conn.close()
    c = check_cache(paths, user, KEY, daemon_has_it_open=False)
    assert c.status == "fail"
    assert "newer skiffyd" in c.detail


def test_doctor_never_opens_a_cache_a_live_daemon_may_hold(paths: Paths) -> None:
    # The lock names a live skiffyd that does not answer: the key is not tried.
    user = "@held:example"
    path = paths.account_dir(user) / "cache.db"
    Cache.open(path, KEY, user).close()
    before = path.stat().st_mtime_ns
    c = check_cache(paths, user, "cd" * 32, daemon_has_it_open=False, may_open=False)
    assert c.status == "warn"
    assert path.stat().st_mtime_ns == before


# ------------------------------------------------------- encrypted-file store

ENCRYPTED_RUN = """
    import json, sys
    from pathlib import Path
    from skiffyd import credentials
    from skiffyd.cache.store import Cache
    from skiffyd.config import Paths
    from skiffyd.credentials import Credentials
    from skiffyd.doctor import run_checks

    paths = Paths.from_env()
    passphrase, step = Path(sys.argv[1]), sys.argv[2]
    config = paths.config_dir / "config.toml"
    paths.config_dir.mkdir(parents=True, exist_ok=True)
    user = "@headless-doctor:example"
    if step == "setup":
        creds = Credentials(
            homeserver="http://127.0.0.1:1", user_id=user, device_id="HLDEV",
            access_token="syt_file_secret_token", cache_key=Credentials.new_cache_key(),
            pickle_key=Credentials.new_pickle_key(),
        )
        credentials.configure("encrypted-file", directory=paths.data_dir, passphrase_file=passphrase)
        credentials.save(creds)
        paths.state_dir.mkdir(parents=True, exist_ok=True)
        paths.account_pointer.write_text(user + "\\n")
        Cache.open(paths.account_dir(user) / "cache.db", creds.cache_key, user).close()
        print(json.dumps([creds.access_token, creds.cache_key, creds.pickle_key]))
        raise SystemExit
    toml = {
        "passphrase": f'[credentials]\\nbackend = "encrypted-file"\\npassphrase_file = "{passphrase}"\\n',
        "service-only": '[credentials]\\nbackend = "encrypted-file"\\n',
        "broken": "[credentials\\n",
    }[step]
    config.write_text(toml)
    checks = run_checks(paths, service=None, daemon_timeout=2, http_timeout=2)
    print(json.dumps({c.name: c.to_json() for c in checks}))
"""


def test_doctor_with_the_encrypted_file_store() -> None:
    root = Path(tempfile.mkdtemp(prefix="skenc-", dir="/tmp"))
    try:
        env = clean_env(
            HOME=str(root / "home"),
            XDG_CONFIG_HOME=str(root / "config"),
            XDG_DATA_HOME=str(root / "data"),
            XDG_STATE_HOME=str(root / "state"),
            XDG_RUNTIME_DIR=str(root / "run"),
        )
        env.pop("DBUS_SESSION_BUS_ADDRESS", None)  # no keyring at all: none is needed
        (root / "run").mkdir(mode=0o700)
        passphrase = root / "passphrase"
        passphrase.write_text("correct horse battery staple")

        def run(step: str) -> Any:
            return _py_args(ENCRYPTED_RUN, env, str(passphrase), step)

        secrets = run("setup")
        out = run("passphrase")
        assert out["config"]["status"] == "pass"
        assert "credentials in an encrypted file" in out["config"]["detail"]
        assert out["credentials"] == {
            "name": "credentials",
            "status": "pass",
            "detail": f"encrypted-file store, passphrase {passphrase}",
            "fix": None,
        }
        assert out["account"]["status"] == "pass", out["account"]
        assert "credentials file present" in out["account"]["detail"]
        assert out["cache"]["status"] == "pass", out["cache"]
        assert "decrypts with the stored key" in out["cache"]["detail"]
        assert out["homeserver"]["status"] == "fail"  # nothing listens on port 1

        # The passphrase only in the service's $CREDENTIALS_DIRECTORY: nothing
        # can be opened from a shell, and that is not a failure.
        out = run("service-only")
        assert out["credentials"]["status"] == "skip"
        assert out["account"]["status"] == "pass"
        assert "not opened here" in out["account"]["detail"]
        assert out["cache"]["status"] == "skip"
        assert out["homeserver"]["status"] == "skip"

        # A wrong passphrase is a failure of the account's credentials.
        passphrase.write_text("a different passphrase, long enough")
        out = run("passphrase")
        assert out["credentials"]["status"] == "pass"
        assert out["account"]["status"] == "fail"
        assert "does not open with this passphrase" in out["account"]["detail"]
        # Too short: the store itself fails.
        passphrase.write_text("short")
        assert run("passphrase")["credentials"]["status"] == "fail"

        out = run("broken")
        assert out["config"]["status"] == "fail"
        assert "config.toml" in out["config"]["detail"]

        # The credentials file is private.
        cred_files = list((root / "data" / "skiffyd").glob("credentials-*.enc"))
        assert len(cred_files) == 1
        cred_files[0].chmod(0o644)
        passphrase.write_text("correct horse battery staple")
        out = run("passphrase")
        assert out["account"]["status"] == "fail"
        assert out["account"]["fix"] == f"`chmod 600 {cred_files[0]}`"

        text = json.dumps(out)
        for secret in secrets:
            assert secret not in text
        assert "correct horse" not in text
    finally:
        shutil.rmtree(root, ignore_errors=True)


def _py_args(code: str, env: dict[str, str], *args: str) -> Any:
    r = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout)


@pytest.mark.integration
def test_doctor_on_a_headless_daemon(synapse: Synapse, make_user: Callable[..., Account]) -> None:
    from tests.conftest import short_tmp

    root = short_tmp("hd-")
    inst = SkiffyInstance(root)
    inst.env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    inst.env.pop("PYTHON_KEYRING_BACKEND", None)
    passphrase = root / "passphrase"
    secret_phrase = "headless doctor passphrase " + os.urandom(6).hex()
    passphrase.write_text(secret_phrase)
    config = root / "config" / "skiffyd"
    config.mkdir(parents=True)
    (config / "config.toml").write_text(
        f'[credentials]\nbackend = "encrypted-file"\npassphrase_file = "{passphrase}"\n'
    )
    try:
        account = make_user("headless")
        inst.start()
        inst.login_ready(synapse.base_url, account.user_id, account.password)
        code, data = doctor(inst)
        statuses = {name: c["status"] for name, c in by_name(data).items()}
        assert statuses == {
            "config": "pass",
            "credentials": "pass",
            "runtime dir": "pass",
            "sockets": "pass",
            "daemon": "pass",
            "account": "pass",
            "cache": "pass",
            "homeserver": "pass",
            "clock": "pass",
            "service": "warn",
        }, data
        assert code == 0
        text = json.dumps(data)
        assert secret_phrase not in text
        assert account.password not in text
    finally:
        inst.terminate()
        shutil.rmtree(root, ignore_errors=True)


def test_service_check_and_the_headless_passphrase(tmp_path: Path) -> None:
    program = tmp_path / "bin" / "skiffyd"
    program.parent.mkdir()
    program.write_text("#!/bin/sh\n")
    program.chmod(0o755)
    answers = {
        "systemctl --user is-enabled skiffyd.service": (0, "enabled\n"),
        "systemctl --user is-active skiffyd.service": (0, "active\n"),
    }
    units = tmp_path / "units"
    cred = tmp_path / "passphrase.cred"
    SystemdUserService(units, FakeRunner()).install(program=[str(program)], enable=False)
    # The config wants the credential, the unit does not load it.
    wants = SystemdUserService(units, FakeRunner(answers), credential=cred)
    c = check_service(wants)
    assert c.status == "warn"
    assert "does not load the passphrase credential" in c.detail
    assert c.fix is not None
    assert "skiffyd service install" in c.fix
    wants.install(program=[str(program)], enable=False)
    assert check_service(wants).status == "pass"
    # No encrypted passphrase to load at all: the note says how to make one.
    note = "create it with `systemd-creds encrypt …`"
    c = check_service(SystemdUserService(units, FakeRunner(answers), credential_note=note))
    assert c.status == "warn"
    assert c.fix == note
