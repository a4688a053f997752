"""The CLI contract of issue 2: verbs, exit statuses, one-line errors, JSON fields."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from ipc_schema import ErrorCode

if TYPE_CHECKING:
    from collections.abc import Callable

    from skiffyd.devenv.instance import SkiffyInstance
    from skiffyd.devenv.secret_service import SecretService
    from skiffyd.devenv.synapse import Account, Synapse
    from tests.conftest import Ready

pytestmark = pytest.mark.integration

STATUS_STATES = {"logged_out", "connecting", "syncing", "ready", "offline"}


def assert_one_line_error(r: subprocess.CompletedProcess[str], what: str) -> None:
    assert r.returncode != 0, f"{what}: exit status 0"
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"{what}: expected one line on stderr, got {r.stderr!r}"
    assert "Traceback" not in r.stderr


def test_cli_without_a_daemon_fails_with_one_line(
    make_instance: Callable[..., SkiffyInstance],
) -> None:
    inst = make_instance(start=False)
    for args in (
        ("status",),
        ("status", "--json"),
        ("rooms", "--json"),
        ("messages", "!nowhere:localhost", "--json"),
        ("send", "!nowhere:localhost", "hello"),
        ("join", "!nowhere:localhost"),
        ("logout",),
    ):
        assert_one_line_error(inst.cli(*args, timeout=30), f"skiffyd {' '.join(args)}")
    r = inst.cli(
        "login",
        "--homeserver",
        "http://127.0.0.1:1",
        "--user",
        "@nobody:localhost",
        "--password-stdin",
        input="not-a-real-password\n",
        timeout=30,
    )
    assert_one_line_error(r, "skiffyd login")
    assert "not-a-real-password" not in r.stderr + r.stdout


def test_second_daemon_for_the_same_dirs_is_refused(daemon: SkiffyInstance) -> None:
    first = daemon.status()
    r = daemon.run_foreground(timeout=30)
    assert r.returncode != 0
    assert ErrorCode.DAEMON_ALREADY_RUNNING in r.stderr
    # The first one is unharmed.
    assert daemon.pid is not None
    assert daemon.status()["instance_id"] == first["instance_id"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signals_shut_the_daemon_down_cleanly(ready: Ready, sig: signal.Signals) -> None:
    inst = ready.daemon
    code = inst.stop_with(sig, timeout=30)
    assert code is not None, f"still running 30 s after {sig.name}"
    assert code in (0, 128 + sig) if sig == signal.SIGINT else code == 0, code
    assert "Traceback" not in inst.log_path.read_text(errors="replace")
    # Nothing stale is left behind: it starts again and resumes the session.
    inst.start()
    status = inst.wait_state("ready", timeout=60)
    assert status["full_syncs"] == 0


def test_status_logged_out(daemon: SkiffyInstance) -> None:
    status = daemon.status()
    assert status["state"] == "logged_out"
    assert status.get("user_id") is None
    assert status["pid"] == daemon.pid
    human = daemon.cli("status")
    assert human.returncode == 0
    assert human.stdout.strip()


def test_not_logged_in_send_fails_with_one_line(daemon: SkiffyInstance) -> None:
    r = daemon.cli("send", "!room:localhost", "hello")
    assert_one_line_error(r, "send while logged out")


def test_login_with_a_wrong_password_fails(
    daemon: SkiffyInstance, synapse: Synapse, make_user: Callable[..., Account]
) -> None:
    account = make_user()
    r = daemon.cli(
        "login",
        "--homeserver",
        synapse.base_url,
        "--user",
        account.user_id,
        "--password-stdin",
        input="definitely-wrong-password\n",
    )
    assert_one_line_error(r, "login with a wrong password")
    assert "definitely-wrong-password" not in r.stderr + r.stdout
    assert daemon.status()["state"] == "logged_out"


def test_login_reaches_ready(ready: Ready) -> None:
    status = ready.daemon.status()
    assert status["state"] == "ready"
    assert status["user_id"] == ready.account.user_id
    assert status["homeserver"].rstrip("/") == ready.synapse.base_url
    assert status["full_syncs"] == 1  # a fresh login: exactly one initial sync
    assert status["syncs"] >= 1
    assert status["pending_outbox"] == 0
    assert status["state"] in STATUS_STATES


def _keyring_item(ss: SecretService, user_id: str) -> dict[str, Any]:
    """What the daemon keeps in the keyring, described without revealing it."""
    code = """
import json, sys, keyring
raw = keyring.get_password("skiffy", sys.argv[1])
if raw is None:
    print(json.dumps({"exists": False}))
else:
    doc = json.loads(raw)
    print(json.dumps({"exists": True, "is_object": isinstance(doc, dict),
                      "names_user": sys.argv[1] in raw}))
"""
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("DBUS_SESSION_BUS_ADDRESS", "PYTHON_KEYRING_BACKEND")
    }
    env.update(ss.env())
    r = subprocess.run(
        [sys.executable, "-c", code, user_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert r.returncode == 0, r.stderr
    result: dict[str, Any] = json.loads(r.stdout)
    return result


def test_credentials_live_in_the_keyring_until_logout(
    ready: Ready, secret_service: SecretService
) -> None:
    item = _keyring_item(secret_service, ready.account.user_id)
    assert item == {"exists": True, "is_object": True, "names_user": True}
    r = ready.daemon.cli("logout")
    assert r.returncode == 0, r.stderr
    ready.daemon.wait_state("logged_out", timeout=30)
    assert _keyring_item(secret_service, ready.account.user_id) == {"exists": False}


def test_xdg_dirs_are_honoured_and_private(ready: Ready) -> None:
    paths = ready.daemon.paths
    runtime_mode = stat.S_IMODE(paths.runtime_dir.stat().st_mode)
    assert runtime_mode == 0o700, oct(runtime_mode)
    for sock in (paths.command_socket, paths.event_socket):
        st = sock.stat()
        assert stat.S_ISSOCK(st.st_mode), sock.name
        assert stat.S_IMODE(st.st_mode) == 0o600, (sock.name, oct(st.st_mode))
    assert any(p.is_file() for p in paths.data_dir.rglob("*")), "no cache under XDG_DATA_HOME"
    home = ready.daemon.root / "home"
    assert not any(home.iterdir()), "skiffyd wrote outside its XDG directories"
