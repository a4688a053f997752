"""DaemonClient and EventSubscriber against a real IpcServer."""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any

import pytest
import trio

import ipc_schema as s
from skiffyd.errors import DaemonNotRunningError, SkiffyError
from skiffyd.ipc.client import DaemonClient, DaemonTimeoutError, EventSubscriber

if TYPE_CHECKING:
    from collections.abc import Callable

# A hang guard for blocking calls that must fail fast; not a measurement.
FAST = 10


async def _raises_in_thread(fn: Any) -> BaseException:
    def run() -> BaseException:
        try:
            fn()
        except BaseException as exc:
            return exc
        raise AssertionError("expected an exception")

    with trio.fail_after(FAST):
        return await trio.to_thread.run_sync(run, abandon_on_cancel=True)


# ----------------------------------------------------------- DaemonClient


async def test_missing_socket_is_not_running(paths: Any) -> None:
    client = DaemonClient(paths, timeout=600)  # must not wait for the timeout
    exc = await _raises_in_thread(lambda: client.request(s.Status()))
    assert type(exc) is DaemonNotRunningError
    assert exc.code == s.ErrorCode.IPC_DAEMON_NOT_RUNNING
    assert str(paths.command_socket) in exc.message
    assert "skiffyd run" in exc.message


async def test_stale_socket_is_not_running(paths: Any) -> None:
    paths.ensure_private_dir(paths.runtime_dir)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(paths.command_socket))
    client = DaemonClient(paths, timeout=600)
    exc = await _raises_in_thread(lambda: client.request(s.Status()))
    assert type(exc) is DaemonNotRunningError


async def test_subscriber_without_daemon_is_not_running(paths: Any) -> None:
    sub = EventSubscriber(paths, timeout=600)
    exc = await _raises_in_thread(sub.connect)
    assert type(exc) is DaemonNotRunningError


async def test_no_answer_is_a_timeout(start_server: Any, fake: Any, call: Any) -> None:
    async def never(req: s.Request) -> s.Result:
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    fake.overrides[s.Rooms] = never
    await start_server(fake.handle)
    with pytest.raises(DaemonTimeoutError) as info:
        await call(s.Rooms(), client_timeout=0.2)
    assert info.value.code == s.ErrorCode.IPC_TIMEOUT
    assert isinstance(info.value, DaemonNotRunningError)  # one except catches both


async def test_daemon_stopping_mid_request_fails_at_once_and_is_not_resent(
    start_server: Any, fake: Any, paths: Any, make_fake: Any
) -> None:
    entered = trio.Event()

    async def hang(req: s.Request) -> s.Result:
        entered.set()
        await trio.sleep_forever()
        raise AssertionError("unreachable")

    fake.overrides[s.Send] = hang
    first = await start_server(fake.handle)
    errors: list[BaseException] = []
    client = DaemonClient(paths, timeout=600)

    async def send() -> None:
        errors.append(
            await _raises_in_thread(lambda: client.request(s.Send(room_id="!r", body="b")))
        )

    async with trio.open_nursery() as nursery:
        nursery.start_soon(send)
        await entered.wait()
        await first.stop()
    # A restarted daemon must not see the request again (at most once).
    second_fake = make_fake()
    await start_server(second_fake.handle)
    assert isinstance(await trio.to_thread.run_sync(client.request, s.Status()), s.StatusResult)
    client.close()
    assert [type(e) for e in errors] == [DaemonNotRunningError]
    assert [type(r) for r in second_fake.received] == [s.Status]


async def test_hello_checks_the_protocol_version(start_server: Any, fake: Any, paths: Any) -> None:
    async def future_daemon(req: s.Request) -> s.Result:
        return s.HelloResult(protocol_version=s.PROTOCOL_VERSION + 1, instance_id="i", last_seq=0)

    fake.overrides[s.Hello] = future_daemon
    await start_server(fake.handle)
    with DaemonClient(paths, timeout=5) as client:
        exc = await _raises_in_thread(client.hello)
    assert isinstance(exc, SkiffyError)
    assert exc.code == s.ErrorCode.IPC_VERSION_MISMATCH


async def test_request_as_checks_the_result_type(server: Any, paths: Any) -> None:
    with DaemonClient(paths, timeout=5) as client:
        rooms = await trio.to_thread.run_sync(client.request_as, s.Rooms(), s.RoomsResult)
        assert isinstance(rooms, s.RoomsResult)
        exc = await _raises_in_thread(lambda: client.request_as(s.Rooms(), s.StatusResult))
    assert isinstance(exc, SkiffyError)
    assert exc.code == s.ErrorCode.IPC_MALFORMED


# -------------------------------------------------------- EventSubscriber


def _seqs(events: list[s.Event]) -> list[int]:
    return [e.seq for e in events if not isinstance(e, s.SessionStateChanged)]


