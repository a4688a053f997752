"""Emoji (SAS) device verification over IPC, with matrix-nio's own SAS as the other side."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import pytest

from skiffyd.devenv.wait import wait_for
from tests.integration.test_commands import error_code, until

if TYPE_CHECKING:
    from collections.abc import Callable

    from skiffyd.devenv.instance import SkiffyInstance
    from skiffyd.devenv.peer import Peer
    from tests.conftest import Ready

pytestmark = pytest.mark.integration


def verification(inst: SkiffyInstance, txn: str) -> dict[str, Any] | None:
    found = json.loads(inst.cli_ok("verify", "list", "--json"))
    return next((v for v in found if v["transaction_id"] == txn), None)


def in_state(inst: SkiffyInstance, txn: str, state: str) -> dict[str, Any]:
    row: dict[str, Any] = until(
        inst,
        f"verification {state}",
        lambda: (v := verification(inst, txn)) and v["state"] == state and v,
    )
    return row


def peer_emojis(peer: Peer, txn: str) -> list[tuple[str, str]]:
    def probe() -> list[tuple[str, str]] | None:
        _state, emojis, _ = peer.verification(txn)
        return emojis or None

    emojis: list[tuple[str, str]] = wait_for(
        probe, timeout=30, interval=0.3, what="the peer's emojis"
    )
    return emojis


def test_peer_starts_skiffyd_accepts_both_confirm(
    ready: Ready, make_peer: Callable[..., Peer]
) -> None:
    inst = ready.daemon
    peer = make_peer(encrypted=True)
    me, my_device = ready.account.user_id, inst.status()["device_id"]
    peer_device = peer.client.device_id
    # skiffyd has never seen the peer's device: it fetches its keys when the
    # start arrives, then handles it.
    tail = inst.tail("--since", "0")
    try:
        txn = peer.start_verification(me, my_device)
        asked = in_state(inst, txn, "requested")
        assert (asked["user_id"], asked["device_id"], asked["we_started"]) == (
            peer.user_id,
            peer_device,
            False,
        )
        inst.cli_ok("verify", "accept", txn)
        emojis = peer_emojis(peer, txn)
        ours = in_state(inst, txn, "keys_exchanged")
        # The same seven emojis on both screens: that is the whole point.
        assert [(e["emoji"], e["name"]) for e in ours["emojis"]] == emojis
        assert len(emojis) == 7
        assert len(ours["decimals"]) == 3

        inst.cli_ok("verify", "confirm", txn)
        peer.confirm_verification(txn)
        in_state(inst, txn, "verified")
        wait_for(
            lambda: peer.verification(txn)[2], timeout=30, interval=0.3, what="the peer verified"
        )
        assert peer.trusts(me, my_device)
        theirs = json.loads(inst.cli_ok("devices", peer.user_id or "", "--json"))
        assert [(d["device_id"], d["trust"]) for d in theirs] == [(peer_device, "verified")]

        states = [
            e["verification"]["state"]
            for e in tail.events()
            if e["type"] == "verification_updated" and e["verification"]["transaction_id"] == txn
        ]
        # Published as it went (the tail may have connected after the first).
        order = ["requested", "accepted", "keys_exchanged", "confirmed", "verified"]
        assert states == sorted(states, key=order.index)
        assert states[-1] == "verified"
        assert "keys_exchanged" in states
    finally:
        tail.stop()

    # Trust is kept across a restart (nio's store).
    inst.terminate()
    inst.start()
    theirs = json.loads(inst.cli_ok("devices", peer.user_id or "", "--json"))
    assert [(d["device_id"], d["trust"]) for d in theirs] == [(peer_device, "verified")]


def test_skiffyd_starts_then_cancels_when_the_emojis_differ(
    ready: Ready, make_peer: Callable[..., Peer]
) -> None:
    inst = ready.daemon
    peer = make_peer(encrypted=True)
    # nio (the peer) drops a start from a device it has no keys for.
    peer.learn_devices(ready.account.user_id)
    peer_device = peer.client.device_id
    started = json.loads(inst.cli_ok("verify", "start", peer.user_id or "", peer_device, "--json"))
    txn = started["transaction_id"]
    assert (started["state"], started["we_started"]) == ("started", True)

    def peer_has_it() -> bool:
        return peer.verification(txn)[0] != "unknown"

    wait_for(peer_has_it, timeout=30, interval=0.3, what="the peer to get the start")
    peer.accept_verification(txn)
    peer_emojis(peer, txn)  # the peer syncs: it gets skiffyd's key and sends its own
    in_state(inst, txn, "keys_exchanged")
    # Confirming twice, or accepting one's own start, is refused with a code.
    wrong = inst.cli("verify", "accept", txn)
    assert error_code(wrong, "accept our own start") == "SKIFFY_CRYPTO_VERIFICATION_STATE"
    inst.cli_ok("verify", "cancel", txn)
    canceled = in_state(inst, txn, "canceled")
    assert canceled["cancel_reason"]
    wait_for(
        lambda: peer.verification(txn)[0] == "canceled",
        timeout=30,
        interval=0.3,
        what="the peer to see the cancel",
    )
    assert not peer.verification(txn)[2]
    theirs = json.loads(inst.cli_ok("devices", peer.user_id or "", "--json"))
    assert [d["trust"] for d in theirs] == ["unverified"]
    unknown = inst.cli("verify", "confirm", "no-such-transaction")
    assert error_code(unknown, "an unknown txn") == "SKIFFY_CRYPTO_UNKNOWN_VERIFICATION"
    nodev = inst.cli("verify", "start", peer.user_id or "", "NOSUCHDEVICE")
    assert error_code(nodev, "an unknown device") == "SKIFFY_CRYPTO_UNKNOWN_DEVICE"


def test_a_request_first_verification_as_current_clients_begin_it(
    ready: Ready, make_peer: Callable[..., Peer]
) -> None:
    """request → ready → start → … → done: the flow Element uses (played by nio plus raw
    to-device messages, since nio itself starts without a request)."""
    inst = ready.daemon
    peer = make_peer(encrypted=True)
    me, my_device = ready.account.user_id, inst.status()["device_id"]
    peer.learn_devices(me)
    txn = peer.request_verification(me, my_device)
    asked = in_state(inst, txn, "requested")
    assert (asked["device_id"], asked["we_started"]) == (peer.client.device_id, False)
    inst.cli_ok("verify", "accept", txn)

    def got(kind: str) -> dict[str, Any] | None:
        peer.sync_keys()
        return next(
            (
                e
                for e in peer.to_device_seen
                if e.get("type") == kind and e["content"].get("transaction_id") == txn
            ),
            None,
        )

    ready_event: dict[str, Any] = wait_for(
        lambda: got("m.key.verification.ready"), timeout=30, interval=0.3, what="ready"
    )
    assert ready_event["content"]["from_device"] == my_device
    assert ready_event["content"]["methods"] == ["m.sas.v1"]
    # The requester starts; skiffyd accepts that start on its own (the user
    # accepted the request already).
    peer.start_requested(me, my_device, txn)
    emojis = peer_emojis(peer, txn)
    ours = in_state(inst, txn, "keys_exchanged")
    assert [(e["emoji"], e["name"]) for e in ours["emojis"]] == emojis
    inst.cli_ok("verify", "confirm", txn)
    peer.confirm_verification(txn)
    in_state(inst, txn, "verified")
    wait_for(lambda: got("m.key.verification.done"), timeout=30, interval=0.3, what="done")
    assert peer.verification(txn)[2]


def test_a_request_can_be_declined(ready: Ready, make_peer: Callable[..., Peer]) -> None:
    inst = ready.daemon
    peer = make_peer(encrypted=True)
    me, my_device = ready.account.user_id, inst.status()["device_id"]
    peer.learn_devices(me)
    txn = peer.request_verification(me, my_device)
    in_state(inst, txn, "requested")
    inst.cli_ok("verify", "cancel", txn)
    assert in_state(inst, txn, "canceled")["cancel_reason"]
    wait_for(
        lambda: peer.verification(txn)[0] == "canceled",
        timeout=30,
        interval=0.3,
        what="the peer to get the cancel",
    )
    again = inst.cli("verify", "accept", txn)
    assert error_code(again, "accept a declined request") == "SKIFFY_CRYPTO_VERIFICATION_STATE"
