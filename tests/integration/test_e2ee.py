"""End-to-end encrypted rooms against Synapse, with matrix-nio's own Olm machine as the peer.

The peer is a nio ``AsyncClient`` with encryption on (its own crypto store):
what skiffyd sends must be readable by it, and what it sends must be
readable by skiffyd; the server only ever sees ``m.room.encrypted``.
"""

from __future__ import annotations

import json
import secrets
import stat
from typing import TYPE_CHECKING, Any

import pytest

from skiffyd.core import key_export
from skiffyd.devenv.peer import q
from skiffyd.devenv.wait import wait_for
from tests.conftest import Ready
from tests.integration.test_commands import (
    daemon_room,
    error_code,
    peer_events,
    room_row,
    rows,
    unique,
    until,
    wait_outbox_empty,
)
from tests.integration.test_session import queue_then_revoke

if TYPE_CHECKING:
    from collections.abc import Callable

    from skiffyd.devenv.instance import SkiffyInstance
    from skiffyd.devenv.peer import Peer
    from skiffyd.devenv.synapse import Synapse

pytestmark = pytest.mark.integration


def encrypted_room(ready: Ready, peer: Peer) -> str:
    """An encrypted room skiffyd created, with ``peer`` joined."""
    room_id = daemon_room(
        ready, "--name", unique("Secret"), "--encrypted", "--invite", peer.user_id or ""
    )
    wait_for(lambda: room_id in peer.invites(), timeout=30, interval=0.2, what="the peer's invite")
    peer.join(room_id)
    until(
        ready.daemon,
        "the room encrypted in the cache",
        lambda: (r := room_row(ready.daemon, room_id)) and r["is_encrypted"] is True,
    )
    return room_id


def row_with(inst: SkiffyInstance, room_id: str, event_id: str) -> dict[str, Any] | None:
    return next((m for m in rows(inst, room_id) if m["event_id"] == event_id), None)


def decrypted(inst: SkiffyInstance, room_id: str, event_id: str, body: str) -> dict[str, Any]:
    row: dict[str, Any] = until(
        inst,
        "the event decrypted in the cache",
        lambda: (m := row_with(inst, room_id, event_id)) and m["body"] == body and m,
    )
    return row


def test_encrypted_room_both_ways(ready: Ready, make_peer: Callable[..., Peer]) -> None:
    inst = ready.daemon
    peer = make_peer(encrypted=True)
    room_id = encrypted_room(ready, peer)
    user = ready.account.user_id

    # skiffyd → peer: the server sees ciphertext only; nio reads the text.
    ours = [unique("from-skiffyd") for _ in range(3)]
    for body in ours:
        inst.send(room_id, body)
    wait_outbox_empty(inst)
    on_server = [e for e in peer.events(room_id) if e.get("sender") == user]
    kinds = {e["type"] for e in on_server if "state_key" not in e}
    assert kinds == {"m.room.encrypted"}, kinds
    for event in on_server:
        assert not any(body in str(event) for body in ours), "plaintext reached the server"
    wait_for(
        lambda: [m.body for m in peer.messages(room_id) if m.sender == user] == ours,
        timeout=30,
        interval=0.5,
        what="the peer to decrypt skiffyd's messages, in order",
    )
    for m in rows(inst, room_id):
        if m["body"] in ours:
            assert (m["encrypted"], m["status"]) == (True, "sent"), m

    # peer → skiffyd: decrypted into the cache and the JSON, marked encrypted.
    text = unique("from-peer")
    event_id = peer.send_text(room_id, text)
    row = decrypted(inst, room_id, event_id, text)
    assert row["encrypted"] is True
    assert row["type"] == "m.room.message"
    assert row["msgtype"] == "m.text"
    raw = peer.event(room_id, event_id)
    assert raw["type"] == "m.room.encrypted"

    # Relations inside encrypted events: an edit, a reaction, a reply.
    peer.edit(room_id, event_id, text + " (edited)")
    peer.react(room_id, event_id, "👍")
    reply = peer.reply(room_id, event_id, unique("reply"))
    until(
        inst,
        "the encrypted edit and reaction applied",
        lambda: (
            (m := row_with(inst, room_id, event_id))
            and m["edited"]
            and m["body"] == text + " (edited)"
            and m["reactions"] == {"👍": 1}
        ),
    )
    reply_row: dict[str, Any] = until(
        inst, "the encrypted reply", lambda: row_with(inst, room_id, reply)
    )
    assert reply_row["reply_to"] == event_id
    assert reply_row["encrypted"] is True

    # skiffyd's own reply and reaction go out encrypted too.
    inst.cli_ok("react", room_id, event_id, "🎉")
    wait_outbox_empty(inst)
    reactions = peer_events(
        peer,
        room_id,
        lambda e: e.get("sender") == user and e["type"] == "m.room.encrypted",
        "skiffyd's encrypted events",
    )
    assert len(reactions) == len(ours) + 1


