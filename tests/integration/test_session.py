"""The session lifecycle against a real Synapse: refresh under load, revocation."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import pytest

from skiffyd.devenv.peer import Peer
from skiffyd.devenv.procs import clean_env
from skiffyd.devenv.synapse import Synapse
from skiffyd.devenv.wait import wait_for
from tests.integration.test_commands import error_code

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from skiffyd.devenv.instance import SkiffyInstance
    from skiffyd.devenv.secret_service import SecretService

pytestmark = pytest.mark.integration


@pytest.fixture
def short_tokens(tmp_path: Path) -> Iterator[Synapse]:
    """A Synapse whose refreshable access tokens live 3 seconds."""
    hs = Synapse(tmp_path / "synapse", extra_config={"refreshable_access_token_lifetime": "3s"})
    hs.start()
    yield hs
    hs.stop()


def test_refresh_under_load_never_fails_a_command(
    short_tokens: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    make_peer: Callable[..., Peer],
) -> None:
    hs = short_tokens
    account = hs.register_account(f"fresh-{secrets.token_hex(3)}", secrets.token_urlsafe(18))
    inst = make_instance()
    status = inst.login_ready(hs.base_url, account.user_id, account.password)
    assert status["uses_refresh_token"] is True
    peer = make_peer(hs=hs)
    room_id = peer.create_room("Refresh", None, invite=[account.user_id])
    inst.join_invited(room_id)

    sent: list[str] = []
    failures: list[str] = []

    def busy_until_refreshed() -> bool:
        body = f"tick-{len(sent)}-{secrets.token_hex(3)}"
        for args in (("send", room_id, body), ("rooms", "--json"), ("members", room_id, "--json")):
            r = inst.cli(*args)
            if r.returncode != 0:
                failures.append(r.stderr.strip())
        sent.append(body)
        st = inst.status()
        if st["state"] == "logged_out":
            failures.append(f"logged out: {st['last_error']}")
            return True
        return st["token_refreshes"] >= 4

    wait_for(busy_until_refreshed, timeout=120, interval=0.25, what="four token refreshes")
    assert failures == []
    seen = peer.wait_for_bodies(room_id, sent, timeout=60)
    bodies = [m.body for m in seen]
    assert all(bodies.count(b) == 1 for b in sent)
    log = inst.log_path.read_text()
    refreshed = [json.loads(line) for line in log.splitlines() if '"session.refreshed"' in line]
    assert len(refreshed) == inst.status()["token_refreshes"]
    assert "session.refresh_refused" not in log
    assert inst.status()["state"] == "ready"


def test_revoked_elsewhere_clears_credentials(
    synapse: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    make_user: Callable[..., object],
    secret_service: SecretService,
) -> None:
    account = make_user("revoked")
    inst = make_instance()
    status = inst.login_ready(synapse.base_url, account.user_id, account.password)  # type: ignore[attr-defined]
    device = status["device_id"]
    inst.cli_ok("create", "--name", "warm-up")
    # --since 0 replays the log after subscribing: once the replay shows the
    # room, the subscription is live for ephemeral events too.
    with inst.tail("--since", "0") as tail:
        wait_for(
            lambda: any(e.get("type") == "room_updated" for e in tail.events()),
            timeout=30,
            what="the tail to be subscribed",
        )
        delete_device(synapse, account.user_id, account.password, device)  # type: ignore[attr-defined]
        st = inst.wait_state("logged_out", timeout=60)
        assert "log in again" in (st["last_error"] or "")
        assert st["user_id"] is None
        expired = wait_for(
            lambda: [e for e in tail.events() if e.get("type") == "session_expired"] or None,
            timeout=30,
            what="a session_expired event",
        )
        assert expired[0]["revoked"] is True
    # The keyring item is gone.
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            f"from skiffyd import credentials; print(credentials.load({account.user_id!r}))",
        ],  # type: ignore[attr-defined]
        env=clean_env(**secret_service.env()),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert check.returncode == 0, check.stderr[-500:]
    assert check.stdout.strip() == "None"
    r = inst.cli("rooms")
    assert r.returncode != 0
    assert "SKIFFY_SESSION_NOT_LOGGED_IN" in r.stderr


def delete_device(hs: Synapse, user_id: str, password: str, device: str) -> None:
    """Log ``device`` out from another login of the account (as a user does
    from another client's device list)."""
    other = Peer.logged_in(hs.base_url, user_id, password)
    try:
        auth = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user_id},
            "password": password,
        }
        other._run(other.client.delete_devices([device], auth=auth))
    finally:
        other.close()