class Collector:
    """Runs EventSubscriber.iter_events in a thread until a condition holds."""

    def __init__(self, sub: EventSubscriber) -> None:
        self.sub = sub
        self.events: list[s.Event] = []
        self.resets: list[int] = []

    def run(self, since_seq: int | None, done: Callable[[list[s.Event]], bool]) -> None:
        for event in self.sub.iter_events(
            since_seq, idle_timeout=FAST, on_reset=self.resets.append
        ):
            self.events.append(event)
            if done(self.events):
                return
        raise AssertionError(f"stream went idle after {self.events}")


async def test_subscriber_fills_a_gap_through_changes_since(
    start_server: Any, make_fake: Any, paths: Any, until: Any
) -> None:
    fake = make_fake(page=2)  # catch-up takes several pages: exercises `more`
    fake.append(1, 2, 3)
    caught_up = trio.Event()

    async def changes(req: s.Request) -> s.Result:
        assert isinstance(req, s.ChangesSince)
        result: s.ChangesResult = fake.changes_since(req)
        if not result.more:
            caught_up.set()
        return result

    def has_all(events: list[s.Event]) -> bool:
        return _seqs(events)[-1:] == [9] and any(
            isinstance(e, s.SessionStateChanged) for e in events
        )

    fake.overrides[s.ChangesSince] = changes
    running = await start_server(fake.handle)
    with EventSubscriber(paths, timeout=5, poll_interval=0.05) as sub:
        collector = Collector(sub)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, collector.run, 0, has_all)
            await caught_up.wait()  # the start-up catch-up (since 0) is done
            await until(lambda: running.server.statistics().subscribers == 1)
            fake.append(4, 5, 6)  # logged but never published: lost
            running.server.publish(fake.append(7))
            running.server.publish([s.SessionStateChanged(seq=7, state="ready")])
            running.server.publish(fake.append(8, 9))
        assert sub.last_seq == 9
        assert sub.instance_id == "instance-1"
    assert _seqs(collector.events) == list(range(1, 10))
    assert s.SessionStateChanged(seq=7, state="ready") in collector.events
    assert fake.changes_calls[:2] == [0, 2]  # start-up, in pages
    assert 3 in fake.changes_calls  # the gap 3 → 7


async def test_subscriber_drops_duplicates(server: Any, fake: Any, paths: Any, until: Any) -> None:
    with EventSubscriber(paths, timeout=5, poll_interval=0.05) as sub:
        collector = Collector(sub)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                trio.to_thread.run_sync, collector.run, None, lambda evs: 4 in _seqs(evs)
            )
            await until(lambda: server.statistics().subscribers == 1)
            server.publish(fake.append(1, 2))
            server.publish([fake.event(2), fake.event(1)])
            server.publish(fake.append(3, 4))
    assert _seqs(collector.events) == [1, 2, 3, 4]
    assert fake.changes_calls == []


async def test_subscriber_catches_up_after_a_restart_with_a_new_log(
    start_server: Any, make_fake: Any, paths: Any, until: Any
) -> None:
    old = make_fake(instance_id="old")
    old.append(1, 2, 3)
    first = await start_server(old.handle, instance_id="old")
    with EventSubscriber(paths, timeout=5, poll_interval=0.05) as sub:
        collector = Collector(sub)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(
                trio.to_thread.run_sync, collector.run, None, lambda evs: 3 in _seqs(evs)[2:]
            )
            await until(lambda: first.server.statistics().subscribers == 1)
            first.server.publish(old.append(4, 5))
            await until(lambda: _seqs(collector.events) == [4, 5])
            await first.stop()

            # The new daemon's change log starts over (its cache was rebuilt),
            # so its seqs are lower than what the subscriber has seen: only
            # the new instance_id tells the subscriber to ask.
            new = make_fake(instance_id="new")
            new.append(1, 2)
            second = await start_server(new.handle, instance_id="new")
            await until(lambda: second.server.statistics().subscribers == 1)
            second.server.publish([s.SessionStateChanged(seq=2, state="ready")])
            await until(lambda: len(collector.events) == 3)
            second.server.publish(new.append(3))
    assert collector.resets == [2]
    assert new.changes_calls == [5]
    assert collector.events[2:] == [s.SessionStateChanged(seq=2, state="ready"), new.event(3)]
    assert sub.instance_id == "new"


async def test_iter_events_stops_on_idle_timeout_and_on_stop(
    server: Any, fake: Any, paths: Any, until: Any
) -> None:
    with EventSubscriber(paths, timeout=5, poll_interval=0.02) as sub:
        got = await trio.to_thread.run_sync(lambda: list(sub.iter_events(idle_timeout=0.05)))
        assert got == []

        seen: list[s.Event] = []

        def iterate() -> None:
            for event in sub.iter_events():  # no idle timeout: only stop() ends it
                seen.append(event)

        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, iterate)
            await until(lambda: server.statistics().subscribers == 1)
            server.publish(fake.append(1))
            await until(lambda: len(seen) == 1)
            sub.stop()
    assert seen == [fake.event(1)]
