"""Crashes and outages: kill -9 and restart, a homeserver that goes away."""

from __future__ import annotations

import secrets
from collections import Counter
from typing import TYPE_CHECKING, Any

import pytest

from skiffyd.devenv.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from skiffyd.devenv.instance import SkiffyInstance
    from skiffyd.devenv.peer import Peer
    from skiffyd.devenv.synapse import Synapse
    from tests.conftest import Ready

pytestmark = pytest.mark.integration


def unique(label: str) -> str:
    return f"{label}-{secrets.token_hex(6)}"


def wait_sent(
    inst: SkiffyInstance, room_id: str, bodies: list[str], timeout: float = 60
) -> list[dict[str, Any]]:
    def probe() -> list[dict[str, Any]] | None:
        msgs = inst.messages(room_id, limit=500)
        sent = {m["body"] for m in msgs if m["status"] == "sent" and m["event_id"]}
        return msgs if set(bodies) <= sent else None

    return wait_for(
        probe,
        timeout=timeout,
        interval=0.2,
        what=f"{len(bodies)} sent messages in `skiffyd messages`",
        describe=inst.log_tail,
    )


def assert_once_each(bodies: list[str], seen: list[str], where: str) -> None:
    counts = Counter(b for b in seen if b in bodies)
    wrong = {b: counts[b] for b in bodies if counts[b] != 1}
    assert not wrong, f"{where}: not exactly once: {wrong}"


def test_kill9_and_restart_resumes_without_a_full_sync(ready: Ready) -> None:
    inst, peer = ready.daemon, ready.peer
    room_id = ready.shared_room("Crash room")
    before = [unique(f"before-{i}") for i in range(3)]
    for body in before:
        peer.send_text(room_id, body)
    wait_sent(inst, room_id, before)
    first = inst.status()

    # Queue messages and crash at once: each is in the outbox (written before
    # `send` returned) and may or may not have reached the server.
    crash = [unique(f"crash-{i}") for i in range(3)]
    txn_ids = [inst.send(room_id, body) for body in crash]
    inst.kill9()

    during = [unique(f"during-{i}") for i in range(3)]
    for body in during:
        peer.send_text(room_id, body)

    inst.start()
    status = inst.wait_state("ready", timeout=60)
    assert status["user_id"] == ready.account.user_id
    assert status["full_syncs"] == 0, "the restart did a full initial sync"
    # The instance id names the change log, which survived the crash: UIs
    # catch up by seq instead of reloading.
    assert status["instance_id"] == first["instance_id"]
    assert status["last_seq"] >= first["last_seq"]

    msgs = wait_sent(inst, room_id, before + during + crash)
    bodies = [m["body"] for m in msgs]
    assert_once_each(before + during + crash, bodies, "the daemon's cache")
    assert [b for b in bodies if b in before + during] == before + during
    assert {m["txn_id"] for m in msgs if m["body"] in crash} == set(txn_ids)

    wait_for(lambda: inst.status()["pending_outbox"] == 0, timeout=30, what="an empty outbox")
    seen = peer.wait_for_bodies(room_id, crash)
    assert_once_each(crash, [m.body for m in seen], "the peer's view")
    assert [m.body for m in seen if m.body in crash] == crash
    assert inst.status()["full_syncs"] == 0


def test_reads_and_sends_survive_a_homeserver_outage(
    own_synapse: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    make_peer: Callable[..., Peer],
) -> None:
    hs = own_synapse
    account = hs.register_account(f"skiffy-{secrets.token_hex(4)}", secrets.token_urlsafe(18))
    inst = make_instance()
    inst.login_ready(hs.base_url, account.user_id, account.password)
    peer = make_peer(hs=hs)
    room_id = peer.create_room("Outage room", "still here", invite=[account.user_id])
    inst.join_invited(room_id)
    before = [unique(f"before-{i}") for i in range(2)]
    for body in before:
        peer.send_text(room_id, body)
    wait_sent(inst, room_id, before)
    full_syncs = inst.status()["full_syncs"]

    hs.stop()
    inst.wait_state("offline", "connecting", timeout=60)

    # Reads come from the cache.
    assert any(r["room_id"] == room_id for r in inst.rooms())
    assert [m["body"] for m in inst.messages(room_id, limit=500) if m["body"] in before] == before

    # A send is accepted while the server is down, and shows as pending.
    body = unique("while-down")
    txn_id = inst.send(room_id, body)
    rows = [m for m in inst.messages(room_id, limit=500) if m["txn_id"] == txn_id]
    assert len(rows) == 1
    assert rows[0]["status"] == "pending"
    assert rows[0]["event_id"] is None
    assert inst.status()["pending_outbox"] >= 1

    hs.start()  # same port, same data
    inst.wait_state("ready", timeout=120)
    msgs = wait_sent(inst, room_id, [body], timeout=120)
    assert_once_each([body], [m["body"] for m in msgs], "the daemon's cache")
    wait_for(lambda: inst.status()["pending_outbox"] == 0, timeout=60, what="an empty outbox")

    seen = wait_for(
        lambda: peer.wait_for_bodies(room_id, [body], timeout=5),
        timeout=60,
        what="the peer to see the message sent while the server was down",
    )
    assert_once_each([body], [m.body for m in seen], "the peer's view")
    sent_row = next(m for m in msgs if m["body"] == body)
    assert sent_row["event_id"] == next(m.event_id for m in seen if m.body == body)

    # Sync resumed from its token, not from scratch.
    after = unique("after")
    peer.send_text(room_id, after)
    wait_sent(inst, room_id, [after])
    assert inst.status()["full_syncs"] == full_syncs