def test_a_late_key_turns_unable_to_decrypt_into_the_message(
    ready: Ready, make_peer: Callable[..., Peer]
) -> None:
    inst = ready.daemon
    peer = make_peer(encrypted=True)
    room_id = encrypted_room(ready, peer)
    user = ready.account.user_id
    tail = inst.tail("--since", "0")
    try:
        # The peer keeps the room key from skiffyd's device at first.
        peer.withhold_keys_from(user, room_id)
        secret = unique("late")
        event_id = peer.send_text(room_id, secret)
        edit_id = peer.edit(room_id, event_id, secret + " (edited)")
        utd: dict[str, Any] = until(
            inst, "the message as unable to decrypt", lambda: row_with(inst, room_id, event_id)
        )
        assert utd["type"] == "m.room.encrypted"
        assert utd["encrypted"] is True
        assert utd["body"] == "** unable to decrypt **"
        assert secret not in str(utd)
        # The edit cannot be told from a message yet: its own row, for now.
        until(inst, "the edit as a row", lambda: row_with(inst, room_id, edit_id))

        peer.send_withheld_key(user, room_id)
        row = decrypted(inst, room_id, event_id, secret + " (edited)")
        assert row["type"] == "m.room.message"
        assert row["edited"] is True
        assert row["encrypted"] is True
        until(
            inst,
            "the edit's own row gone",
            lambda: row_with(inst, room_id, edit_id) is None,
        )

        def published() -> bool:
            events = tail.events()
            updated = any(
                e["type"] == "message_updated"
                and e["message"]["event_id"] == event_id
                and e["message"]["body"] == secret + " (edited)"
                for e in events
            )
            removed = any(
                e["type"] == "message_removed" and e.get("event_id") == edit_id for e in events
            )
            return updated and removed

        wait_for(published, timeout=30, interval=0.2, what="the change published to `tail`")
    finally:
        tail.stop()


def test_keys_survive_a_kill_and_sends_stay_exactly_once(
    ready: Ready, make_peer: Callable[..., Peer]
) -> None:
    inst = ready.daemon
    peer = make_peer(encrypted=True)
    room_id = encrypted_room(ready, peer)
    user = ready.account.user_id
    before = unique("before-kill")
    event_id = peer.send_text(room_id, before)
    decrypted(inst, room_id, event_id, before)

    bodies = [unique(f"queued-{i}") for i in range(20)]
    for body in bodies:
        inst.send(room_id, body)
    inst.kill9()  # mid-drain at best
    inst.start()
    wait_outbox_empty(inst, timeout=120)

    # Old messages still read (the Olm/Megolm state is on disk), new ones too.
    assert row_with(inst, room_id, event_id)["body"] == before  # type: ignore[index]
    after = unique("after-kill")
    after_id = peer.send_text(room_id, after)
    decrypted(inst, room_id, after_id, after)

    def all_read() -> bool:
        got = [m.body for m in peer.messages(room_id) if m.sender == user]
        return set(bodies) <= set(got)

    wait_for(all_read, timeout=60, interval=0.5, what="the peer to read every queued message")
    got = [m.body for m in peer.messages(room_id) if m.sender == user]
    assert got == bodies, "each message exactly once, in order"


