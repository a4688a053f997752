"""Headless: the encrypted-file credentials store with no D-Bus at all, SIGHUP, SIGTERM, and logs."""

from __future__ import annotations

import json
import secrets
import shutil
import signal
from typing import TYPE_CHECKING

import pytest

from skiffyd.devenv.instance import SkiffyInstance
from skiffyd.devenv.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from skiffyd.devenv.peer import Peer
    from skiffyd.devenv.synapse import Synapse

pytestmark = pytest.mark.integration


@pytest.fixture
def headless() -> Iterator[SkiffyInstance]:
    from tests.conftest import short_tmp

    root = short_tmp("hl-")
    inst = SkiffyInstance(root, env={"DBUS_SESSION_BUS_ADDRESS": "", "PYTHON_KEYRING_BACKEND": ""})
    inst.env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    inst.env.pop("PYTHON_KEYRING_BACKEND", None)
    passphrase = root / "passphrase"
    passphrase.write_text(secrets.token_urlsafe(24))
    config = root / "config" / "skiffyd"
    config.mkdir(parents=True)
    (config / "config.toml").write_text(
        f'[credentials]\nbackend = "encrypted-file"\npassphrase_file = "{passphrase}"\n'
    )
    yield inst
    inst.terminate()
    shutil.rmtree(root, ignore_errors=True)


def test_headless_login_resume_reload_and_clean_stop(
    headless: SkiffyInstance,
    synapse: Synapse,
    make_user: Callable[..., object],
    make_peer: Callable[..., Peer],
) -> None:
    inst = headless
    account = make_user("headless")
    inst.start()
    inst.login_ready(synapse.base_url, account.user_id, account.password)  # type: ignore[attr-defined]
    peer = make_peer()
    room = peer.create_room("Headless", None, invite=[account.user_id])  # type: ignore[attr-defined]
    inst.join_invited(room)
    body = f"no-bus-{secrets.token_hex(4)}"
    inst.send(room, body)
    peer.wait_for_bodies(room, [body])

    files = [p for p in inst.data_home.rglob("credentials-*.enc")]
    assert len(files) == 1
    raw = files[0].read_bytes()
    assert account.user_id.encode() not in raw  # type: ignore[attr-defined]
    assert b"access_token" not in raw

    # SIGHUP re-reads the config: the daemon stays up and says so.
    config = inst.root / "config" / "skiffyd" / "config.toml"
    before = inst.log_path.read_text().count('"outbox.sent"')
    assert before >= 1  # at info level, the first send was logged
    config.write_text('log_level = "warning"\n' + config.read_text())
    assert inst.proc is not None
    inst.proc.send_signal(signal.SIGHUP)
    wait_for(
        lambda: '"daemon.reloaded"' in inst.log_path.read_text(), timeout=20, what="the reload"
    )
    assert inst.status()["state"] == "ready"
    # The new level applies to every logger at once: a send logs no info line.
    quiet = f"quiet-{secrets.token_hex(4)}"
    inst.send(room, quiet)
    peer.wait_for_bodies(room, [quiet])
    wait_for(lambda: inst.status()["pending_outbox"] == 0, timeout=20, what="an empty outbox")
    assert inst.log_path.read_text().count('"outbox.sent"') == before

    # SIGTERM: a clean stop (exit 0), then a resume from the file store.
    assert inst.stop_with(signal.SIGTERM) == 0
    st = inst.start()
    assert st["user_id"] == account.user_id  # type: ignore[attr-defined]
    st = inst.wait_state("ready", timeout=60)
    assert st["full_syncs"] == 0

    log = inst.log_path.read_text()
    assert account.password not in log  # type: ignore[attr-defined]
    assert body not in log


def test_logs_hold_no_password_token_or_body(
    daemon: SkiffyInstance,
    synapse: Synapse,
    make_user: Callable[..., object],
    make_peer: Callable[..., Peer],
    secret_service: object,
) -> None:
    import subprocess
    import sys

    from skiffyd.devenv.procs import clean_env

    account = make_user("logscan")
    daemon.login_ready(synapse.base_url, account.user_id, account.password)  # type: ignore[attr-defined]
    peer = make_peer()
    room = peer.create_room("Logs", None, invite=[account.user_id])  # type: ignore[attr-defined]
    daemon.join_invited(room)
    bodies = [f"secret-body-{secrets.token_hex(4)}" for _ in range(3)]
    for b in bodies[:2]:
        daemon.send(room, b)
    peer.send_text(room, bodies[2])
    peer.wait_for_bodies(room, bodies)
    wait_for(
        lambda: any(m["body"] == bodies[2] for m in daemon.messages(room)),
        timeout=30,
        what="the peer's message",
    )
    out = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from skiffyd import credentials; import json; c = credentials.load({account.user_id!r}); print(json.dumps([c.access_token, c.refresh_token, c.cache_key, c.pickle_key]))",
        ],  # type: ignore[attr-defined]
        env=clean_env(**secret_service.env()),  # type: ignore[attr-defined]
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    secrets_now = [s for s in json.loads(out.stdout) if s]
    log = daemon.log_path.read_text()
    for needle in [account.password, *secrets_now, *bodies]:  # type: ignore[attr-defined]
        assert needle not in log
    # User ids are hashed; each command's lines carry a request id.
    assert account.user_id not in log  # type: ignore[attr-defined]
    login_lines = [json.loads(line) for line in log.splitlines() if '"session.logged_in"' in line]
    assert login_lines
    assert login_lines[0]["cmd"] == "login"
    assert login_lines[0]["request_id"]


