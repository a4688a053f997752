"""Crash safety of the outbox: SIGKILL at random moments while it drains.

Hundreds of messages are queued across three rooms while the homeserver is
down (so the whole backlog is waiting when it comes back; queued over one IPC
connection, as ``skiffyd send`` would, but without a process each), then the daemon is
killed with SIGKILL at random moments of the drain and restarted, again and
again. Every message is written to the outbox before ``skiffyd send``
returns, and every attempt reuses its txnId, so the peer must see each one
exactly once, in order per room, however the kills fell.
"""

from __future__ import annotations

import os
import random
import secrets
import time
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from skiffyd.devenv.wait import wait_for

if TYPE_CHECKING:
    from collections.abc import Callable

    from skiffyd.devenv.instance import SkiffyInstance
    from skiffyd.devenv.peer import Peer
    from skiffyd.devenv.synapse import Synapse

pytestmark = pytest.mark.integration

ROOMS = 3
PER_ROOM = 100
KILLS = 5
#: The kill schedule's seed (``SKIFFY_CRASH_SEED`` to replay another one).
SEED = int(os.environ.get("SKIFFY_CRASH_SEED", "20240611"))


def test_sigkill_during_the_drain_loses_and_duplicates_nothing(
    own_synapse: Synapse,
    make_instance: Callable[..., SkiffyInstance],
    make_peer: Callable[..., Peer],
) -> None:
    hs = own_synapse
    account = hs.register_account(f"skiffy-{secrets.token_hex(4)}", secrets.token_urlsafe(18))
    inst = make_instance()
    inst.login_ready(hs.base_url, account.user_id, account.password)
    peer = make_peer(hs=hs)
    rooms = [peer.create_room(f"Crash {i}", invite=[account.user_id]) for i in range(ROOMS)]
    for room_id in rooms:
        inst.join_invited(room_id)

    # Queue the backlog while the server is away: nothing can drain yet.
    hs.stop()
    inst.wait_state("offline", "connecting", timeout=60)
    tag = secrets.token_hex(3)
    bodies = {
        room_id: [f"crash-{tag}-r{i}-{n:03d}" for n in range(PER_ROOM)]
        for i, room_id in enumerate(rooms)
    }

    # The first of each room through `skiffyd send`, the rest over one IPC
    # connection (the same Send command, without a process per message), round
    # robin across the rooms so the outbox interleaves them.
    txns = {room_id: [inst.send(room_id, bodies[room_id][0])] for room_id in rooms}
    for n in range(1, PER_ROOM, 10):
        for room_id in rooms:
            txns[room_id] += inst.send_many(room_id, bodies[room_id][n : n + 10])
    total = ROOMS * PER_ROOM
    assert inst.status()["pending_outbox"] == total

    hs.start()  # same port, same data
    wait_for(
        lambda: inst.status()["pending_outbox"] < total,
        timeout=90,
        interval=0.1,
        what="the drain to start",
        describe=inst.log_tail,
    )
    rng = random.Random(SEED)
    kills: list[int] = []  # the outbox size just before each kill
    for _ in range(KILLS):
        time.sleep(rng.uniform(0.0, 0.8))
        pending = inst.status()["pending_outbox"]
        if pending == 0:
            break
        inst.kill9()
        kills.append(pending)
        inst.start()
    print(f"seed {SEED}: killed with {kills} of {total} messages still in the outbox")
    assert len(kills) >= 2, f"the outbox drained after {len(kills)} kill(s): too fast to test"

    inst.wait_state("ready", timeout=120)
    wait_for(
        lambda: inst.status()["pending_outbox"] == 0,
        timeout=90,
        interval=0.3,
        what="an empty outbox after the crashes",
        describe=inst.log_tail,
    )
    assert inst.outbox() == []

    for room_id in rooms:
        seen = [m.body for m in peer.messages(room_id) if m.sender == account.user_id]
        counts = Counter(seen)
        wrong = {b: counts[b] for b in bodies[room_id] if counts[b] != 1}
        assert not wrong, f"{room_id}: not exactly once on the server: {sorted(wrong.items())[:5]}"
        assert seen == bodies[room_id], f"{room_id}: out of order on the server"

        rows = [m for m in inst.messages(room_id, limit=500) if m["body"] in set(bodies[room_id])]
        assert [m["body"] for m in rows] == bodies[room_id], f"{room_id}: the cache disagrees"
        assert [m["txn_id"] for m in rows] == txns[room_id]
        assert all(m["status"] == "sent" and m["event_id"] for m in rows)