def test_devices_and_keys_export_then_import_on_a_new_device(
    ready: Ready, make_peer: Callable[..., Peer], make_instance: Callable[..., SkiffyInstance]
) -> None:
    inst = ready.daemon
    peer = make_peer(encrypted=True)
    room_id = encrypted_room(ready, peer)
    user = ready.account.user_id
    text = unique("kept-by-export")
    event_id = peer.send_text(room_id, text)
    decrypted(inst, room_id, event_id, text)

    # Devices: the daemon's own (trusted: it is this device), the peer's
    # (its real keys, not verified).
    own = json.loads(inst.cli_ok("devices", "--json"))
    status = inst.status()
    this = [d for d in own if d["own"]]
    assert [d["device_id"] for d in this] == [status["device_id"]]
    assert this[0]["ed25519"] == status["device_fingerprint"]
    assert this[0]["trust"] == "verified"
    theirs = json.loads(inst.cli_ok("devices", peer.user_id or "", "--json"))
    peer_keys = peer.client.olm.account.identity_keys
    assert [(d["device_id"], d["ed25519"], d["trust"]) for d in theirs] == [
        (peer.client.device_id, peer_keys["ed25519"], "unverified")
    ]

    # Export: Element's armoured format (tests/core/test_key_export.py: nio reads it), private.
    passphrase = secrets.token_urlsafe(12)
    key_file = inst.root / "keys.txt"
    inst.cli_ok("keys", "export", str(key_file), input=passphrase + "\n")
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert key_file.read_text().startswith("-----BEGIN MEGOLM SESSION DATA-----")
    exported = json.loads(key_export.decrypt(key_file.read_text(), passphrase))
    assert room_id in {s["room_id"] for s in exported}
    wrong = inst.cli("keys", "import", str(key_file), input="not-the-passphrase\n")
    assert error_code(wrong, "import with a wrong passphrase") == "SKIFFY_CRYPTO_BAD_KEY_FILE"

    # A new device of the same account cannot read the old message ...
    inst.terminate()
    second = make_instance()
    second.login_ready(ready.synapse.base_url, user, ready.account.password)
    utd: dict[str, Any] = until(
        second, "the old message, unreadable", lambda: row_with(second, room_id, event_id)
    )
    assert utd["body"] == "** unable to decrypt **"
    # ... until the keys are imported.
    out = second.cli_ok("keys", "import", str(key_file), input=passphrase + "\n")
    assert "messages read" in out
    decrypted(second, room_id, event_id, text)


def verify_mutually(inst: SkiffyInstance, own: Peer, user: str) -> None:
    """The account's other device (nio) and skiffyd verify each other by emojis."""
    from tests.integration.test_verification import in_state, peer_emojis

    txn = own.start_verification(user, inst.status()["device_id"])
    in_state(inst, txn, "requested")
    inst.cli_ok("verify", "accept", txn)
    peer_emojis(own, txn)
    in_state(inst, txn, "keys_exchanged")
    inst.cli_ok("verify", "confirm", txn)
    own.confirm_verification(txn)
    in_state(inst, txn, "verified")
    wait_for(lambda: own.verification(txn)[2], timeout=30, interval=0.3, what="nio verified")