def test_a_login_whose_credentials_cannot_be_kept_leaves_no_device(
    headless: SkiffyInstance, synapse: Synapse, make_user: Callable[..., object]
) -> None:
    """The homeserver accepted the password, then the credentials store
    failed: the login is undone on the homeserver too (no device left with a
    token nobody holds), the daemon is where it was, and once the store works
    the next login is the account's only skiffyd device."""
    from tests.integration.test_commands import error_code
    from tests.integration.test_session import skiffyd_devices

    inst = headless
    account = make_user("unkept")
    user_id, password = account.user_id, account.password  # type: ignore[attr-defined]
    passphrase = inst.root / "passphrase"
    kept = passphrase.read_text()
    inst.start()
    passphrase.unlink()  # the store cannot encrypt anything now
    failed = inst.cli(
        "login", "--homeserver", synapse.base_url, "--user", user_id, "--password-stdin",
        input=password + "\n",
    )  # fmt: skip
    assert error_code(failed, "a login with no passphrase") == "SKIFFY_CREDENTIALS_NO_KEYRING"
    assert inst.status()["state"] == "logged_out"
    assert any(
        r.get("event") == "session.server_logout" and r.get("of") == "undone_login"
        for r in inst.log_records()
    )
    assert skiffyd_devices(synapse, user_id, password) == set()

    passphrase.write_text(kept)
    device = inst.login_ready(synapse.base_url, user_id, password)["device_id"]
    assert skiffyd_devices(synapse, user_id, password) == {device}


@pytest.mark.parametrize("moment", ["stash", "saved"])
def test_a_login_killed_while_it_carries_an_outbox_over_loses_nothing(
    moment: str,
    headless: SkiffyInstance,
    own_synapse: Synapse,
    make_peer: Callable[..., Peer],
) -> None:
    """kill -9 in the middle of a login that carries a revoked session's
    outbox over: as soon as its new cache appears beside the old one
    (`stash`), or as soon as its credentials are stored (`saved`; the
    encrypted-file store's scrypt makes both moments wide enough to hit).
    After a restart (and another login, when none resumes), every message
    arrives exactly once, in order."""
    import hashlib
    import os
    import subprocess
    import time

    from tests.integration.test_session import (
        queue_then_revoke,
        retry_first_then_each_arrives_once,
    )

    hs, inst = own_synapse, headless
    account = hs.register_account(f"crash-{secrets.token_hex(3)}", secrets.token_urlsafe(18))
    inst.start()
    device = inst.login_ready(hs.base_url, account.user_id, account.password)["device_id"]
    peer = make_peer(hs=hs)
    room_id = peer.create_room("Crash carry", None, invite=[account.user_id])
    inst.join_invited(room_id)
    bodies = [f"crash-{moment}-{secrets.token_hex(3)}-{n}" for n in range(3)]
    txns = queue_then_revoke(hs, inst, account, device, room_id, bodies)
    inst.start()
    st = inst.wait_state("logged_out", timeout=60)
    assert "3 unsent outbox items kept" in (st["last_error"] or "")

    digest = hashlib.sha256(account.user_id.encode()).hexdigest()[:16]
    data = inst.data_home / "skiffyd"
    new_dir = data / f"{digest}.new"
    creds_file = data / f"credentials-{digest}.enc"
    before = creds_file.stat().st_ino

    def reached() -> bool:
        if moment == "stash":
            return new_dir.exists()
        return creds_file.stat().st_ino != before  # replaced whole, atomically

    login = subprocess.Popen(
        [*inst.command, "login", "--homeserver", hs.base_url, "--user", account.user_id,
         "--password-stdin"],
        stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=inst.env, cwd=inst.root,
    )  # fmt: skip
    assert login.stdin is not None
    login.stdin.write((account.password + "\n").encode())
    login.stdin.close()
    deadline = time.monotonic() + 60
    while not reached():
        assert time.monotonic() < deadline, f"the login never reached {moment}"
        assert login.poll() is None, "the login finished before the moment"
        time.sleep(0.0005)
    inst.kill9()
    login.wait(timeout=30)
    assert os.path.exists(creds_file)

    st = inst.start()
    if st["state"] != "connecting":
        # The pointer was not written yet: nothing resumes; log in again.
        assert st["state"] == "logged_out", st
        inst.login(hs.base_url, account.user_id, account.password)
    inst.wait_state("ready", timeout=60)
    items = wait_for(
        lambda: (lambda o: o if len(o) == 3 else None)(inst.outbox()),
        timeout=60,
        what="the carried items in the outbox",
        describe=inst.log_tail,
    )
    assert [i["txn_id"] for i in items] == txns
    assert items[0]["state"] == "failed"
    retry_first_then_each_arrives_once(inst, peer, room_id, bodies, txns)