def queue_then_revoke(
    hs: Synapse, inst: SkiffyInstance, account: Any, device: str, room_id: str, bodies: list[str]
) -> list[str]:
    """Queue ``bodies`` in ``room_id`` while the homeserver is down, stop the
    daemon, and log its ``device`` out from another login: the next start
    finds a revoked session with those messages kept. Their txn ids."""
    hs.stop()
    inst.wait_state("offline", "connecting", timeout=60)
    txns = [inst.send(room_id, body) for body in bodies]
    assert inst.status()["pending_outbox"] == len(bodies)
    inst.terminate()
    hs.start()
    delete_device(hs, account.user_id, account.password, device)
    return txns


def retry_first_then_each_arrives_once(
    inst: SkiffyInstance, peer: Peer, room_id: str, bodies: list[str], txns: list[str]
) -> None:
    """Retry the carried item in doubt (the first); then the peer sees every
    one of ``bodies`` exactly once, in order, and the outbox drains."""
    inst.cli_ok("outbox", "retry", txns[0])
    seen = [m.body for m in peer.wait_for_bodies(room_id, bodies, timeout=60)]
    assert [b for b in seen if b in bodies] == bodies  # each once, in order
    wait_for(lambda: inst.outbox() == [], timeout=30, what="the outbox to drain")
    again = [m.body for m in peer.messages(room_id)]
    assert [b for b in again if b in bodies] == bodies


def skiffyd_devices(synapse: Synapse, user_id: str, password: str) -> set[str]:
    """The account's devices named as skiffyd names its own, as the
    homeserver lists them (seen from another login of the account)."""
    from nio import DevicesResponse

    from skiffyd.matrix.session import DEVICE_DISPLAY_NAME

    other = Peer.logged_in(synapse.base_url, user_id, password)
    try:
        listed = other._run(other.client.devices())
    finally:
        other.close()
    assert isinstance(listed, DevicesResponse), listed
    return {d.id for d in listed.devices if d.display_name == DEVICE_DISPLAY_NAME}


def test_a_revoked_sessions_outbox_is_carried_into_the_next_login(
    own_synapse: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    make_peer: Callable[..., Peer],
) -> None:
    """Messages queued while the homeserver was away, then the device logged
    out elsewhere before they could go: nothing is lost. The next login (a
    new device) takes them over; the oldest, which the old device may have
    delivered, waits for the user; after a retry each arrives exactly once,
    in order."""
    hs = own_synapse
    account = hs.register_account(f"carry-{secrets.token_hex(3)}", secrets.token_urlsafe(18))
    inst = make_instance()
    device = inst.login_ready(hs.base_url, account.user_id, account.password)["device_id"]
    peer = make_peer(hs=hs)
    room_id = peer.create_room("Carry", None, invite=[account.user_id])
    inst.join_invited(room_id)

    tag = secrets.token_hex(3)
    bodies = [f"carried-{tag}-{n}" for n in range(3)]
    txns = queue_then_revoke(hs, inst, account, device, room_id, bodies)

    # The stored session is refused: logged out, the outbox kept.
    inst.start()
    st = inst.wait_state("logged_out", timeout=60)
    assert "log in again" in (st["last_error"] or "")
    assert "3 unsent outbox items kept: the account's next login sends them" in (
        st["last_error"] or ""
    )
    assert any(r.get("event") == "session.outbox_kept" for r in inst.log_records())
    # A restart still says so (nothing resumes the account, a note names it).
    note = inst.state_home / "skiffyd" / "kept-outbox"
    assert json.loads(note.read_text())["items"] == 3
    inst.restart()
    st = wait_for(
        lambda: (lambda s: s if s["last_error"] else None)(inst.status()),
        timeout=30,
        what="status to give a reason",
    )
    assert st["state"] == "logged_out"
    assert "3 unsent outbox items kept: the account's next login sends them" in st["last_error"]
    kept = {"user_id": account.user_id, "items": 3}
    assert st["kept_outbox"] == kept
    # Forgetting the account would lose them: refused (read with the kept key).
    r = inst.cli("forget-account", account.user_id)
    assert error_code(r, "forget-account with a kept outbox") == "SKIFFY_OUTBOX_NOT_EMPTY"
    assert note.exists()
    # Another account in between: status keeps saying whose messages wait,
    # and that account's login and logout leave them alone.
    other = hs.register_account(f"between-{secrets.token_hex(3)}", secrets.token_urlsafe(18))
    assert inst.login_ready(hs.base_url, other.user_id, other.password)["kept_outbox"] == kept
    shown = inst.cli_ok("status")
    assert f"kept:      3 unsent of {account.user_id}, for its next login" in shown
    inst.cli_ok("logout")
    assert inst.status()["kept_outbox"] == kept
    assert json.loads(note.read_text()) == kept

    new_device = inst.login_ready(hs.base_url, account.user_id, account.password)["device_id"]
    assert new_device != device
    assert not note.exists()
    assert inst.status()["kept_outbox"] is None
    assert "kept:" not in inst.cli_ok("status")
    items = wait_for(
        lambda: (lambda o: o if len(o) == 3 else None)(inst.outbox()),
        timeout=60,
        what="the carried items in the outbox",
        describe=inst.log_tail,
    )
    assert [(i["txn_id"], i["state"]) for i in items] == [
        (txns[0], "failed"),
        (txns[1], "queued"),
        (txns[2], "queued"),
    ]
    assert "carried over" in (items[0]["last_error"] or "")
    # Logging out now would lose them: refused, unless asked for.
    r = inst.cli("logout")
    assert error_code(r, "logout with a full outbox") == "SKIFFY_OUTBOX_NOT_EMPTY"
    assert inst.status()["state"] == "ready"
    echoes = [m for m in inst.messages(room_id) if m.get("txn_id") in txns]
    assert [(m["body"], m["status"]) for m in echoes] == [
        (bodies[0], "failed"),
        (bodies[1], "pending"),
        (bodies[2], "pending"),
    ]

    retry_first_then_each_arrives_once(inst, peer, room_id, bodies, txns)

    # One more, queued offline: `logout --discard-outbox` is the way to drop it.
    hs.stop()
    inst.wait_state("offline", "connecting", timeout=60)
    inst.send(room_id, f"discarded-{tag}")
    assert error_code(inst.cli("logout"), "logout") == "SKIFFY_OUTBOX_NOT_EMPTY"
    inst.cli_ok("logout", "--discard-outbox")
    assert inst.status()["state"] == "logged_out"
    assert any(r.get("event") == "session.outbox_discarded" for r in inst.log_records())