def test_own_verified_devices_share_keys_both_ways(
    ready: Ready, make_peer: Callable[..., Peer]
) -> None:
    inst = ready.daemon
    user = ready.account.user_id
    peer = make_peer(encrypted=True)
    own = make_peer(account=ready.account, encrypted=True)  # the account's second device
    room_id = encrypted_room(ready, peer)
    verify_mutually(inst, own, user)
    my_device = inst.status()["device_id"]
    own_device = own.client.device_id

    # A message whose key went only to the other device: skiffyd asks its own
    # devices, the verified one answers with a forwarded key.
    peer.withhold_keys_from(user, room_id, my_device)
    first = unique("forwarded-to-skiffyd")
    first_id = peer.send_text(room_id, first)
    until(inst, "the message, unreadable", lambda: row_with(inst, room_id, first_id))

    def read_by_skiffyd() -> bool:
        own.sync_keys()  # the request arrives; nio answers it
        row = row_with(inst, room_id, first_id)
        return bool(row and row["body"] == first)

    wait_for(read_by_skiffyd, timeout=60, interval=0.5, what="the forwarded key read")

    # The other way: a key only skiffyd got; the other device asks for it.
    peer.withhold_keys_from(user, room_id, own_device)
    second = unique("forwarded-by-skiffyd")
    second_id = peer.send_text(room_id, second)
    decrypted(inst, room_id, second_id, second)
    own.sync_keys()
    own.request_key(room_id, second_id)

    def read_by_own() -> bool:
        return second in [m.body for m in own.messages(room_id)]

    wait_for(read_by_own, timeout=60, interval=0.5, what="skiffyd to answer the key request")


def test_join_a_room_someone_else_encrypted_and_send_at_once(
    ready: Ready, make_peer: Callable[..., Peer]
) -> None:
    inst = ready.daemon
    peer = make_peer(encrypted=True)
    user = ready.account.user_id
    room_id = peer.create_room_with(
        {
            "preset": "public_chat",  # joinable by anyone: no invite state to learn from
            "initial_state": [
                {
                    "type": "m.room.encryption",
                    "state_key": "",
                    "content": {"algorithm": "m.megolm.v1.aes-sha2"},
                }
            ],
        }
    )
    inst.cli_ok("join", room_id)
    # At once: before any sync could have told the cache of the encryption.
    secret = unique("right-after-join")
    inst.send(room_id, secret)
    wait_outbox_empty(inst)
    ours = [e for e in peer.events(room_id) if e.get("sender") == user and "state_key" not in e]
    assert [e["type"] for e in ours] == ["m.room.encrypted"]
    assert secret not in json.dumps(ours)
    wait_for(
        lambda: secret in [m.body for m in peer.messages(room_id)],
        timeout=30,
        interval=0.5,
        what="the peer to read it",
    )
    text = unique("to-the-joiner")
    decrypted(inst, room_id, peer.send_text(room_id, text), text)


def test_encrypted_history_backfills_decrypted(
    ready: Ready, make_peer: Callable[..., Peer]
) -> None:
    inst = ready.daemon
    peer = make_peer(encrypted=True)
    room_id = encrypted_room(ready, peer)
    inst.terminate()  # while it is away, more than one sync's timeline arrives
    bodies = [unique(f"old-{i:02d}") for i in range(70)]
    for body in bodies:
        peer.send_text(room_id, body)
    inst.start()
    until(
        inst, "the newest message", lambda: bodies[-1] in {m["body"] for m in rows(inst, room_id)}
    )
    assert bodies[0] not in {m["body"] for m in rows(inst, room_id)}, "no gap: nothing to test"
    inst.cli_ok("backfill", room_id, "--limit", "500")
    shown = [m["body"] for m in rows(inst, room_id) if m["body"].startswith("old-")]
    assert shown == bodies
    assert all(m["encrypted"] for m in rows(inst, room_id) if m["body"] in bodies)


