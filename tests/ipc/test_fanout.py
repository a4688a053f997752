"""A slow subscriber loses frames and still sees every seq exactly once.

No clocks: the slow subscriber is held still (a threading.Event) while far
more is published than nng can buffer for it, so frames are dropped for it
by construction; time limits here are hang guards only.
"""

from __future__ import annotations

import threading
from typing import Any

import trio

from skiffyd.ipc.client import SUB_RECV_BUFFER, EventSubscriber
from skiffyd.ipc.server import PUB_SEND_BUFFER

# Frames published while the slow subscriber is held: several times what nng
# can hold for it (its receive queue, the daemon's per-subscriber send queue,
# the socket's kernel buffer: the frames are ~20 KB, so a few of them).
FRAMES = 4 * (SUB_RECV_BUFFER + PUB_SEND_BUFFER)
PER_FRAME = 50
LAST = 1 + FRAMES * PER_FRAME
HANG_GUARD = 30


class Consumer:
    """Iterates an EventSubscriber in a thread; ``hold`` stops it after the first event."""

    def __init__(self, paths: Any, *, hold: threading.Event | None = None) -> None:
        self.sub = EventSubscriber(paths, timeout=HANG_GUARD, poll_interval=0.05)
        self.hold = hold
        self.seqs: list[int] = []
        self.holding = threading.Event()

    def run(self) -> None:
        with self.sub:
            for event in self.sub.iter_events(since_seq=0, idle_timeout=HANG_GUARD):
                self.seqs.append(event.seq)
                if self.hold is not None and len(self.seqs) == 1:
                    self.holding.set()
                    self.hold.wait(HANG_GUARD)
                if event.seq == LAST:
                    return


async def test_slow_subscriber_recovers_every_seq_exactly_once(
    server: Any, fake: Any, paths: Any, until: Any
) -> None:
    release = threading.Event()
    fast = Consumer(paths)
    slow = Consumer(paths, hold=release)
    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, fast.run)
            nursery.start_soon(trio.to_thread.run_sync, slow.run)
            await until(lambda: server.statistics().subscribers == 2)

            server.publish(fake.append(1))
            await until(slow.holding.is_set)
            seq = 1
            for _ in range(FRAMES):
                server.publish(fake.append(*range(seq + 1, seq + PER_FRAME + 1)))
                seq += PER_FRAME
                # One frame per publish: let the publisher send it before the
                # next (it never waits for a subscriber, so this returns).
                with trio.fail_after(HANG_GUARD):
                    await trio.testing.wait_all_tasks_blocked()
                assert server.statistics().queued_events == 0
            assert seq == LAST
            # The fast subscriber gets everything while the slow one is held...
            await until(lambda: fast.seqs[-1:] == [LAST])
            assert slow.seqs == [1]
            # ...and the slow one, let go, recovers what nng dropped for it.
            release.set()
    finally:
        release.set()

    everything = list(range(1, LAST + 1))
    assert fast.seqs == everything
    assert slow.seqs == everything  # every seq, exactly once, in order
    stats = slow.sub.statistics()
    assert stats.caught_up_events > 0  # frames were dropped and filled in
    assert stats.published_events + stats.caught_up_events == LAST
    assert stats.resets == 0
    assert server.statistics().published_frames == FRAMES + 1