def test_forget_account_removes_what_a_logout_kept(
    synapse: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    make_user: Callable[..., object],
    secret_service: SecretService,
) -> None:
    """`forget-account` removes a kept cache (`logout --keep-cache`), and is
    refused for the account logged in now."""
    account = make_user("forget")
    user_id = account.user_id  # type: ignore[attr-defined]
    inst = make_instance()
    inst.login_ready(synapse.base_url, user_id, account.password)  # type: ignore[attr-defined]
    r = inst.cli("forget-account", user_id)
    assert error_code(r, "forget the account logged in") == "SKIFFY_SESSION_ALREADY_LOGGED_IN"
    r = inst.cli("forget-account", "not-a-user-id")
    assert error_code(r, "forget a malformed id") == "SKIFFY_IPC_INVALID_ARGUMENT"
    assert inst.status()["state"] == "ready"

    inst.cli_ok("logout", "--keep-cache")
    assert list(inst.data_home.rglob("cache.db"))
    assert inst.cli_ok("forget-account", user_id).strip() == "forgotten"
    assert list(inst.data_home.rglob("cache.db")) == []
    assert inst.cli_ok("forget-account", user_id).strip() == "nothing was kept for that account"
    assert any(r.get("event") == "session.account_forgotten" for r in inst.log_records())


def test_a_new_login_logs_out_the_device_it_replaces(
    synapse: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    make_user: Callable[..., object],
    secret_service: SecretService,
) -> None:
    """A stored session that cannot start (here its cache no longer opens
    with the stored key) is replaced by the next login, and its device,
    whose token still works, is logged out on the homeserver: the account
    keeps one skiffyd device, not one per login."""
    account = make_user("replaced")
    user_id, password = account.user_id, account.password  # type: ignore[attr-defined]
    inst = make_instance()
    first = inst.login_ready(synapse.base_url, user_id, password)["device_id"]
    inst.terminate()
    (cache,) = inst.data_home.rglob("cache.db")
    for stale in cache.parent.glob("cache.db-*"):  # the WAL, with the last commits
        stale.unlink()
    cache.write_bytes(secrets.token_bytes(cache.stat().st_size))

    inst.start()
    st = inst.wait_state("logged_out", timeout=60)
    assert "cannot be decrypted" in (st["last_error"] or "")
    assert skiffyd_devices(synapse, user_id, password) == {first}

    second = inst.login_ready(synapse.base_url, user_id, password)["device_id"]
    assert second != first
    wait_for(
        lambda: skiffyd_devices(synapse, user_id, password) == {second},
        timeout=30,
        what="the replaced device to be logged out",
    )
    assert any(
        r.get("event") == "session.server_logout" and r.get("of") == "replaced_device"
        for r in inst.log_records()
    )