def test_a_member_leaving_rotates_the_room_key(
    ready: Ready, make_peer: Callable[..., Peer]
) -> None:
    inst = ready.daemon
    user = ready.account.user_id
    peer = make_peer(encrypted=True)
    other = make_peer(encrypted=True)
    room_id = encrypted_room(ready, peer)
    inst.cli_ok("invite", room_id, other.user_id or "")
    wait_for(lambda: room_id in other.invites(), timeout=30, interval=0.2, what="the invite")
    other.join(room_id)

    def sessions() -> list[str]:
        return [
            e["content"]["session_id"]
            for e in peer.events(room_id)
            if e.get("sender") == user and e["type"] == "m.room.encrypted"
        ]

    until(
        inst,
        "the other member in the cache",
        lambda: any(
            m["user_id"] == other.user_id and m["membership"] == "join"
            for m in json.loads(inst.cli_ok("members", room_id, "--json"))
        ),
    )
    inst.send(room_id, unique("both-read-this"))
    inst.send(room_id, unique("both-read-this-too"))
    wait_outbox_empty(inst)
    first, second = sessions()
    assert first == second  # one session while nobody leaves
    other.request_ok("POST", f"/_matrix/client/v3/rooms/{q(room_id)}/leave", {})
    until(
        inst,
        "the leave in the cache",
        lambda: any(
            m["user_id"] == other.user_id and m["membership"] == "leave"
            for m in json.loads(inst.cli_ok("members", room_id, "--json", "--all"))
        ),
    )
    after = unique("only-peer-reads-this")
    inst.send(room_id, after)
    wait_outbox_empty(inst)
    assert sessions()[-1] != first, "the session was not rotated after the leave"
    wait_for(
        lambda: after in [m.body for m in peer.messages(room_id)],
        timeout=30,
        interval=0.5,
        what="the remaining member to read the new session",
    )


def test_a_crypto_store_that_does_not_load_leaves_reads_working(ready: Ready) -> None:
    inst = ready.daemon
    room_id = ready.shared_room("Still readable")
    text = unique("readable")
    event_id = ready.peer.send_text(room_id, text)
    until(inst, "the message", lambda: row_with(inst, room_id, event_id))
    inst.terminate()
    stores = [p for p in inst.data_home.rglob("crypto.db") if p.is_file()]
    assert len(stores) == 1
    stores[0].write_bytes(b"this is not a database" * 100)
    inst.start()
    status = until(
        inst, "the session offline", lambda: (st := inst.status())["state"] == "offline" and st
    )
    assert "encryption store" in (status["last_error"] or "")
    assert row_with(inst, room_id, event_id)["body"] == text  # type: ignore[index]
    r = inst.cli("devices")
    assert error_code(r, "devices without a crypto store") == "SKIFFY_CRYPTO_NOT_READY"


def test_a_revoked_sessions_queue_goes_out_encrypted_from_the_next_device(
    own_synapse: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    make_peer: Callable[..., Peer],
) -> None:
    """Messages for an encrypted room, queued offline and left by a revoked
    device, are carried into the next login and sent by the new device,
    encrypted with its own keys: the server sees ciphertext only, the peer
    reads each once, in order."""
    hs = own_synapse
    account = hs.register_account(unique("carry"), secrets.token_urlsafe(18))
    inst = make_instance()
    device = inst.login_ready(hs.base_url, account.user_id, account.password)["device_id"]
    peer = make_peer(hs=hs, encrypted=True)
    room_id = encrypted_room(Ready(daemon=inst, account=account, synapse=hs, peer=peer), peer)

    bodies = [unique(f"carried-{i}") for i in range(3)]
    txns = queue_then_revoke(hs, inst, account, device, room_id, bodies)
    inst.start()
    inst.wait_state("logged_out", timeout=60)

    inst.login_ready(hs.base_url, account.user_id, account.password)
    until(inst, "the carried items", lambda: len(inst.outbox()) == 3, timeout=60)
    inst.cli_ok("outbox", "retry", txns[0])
    wait_outbox_empty(inst)

    user = account.user_id
    on_server = [e for e in peer.events(room_id) if e.get("sender") == user]
    assert {e["type"] for e in on_server if "state_key" not in e} == {"m.room.encrypted"}
    for event in on_server:
        assert not any(body in str(event) for body in bodies), "plaintext reached the server"
    wait_for(
        lambda: set(bodies) <= {m.body for m in peer.messages(room_id) if m.sender == user},
        timeout=60,
        interval=0.5,
        what="the peer to decrypt the carried messages",
    )
    got = [m.body for m in peer.messages(room_id) if m.sender == user and m.body in bodies]
    assert got == bodies, "each carried message exactly once, in order"
