"""IpcServer against real nng sockets, with a fake command handler."""

from __future__ import annotations

import os
import shutil
import socket
import stat
import struct
import subprocess
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

import msgspec
import pynng
import pytest
import structlog
import trio

import ipc_schema as s
from skiffyd.errors import DaemonAlreadyRunningError, NotLoggedInError, SkiffyError
from skiffyd.ipc import codec
from skiffyd.ipc import server as server_module
from skiffyd.ipc.client import DaemonClient, DaemonTimeoutError
from skiffyd.ipc.server import (
    MAX_BATCH_EVENTS,
    NNG_RECV_MAX_BYTES,
    IpcServer,
    peer_allowed,
)
from tests.ipc.conftest import short_paths

if TYPE_CHECKING:
    from pathlib import Path

enc = msgspec.msgpack.Encoder()

ROUND_TRIPS: list[tuple[s.Request, s.Result]] = [
    (
        s.Hello(),
        s.HelloResult(protocol_version=s.PROTOCOL_VERSION, instance_id="instance-1", last_seq=0),
    ),
    (s.Status(), s.StatusResult(state="ready", instance_id="instance-1")),
    (
        s.Login(homeserver="https://hs.example", user="@u:hs.example", password="pw"),
        s.LoginResult(user_id="@u:hs.example", device_id="DEVICE", homeserver="https://hs.example"),
    ),
    (s.Logout(), s.OkResult()),
    (s.Rooms(), s.RoomsResult(rooms=[s.RoomInfo(room_id="!a:example.org", name="A")])),
    (
        s.Messages(room_id="!m:hs", limit=1),
        s.MessagesResult(
            messages=[
                s.MessageInfo(
                    event_id="$e0",
                    room_id="!m:hs",
                    sender="@b:example.org",
                    body="body 0",
                    ts=0,
                    status="sent",
                )
            ]
        ),
    ),
    (s.Send(room_id="!m:hs", body="hello"), s.SendResult(txn_id="txn-5")),
    (s.Join(room="#lobby:hs"), s.JoinResult(room_id="!joined-lobby:hs")),
    (s.ChangesSince(seq=0), s.ChangesResult(events=[], last_seq=0)),
]


@pytest.mark.parametrize(("request_", "expected"), ROUND_TRIPS, ids=lambda x: type(x).__name__)
async def test_every_command_round_trips(
    server: IpcServer, fake: Any, call: Any, request_: s.Request, expected: s.Result
) -> None:
    assert await call(request_) == expected
    assert fake.received == [request_]


BAD_FRAMES = [
    pytest.param(b"\xc1\xc1", s.ErrorCode.IPC_MALFORMED, id="garbage"),
    pytest.param(enc.encode(["status"]), s.ErrorCode.IPC_MALFORMED, id="not-a-map"),
    pytest.param(enc.encode({"cmd": "reboot"}), s.ErrorCode.IPC_UNKNOWN_COMMAND, id="unknown"),
    pytest.param(
        enc.encode({"cmd": "send", "room_id": "!r:hs"}),
        s.ErrorCode.IPC_INVALID_ARGUMENT,
        id="missing-field",
    ),
    pytest.param(
        enc.encode({"cmd": "messages", "room_id": "!r:hs", "limit": "all"}),
        s.ErrorCode.IPC_INVALID_ARGUMENT,
        id="wrong-type",
    ),
    pytest.param(b"\x81\xa3cmd\xa6statu\x92", s.ErrorCode.IPC_MALFORMED, id="not-utf8"),
    pytest.param(b"\x90" * (s.MAX_REQUEST_BYTES + 1), s.ErrorCode.IPC_TOO_LARGE, id="too-large"),
]


@pytest.mark.parametrize(("frame", "code"), BAD_FRAMES)
async def test_bad_frames_get_error_replies_and_the_server_goes_on(
    server: IpcServer, fake: Any, raw: Any, call: Any, frame: bytes, code: str
) -> None:
    reply = await raw(frame)
    assert reply.result is None
    assert reply.error is not None
    assert reply.error.code == code
    assert fake.received == []
    assert isinstance(await call(s.Status()), s.StatusResult)


async def test_frame_above_nng_limit_drops_the_connection_only(
    server: IpcServer, paths: Any, call: Any
) -> None:
    def send_huge() -> None:
        with pynng.Req0(recv_timeout=5000, send_timeout=5000) as sock:
            sock.resend_time = -1
            sock.dial(f"ipc://{paths.command_socket}", block=True)
            sock.send(b"\x00" * (NNG_RECV_MAX_BYTES + 1))
            sock.recv()

    # nng closes the connection on a frame above its limit; with resends off
    # the client learns at once instead of redialling and resending.
    with pytest.raises(pynng.ConnectionReset):
        await trio.to_thread.run_sync(send_huge)
    assert isinstance(await call(s.Status()), s.StatusResult)


async def test_client_refuses_oversized_request_locally(
    server: IpcServer, fake: Any, call: Any
) -> None:
    with pytest.raises(SkiffyError) as info:
        await call(s.Send(room_id="!r:hs", body="x" * s.MAX_REQUEST_BYTES))
    assert info.value.code == s.ErrorCode.IPC_TOO_LARGE
    assert fake.received == []


async def test_skiffy_error_keeps_code_message_and_details(
    start_server: Any, fake: Any, call: Any
) -> None:
    async def not_logged_in(req: s.Request) -> s.Result:
        raise NotLoggedInError("log in first", details={"hint": "skiffyd login"})

    async def grouped(req: s.Request) -> s.Result:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(not_logged_in, req)
        raise AssertionError("unreachable")

    fake.overrides[s.Rooms] = not_logged_in
    fake.overrides[s.Logout] = grouped
    await start_server(fake.handle)
    for req in (s.Rooms(), s.Logout()):
        with pytest.raises(SkiffyError) as info:
            await call(req)
        assert info.value.code == s.ErrorCode.SESSION_NOT_LOGGED_IN
        assert info.value.message == "log in first"
        assert info.value.details == {"hint": "skiffyd login"}


async def test_handler_crash_is_internal_error_and_logs_no_content(
    start_server: Any, fake: Any, call: Any
) -> None:
    secret = "p4ssw0rd-never-logged"

    async def crash(req: s.Request) -> s.Result:
        raise KeyError(secret)

    async def wrong_type(req: s.Request) -> s.Result:
        return s.Rooms()  # type: ignore[return-value]  # a request is not a result

    fake.overrides[s.Login] = crash
    fake.overrides[s.Rooms] = wrong_type
    await start_server(fake.handle)
    with structlog.testing.capture_logs() as logs:
        for req in (s.Login(homeserver="h", user="u", password=secret), s.Rooms()):
            with pytest.raises(SkiffyError) as info:
                await call(req)
            assert info.value.code == s.ErrorCode.DAEMON_INTERNAL
            assert secret not in str(info.value)
        assert isinstance(await call(s.Status()), s.StatusResult)
    crashes = [e for e in logs if e["event"] == "ipc.command_crashed"]
    assert [e["error_type"] for e in crashes] == ["KeyError", "TypeError"]
    assert secret not in repr(logs)


async def test_slow_commands_do_not_block_other_uis(
    start_server: Any, fake: Any, call: Any
) -> None:
    # More commands waiting on "the network" at once than the old design had
    # contexts (8): each holds only its own task.
    slow_uis = 12
    entered: list[str] = []
    all_entered, release = trio.Event(), trio.Event()

    async def slow(req: s.Request) -> s.Result:
        assert isinstance(req, s.Join)
        entered.append(req.room)
        if len(entered) == slow_uis:
            all_entered.set()
        await release.wait()
        return s.JoinResult(room_id=f"!joined-{req.room}")

    fake.overrides[s.Join] = slow
    running = await start_server(fake.handle)
    results: dict[str, s.Result] = {}

    async def slow_call(room: str) -> None:
        results[room] = await call(s.Join(room=room))

    async with trio.open_nursery() as nursery:
        for i in range(slow_uis):
            nursery.start_soon(slow_call, f"r{i}")
        await all_entered.wait()
        assert running.server.statistics().in_flight == slow_uis
        # Other UIs are answered while every slow command is still in flight.
        for _ in range(3):
            assert isinstance(await call(s.Status()), s.StatusResult)
            assert isinstance(await call(s.Rooms()), s.RoomsResult)
        assert not release.is_set()
        assert len(results) == 0
        release.set()
    assert results == {f"r{i}": s.JoinResult(room_id=f"!joined-r{i}") for i in range(slow_uis)}


async def test_max_in_flight_is_back_pressure(start_server: Any, fake: Any, call: Any) -> None:
    entered, release = trio.Event(), trio.Event()

    async def slow(req: s.Request) -> s.Result:
        entered.set()
        await release.wait()
        return s.MessagesResult(messages=[])

    fake.overrides[s.Messages] = slow
    await start_server(fake.handle, max_in_flight=1)
    results: list[s.Result] = []

    async def slow_call() -> None:
        results.append(await call(s.Messages(room_id="!r:hs")))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow_call)
        await entered.wait()
        # The control for the test above: with one slot the fast command has
        # to wait in nng (the client's timeout is the only clock here).
        with pytest.raises(DaemonTimeoutError):
            await call(s.Status(), client_timeout=0.3)
        release.set()
    assert results == [s.MessagesResult(messages=[])]
    # Taking requests again once the slot is free.
    assert isinstance(await call(s.Status()), s.StatusResult)


async def test_concurrent_replies_go_back_to_their_own_requester(
    start_server: Any, fake: Any, paths: Any
) -> None:
    # Each reply goes back through the context its request came in: many
    # UIs, commands finishing in another order than they came, each UI must
    # get its own answers.
    uis, per_ui = 8, 25
    pending: list[trio.Event] = []

    async def join(req: s.Request) -> s.Result:
        assert isinstance(req, s.Join)
        done = trio.Event()
        pending.append(done)
        await done.wait()
        return s.JoinResult(room_id=f"!joined-{req.room}")

    fake.overrides[s.Join] = join
    await start_server(fake.handle)

    def ui(n: int) -> list[tuple[str, s.Result]]:
        with DaemonClient(paths, timeout=10) as client:
            out = []
            for i in range(per_ui):
                room = f"ui{n}-{i}"
                out.append((room, client.request(s.Join(room=room))))
            return out

    answers: dict[int, list[tuple[str, s.Result]]] = {}

    async def run_ui(n: int) -> None:
        answers[n] = await trio.to_thread.run_sync(ui, n)

    async def releaser() -> None:
        for i in range(uis * per_ui):
            # Wait until every UI still running has a command in flight, then
            # finish mostly the newest one first, sometimes the oldest.
            while len(pending) < uis - len(answers):  # noqa: ASYNC110
                await trio.sleep(0.001)
            pending.pop(0 if i % 3 == 0 else -1).set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(releaser)
        for n in range(uis):
            nursery.start_soon(run_ui, n)
    for n in range(uis):
        assert answers[n] == [
            (f"ui{n}-{i}", s.JoinResult(room_id=f"!joined-ui{n}-{i}")) for i in range(per_ui)
        ]


async def test_requester_gone_before_the_reply(
    start_server: Any, fake: Any, paths: Any, call: Any, until: Any
) -> None:
    entered, release = trio.Event(), trio.Event()

    async def slow(req: s.Request) -> s.Result:
        entered.set()
        await release.wait()
        return s.OkResult()

    fake.overrides[s.Logout] = slow
    running = await start_server(fake.handle)
    sock = pynng.Req0(recv_timeout=5000, send_timeout=5000)
    sock.resend_time = -1
    sock.dial(f"ipc://{paths.command_socket}", block=True)
    sock.send(codec.encode_request(s.Logout()))
    await entered.wait()
    sock.close()  # the UI quits while its command is in flight
    release.set()
    await until(lambda: running.server.statistics().in_flight == 0)
    # Its reply went nowhere; the server goes on.
    assert isinstance(await call(s.Status()), s.StatusResult)


class SpPeer:
    """A Req0 peer speaking nng's IPC framing over a plain Unix socket, so
    that the test decides when (and whether) it reads its replies; nng's
    own Req0 reads every reply off the socket at once."""

    def __init__(self, path: Any) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(10)
        self.sock.connect(str(path))
        self.sock.sendall(b"\x00SP\x00\x00\x30\x00\x00")  # SP, protocol Req0
        assert self._exact(8) == b"\x00SP\x00\x00\x31\x00\x00"  # Rep0 answers

    def send(self, request_id: int, frame: bytes) -> None:
        payload = struct.pack(">I", request_id | 0x8000_0000) + frame
        self.sock.sendall(b"\x01" + struct.pack(">Q", len(payload)) + payload)

    def recv(self) -> tuple[int, s.Reply]:
        assert self._exact(1) == b"\x01"
        (size,) = struct.unpack(">Q", self._exact(8))
        payload = self._exact(size)
        (request_id,) = struct.unpack(">I", payload[:4])
        return request_id & 0x7FFF_FFFF, codec.decode_reply(payload[4:])

    def _exact(self, n: int) -> bytes:
        chunks = []
        while n:
            chunk = self.sock.recv(min(n, 1 << 20))
            assert chunk, "the daemon closed the connection"
            chunks.append(chunk)
            n -= len(chunk)
        return b"".join(chunks)

    def close(self) -> None:
        self.sock.close()


#: A reply far bigger than a Unix socket's buffers: while its peer does not
#: read, the connection stays busy sending it.
BIG_BODY = "x" * (4 * 1024 * 1024)


async def _three_big_commands_in_flight(
    start_server: Any, fake: Any, paths: Any, until: Any
) -> tuple[Any, SpPeer, trio.Event]:
    """A server whose ``messages`` answer BIG_BODY when released, and one UI
    connection with three of them in flight."""
    release = trio.Event()

    async def big(req: s.Request) -> s.Result:
        assert isinstance(req, s.Messages)
        await release.wait()
        message = s.MessageInfo(
            event_id="$e", room_id=req.room_id, sender="@b:hs", body=BIG_BODY, ts=0, status="sent"
        )
        return s.MessagesResult(messages=[message])

    fake.overrides[s.Messages] = big
    running = await start_server(fake.handle)
    ui = await trio.to_thread.run_sync(SpPeer, paths.command_socket)
    for i in (1, 2, 3):
        ui.send(i, codec.encode_request(s.Messages(room_id=f"!r{i}:hs")))
    await until(lambda: running.server.statistics().in_flight == 3)
    return running, ui, release


async def test_replies_to_a_busy_connection_wait_in_nng_and_all_arrive(
    start_server: Any, fake: Any, paths: Any, until: Any, call: Any
) -> None:
    running, ui, release = await _three_big_commands_in_flight(start_server, fake, paths, until)
    try:
        release.set()
        # The first reply fills the socket, nobody reads it yet: the other
        # two wait in nng, each in its own context.
        await until(lambda: running.server.statistics().queued_replies == 2)
        # Meanwhile other UIs are answered.
        assert isinstance(await call(s.Status()), s.StatusResult)
        replies = [await trio.to_thread.run_sync(ui.recv) for _ in range(3)]
    finally:
        ui.close()
    got = []
    for request_id, reply in replies:
        assert isinstance(reply.result, s.MessagesResult)
        (message,) = reply.result.messages
        assert message.body == BIG_BODY
        got.append((request_id, message.room_id))
    # Each went back to its own request (in the order the commands finished).
    assert sorted(got) == [(1, "!r1:hs"), (2, "!r2:hs"), (3, "!r3:hs")]
    assert running.server.statistics().dropped_replies == 0
    # Their contexts are free again: as many commands as ever fit at once.
    assert isinstance(await call(s.Status()), s.StatusResult)


async def test_a_ui_that_stops_reading_loses_only_its_own_replies(
    start_server: Any,
    fake: Any,
    paths: Any,
    until: Any,
    call: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(server_module, "REPLY_SEND_TIMEOUT_MS", 200)
    running, ui, release = await _three_big_commands_in_flight(start_server, fake, paths, until)
    try:
        with structlog.testing.capture_logs() as logs:
            release.set()
            # Nobody reads: the two replies nng held are given up, no
            # context stays taken, and the daemon goes on.
            await until(lambda: running.server.statistics().dropped_replies == 2)
        assert running.server.statistics().queued_replies == 2
        assert [e["event"] for e in logs].count("ipc.reply_dropped") == 2
        assert isinstance(await call(s.Status()), s.StatusResult)
        # The reply that was already on the connection still arrives.
        request_id, reply = await trio.to_thread.run_sync(ui.recv)
    finally:
        ui.close()
    assert isinstance(reply.result, s.MessagesResult)
    assert reply.result.messages[0].room_id == f"!r{request_id}:hs"


async def test_answer_now_answers_without_the_handler_or_passes_it_on(
    start_server: Any, fake: Any, call: Any
) -> None:
    """What answer_now answers never reaches the handler; None passes the
    command on; its errors become error replies like the handler's."""
    secret = "never-logged-either"
    asked: list[s.Request] = []

    framed = s.MessagesResult(messages=[], gaps=[s.GapInfo(after=None, before="$framed")])

    def answer_now(req: s.Request) -> s.Result | bytes | None:
        asked.append(req)
        match req:
            case s.Status():
                return s.StatusResult(state="syncing", instance_id="from-answer-now")
            case s.Messages(room_id="!framed:hs"):
                return codec.result_reply(framed)  # a reply frame made beforehand
            case s.Messages(room_id="!bad:hs"):
                raise NotLoggedInError("log in first", details={"hint": "skiffyd login"})
            case s.Messages(room_id="!crash:hs"):
                raise KeyError(secret)
            case s.Messages(room_id="!wrong:hs"):
                return s.Rooms()  # type: ignore[return-value]  # a request is not a result
        return None

    running = await start_server(fake.handle, answer_now=answer_now)
    with structlog.testing.capture_logs() as logs:
        assert await call(s.Status()) == s.StatusResult(
            state="syncing", instance_id="from-answer-now"
        )
        assert fake.received == []
        assert await call(s.Rooms()) == ROUND_TRIPS[4][1]
        assert fake.received == [s.Rooms()]
        assert await call(s.Messages(room_id="!framed:hs")) == framed
        with pytest.raises(SkiffyError) as info:
            await call(s.Messages(room_id="!bad:hs"))
        assert (info.value.code, info.value.details) == (
            s.ErrorCode.SESSION_NOT_LOGGED_IN,
            {"hint": "skiffyd login"},
        )
        for room in ("!crash:hs", "!wrong:hs"):
            with pytest.raises(SkiffyError) as info:
                await call(s.Messages(room_id=room))
            assert info.value.code == s.ErrorCode.DAEMON_INTERNAL
    assert [type(r).__name__ for r in asked] == [
        "Status",
        "Rooms",
        "Messages",
        "Messages",
        "Messages",
        "Messages",
    ]
    assert fake.received == [s.Rooms()]
    crashes = [e for e in logs if e["event"] == "ipc.command_crashed"]
    assert [e["error_type"] for e in crashes] == ["KeyError", "TypeError"]
    assert secret not in repr(logs)
    assert running.server.statistics().served == 6
    # Shutting down: answered as such, answer_now not asked.
    running.server.stop_accepting()
    with pytest.raises(SkiffyError) as info:
        await call(s.Status())
    assert info.value.code == s.ErrorCode.DAEMON_SHUTTING_DOWN
    assert len(asked) == 6


async def test_answer_now_runs_on_the_command_thread_while_the_event_loop_is_busy(
    start_server: Any, fake: Any, paths: Any
) -> None:
    """A small read does not wait for the event loop: answer_now runs on the
    server's command thread, and its answer goes out while the loop is held."""
    threads: list[str] = []

    def answer_now(req: s.Request) -> s.Result | None:
        threads.append(threading.current_thread().name)
        return (
            s.StatusResult(state="ready", instance_id="thread")
            if isinstance(req, s.Status)
            else None
        )

    await start_server(fake.handle, answer_now=answer_now)
    answered = threading.Event()
    results: list[s.Result] = []

    def ui() -> None:
        with DaemonClient(paths, timeout=5.0) as client:
            results.append(client.request(s.Status()))
        answered.set()

    ui_thread = threading.Thread(target=ui)
    ui_thread.start()
    # Hold the event loop (no checkpoint) until the UI has its answer; the
    # 10 s are a hang guard: an answer that needs the loop never comes.
    came = answered.wait(10)
    ui_thread.join()
    assert came
    assert results == [s.StatusResult(state="ready", instance_id="thread")]
    assert threads == ["skiffyd-ipc-commands"]
    assert fake.received == []


async def test_reads_are_answered_while_the_event_loop_runs_python_without_pause(
    start_server: Any, fake: Any, paths: Any, until: Any
) -> None:
    """The event loop busy in Python, with only a checkpoint every ms (a
    brief release of the GIL each time): the command thread still gets the
    GIL and answers, many reads during 200 such ms. (With Python's default
    switch interval it waits about as long as the loop stays busy: 0-1 reads
    here.) Progress is counted against the loop's work, not timed."""

    def answer_now(req: s.Request) -> s.Result | None:
        return (
            s.StatusResult(state="ready", instance_id="busy") if isinstance(req, s.Status) else None
        )

    await start_server(fake.handle, answer_now=answer_now)
    stop = threading.Event()
    answered: list[s.Result] = []
    failures: list[BaseException] = []

    def ui() -> None:
        try:
            with DaemonClient(paths, timeout=60.0) as client:
                while not stop.is_set():
                    answered.append(client.request(s.Status()))
        except BaseException as exc:
            failures.append(exc)

    ui_thread = threading.Thread(target=ui)
    ui_thread.start()
    try:
        await until(lambda: bool(answered or failures))  # connected, loop idle
        before = len(answered)
        for _ in range(200):
            end = time.perf_counter() + 0.001
            while time.perf_counter() < end:
                pass  # Python, holding the GIL
            await trio.lowlevel.checkpoint()
        during = len(answered) - before
    finally:
        stop.set()
        await trio.to_thread.run_sync(ui_thread.join)
    assert failures == []
    assert during >= 10
    assert all(r == s.StatusResult(state="ready", instance_id="busy") for r in answered)


async def test_the_switch_interval_is_lowered_while_serving_and_then_restored(
    start_server: Any, fake: Any, until: Any, base_dir: Path
) -> None:
    before = sys.getswitchinterval()
    lowered = min(before, server_module.SWITCH_INTERVAL_S)
    assert lowered < before  # Python's default is 5 ms
    first = await start_server(fake.handle)
    await until(lambda: sys.getswitchinterval() == pytest.approx(lowered))
    # Two servers in one process: the last to stop puts it back.
    second = IpcServer(short_paths(base_dir / "second"), fake.handle, instance_id="second")
    async with trio.open_nursery() as nursery:
        await nursery.start(second.run)
        await until(lambda: second._slots is not None)  # its command thread runs
        await first.stop()
        assert sys.getswitchinterval() == pytest.approx(lowered)
        nursery.cancel_scope.cancel()
    assert sys.getswitchinterval() == pytest.approx(before)


async def test_a_command_thread_that_fails_takes_the_server_down(
    paths: Any, fake: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server does not go on without its command thread: what killed the
    thread is raised from run(), and the sockets are closed."""

    def broken(self: Any) -> None:
        raise RuntimeError("the command thread broke")

    monkeypatch.setattr(server_module._Slots, "take", broken)
    srv = IpcServer(paths, fake.handle, instance_id="instance-1")
    with trio.fail_after(10), pytest.raises(BaseExceptionGroup) as info:
        await srv.run()
    assert info.group_contains(RuntimeError, match="the command thread broke", depth=None)
    assert not paths.command_socket.exists()
    assert not paths.event_socket.exists()


def test_a_command_coming_back_after_the_slots_are_freed_is_left_alone() -> None:
    """A command the command thread passed to the event loop as the server
    stopped can come back after the contexts were freed: its release must
    not touch the freed context; and a stopped pool hands out no context."""

    class Freed:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"a freed context was touched ({name})")

    with pynng.Rep0() as rep:
        dropped: list[int] = []
        slots = server_module._Slots(rep.socket, 4, dropped.append)
        slot = slots.take()
        assert slot is not None
        slots.stop()
        assert slots.take() is None
        # A reply made as the server stopped: its context is closed, nng
        # gives it back, and that is no dropped reply.
        slot.send(b"late")
        assert slots.release(slot) is False
        assert dropped == []
        slots.close()
        assert slots.release(Freed()) is False  # type: ignore[arg-type]


async def test_stop_accepting_answers_shutting_down(server: IpcServer, call: Any) -> None:
    assert isinstance(await call(s.Status()), s.StatusResult)
    server.stop_accepting()
    with pytest.raises(SkiffyError) as info:
        await call(s.Status())
    assert info.value.code == s.ErrorCode.DAEMON_SHUTTING_DOWN


async def test_wait_idle_waits_for_in_flight_commands(
    start_server: Any, fake: Any, call: Any
) -> None:
    entered, release = trio.Event(), trio.Event()

    async def slow(req: s.Request) -> s.Result:
        entered.set()
        await release.wait()
        return s.OkResult()

    fake.overrides[s.Logout] = slow
    running = await start_server(fake.handle)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(call, s.Logout())
        await entered.wait()
        assert running.server.statistics().in_flight == 1
        idle: list[bool] = []

        async def wait() -> None:
            await running.server.wait_idle()
            idle.append(True)

        nursery.start_soon(wait)
        await trio.testing.wait_all_tasks_blocked()
        assert idle == []
        release.set()
    assert idle == [True]
    assert running.server.statistics().in_flight == 0


async def test_socket_modes_and_cleanup(start_server: Any, fake: Any, paths: Any) -> None:
    with structlog.testing.capture_logs() as logs:
        running = await start_server(fake.handle)
    # 0600 from nng's ipc:permissions at bind time, not from the chmod fallback.
    assert not [e for e in logs if e["event"] == "ipc.socket_mode_fixed"]
    assert stat.S_IMODE(os.stat(paths.runtime_dir).st_mode) == 0o700
    for sock in (paths.command_socket, paths.event_socket):
        st = os.stat(sock)
        assert stat.S_ISSOCK(st.st_mode)
        assert stat.S_IMODE(st.st_mode) == 0o600
    await running.stop()
    assert not paths.command_socket.exists()
    assert not paths.event_socket.exists()


async def test_second_server_fails_clearly_and_first_keeps_serving(
    server: IpcServer, fake: Any, paths: Any, call: Any
) -> None:
    second = IpcServer(paths, fake.handle, instance_id="other")
    with pytest.raises(DaemonAlreadyRunningError):
        await second.run()
    assert paths.command_socket.exists()
    assert paths.event_socket.exists()
    assert isinstance(await call(s.Status()), s.StatusResult)


async def test_server_reclaims_a_stale_socket(
    start_server: Any, fake: Any, paths: Any, call: Any
) -> None:
    paths.ensure_private_dir(paths.runtime_dir)
    with socket.socket(socket.AF_UNIX) as stale:
        stale.bind(str(paths.command_socket))  # left behind, nobody listening
    await start_server(fake.handle)
    assert isinstance(await call(s.Status()), s.StatusResult)


# ---------------------------------------------------------------- peer uid


def test_peer_allowed() -> None:
    assert peer_allowed(1000, 1000)
    assert not peer_allowed(1001, 1000)
    assert not peer_allowed(0, 1000)
    assert not peer_allowed(None, 1000)  # unknown: fail closed


# A stdlib-only Req0 client speaking nng's IPC wire format (the 8-byte SP
# header, then 0x01 + u64 length + payload), so it runs under any Python that
# the unprivileged user can execute, without pynng.
RAW_REQ0 = r"""
import socket, struct, sys
path, payload = sys.argv[1], bytes.fromhex(sys.argv[2])
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(path)
buf = b""
try:
    s.sendall(b"\x00SP\x00" + struct.pack(">H", 0x30) + b"\x00\x00")
    body = struct.pack(">I", 0x80000001) + payload
    s.sendall(b"\x01" + struct.pack(">Q", len(body)) + body)
    while True:
        chunk = s.recv(65536)
        if not chunk:
            break
        buf += chunk
        if len(buf) >= 17 and len(buf) >= 17 + struct.unpack(">Q", buf[9:17])[0]:
            break
except socket.timeout:
    print("TIMEOUT")
    sys.exit()
except OSError:  # reset or broken pipe: the server closed the connection
    pass
print("REPLY " + buf[21:].hex() if len(buf) > 17 else "CLOSED")
"""

NOBODY = 65534


def _python_for_nobody() -> str | None:
    for exe in (sys.executable, "/usr/bin/python3", shutil.which("python3")):
        if not exe:
            continue
        try:
            probe = subprocess.run(
                [exe, "-c", "pass"],
                user=NOBODY,
                group=NOBODY,
                extra_groups=[],
                capture_output=True,
                check=False,
                cwd="/",
            )
        except OSError:
            continue
        if probe.returncode == 0:
            return exe
    return None


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to run a client as another uid")
async def test_peer_with_another_uid_is_refused(
    server: IpcServer, fake: Any, paths: Any, base_dir: Any
) -> None:
    python = await trio.to_thread.run_sync(_python_for_nobody)
    if python is None:
        pytest.skip("no Python interpreter that uid 65534 may run")
    # Open the file-system path to everyone, so only the uid check stands
    # between the other user and the daemon.
    os.chmod(base_dir, 0o711)
    os.chmod(paths.runtime_dir, 0o711)
    os.chmod(paths.command_socket, 0o666)
    frame = codec.encode_request(s.Status()).hex()
    argv = [python, "-c", RAW_REQ0, str(paths.command_socket), frame]

    own = await trio.run_process(argv, capture_stdout=True, cwd="/")
    kind, _, payload = own.stdout.decode().strip().partition(" ")
    assert kind == "REPLY"  # the control: the raw client works for our own uid
    assert isinstance(codec.decode_reply(bytes.fromhex(payload)).result, s.StatusResult)
    assert len(fake.received) == 1

    other = await trio.run_process(
        argv, capture_stdout=True, cwd="/", user=NOBODY, group=NOBODY, extra_groups=[]
    )
    assert other.stdout.decode().strip() == "CLOSED"
    assert len(fake.received) == 1
    assert server.statistics().refused_peers >= 1


# ------------------------------------------------------------------ events


async def test_publish_coalesces_into_batches(
    server: IpcServer, fake: Any, paths: Any, until: Any
) -> None:
    sub = pynng.Sub0(recv_timeout=5000)
    sub.subscribe(b"")
    sub.dial(f"ipc://{paths.event_socket}", block=True)
    try:
        await until(lambda: server.statistics().subscribers == 1)
        events = [fake.event(seq) for seq in range(1, 2 * MAX_BATCH_EVENTS + 501)]
        server.publish(events)  # one call: everything is queued at once

        def receive(n: int) -> list[s.EventBatch]:
            return [codec.decode_events(sub.recv()) for _ in range(n)]

        batches = await trio.to_thread.run_sync(receive, 3)
    finally:
        sub.close()
    assert [len(b.events) for b in batches] == [MAX_BATCH_EVENTS, MAX_BATCH_EVENTS, 500]
    assert {b.instance_id for b in batches} == {"instance-1"}
    assert [e.seq for b in batches for e in b.events] == list(range(1, 2 * MAX_BATCH_EVENTS + 501))
    stats = server.statistics()
    assert (stats.published_frames, stats.published_events) == (3, 2 * MAX_BATCH_EVENTS + 500)


async def test_publish_from_another_thread(
    server: IpcServer, fake: Any, paths: Any, until: Any
) -> None:
    sub = pynng.Sub0(recv_timeout=5000)
    sub.subscribe(b"")
    sub.dial(f"ipc://{paths.event_socket}", block=True)
    try:
        await until(lambda: server.statistics().subscribers == 1)
        await trio.to_thread.run_sync(server.publish, [fake.event(1)])
        batch = codec.decode_events(await trio.to_thread.run_sync(sub.recv))
    finally:
        sub.close()
    assert batch.events == [fake.event(1)]


async def test_publish_never_raises(server: IpcServer) -> None:
    server.publish(["not an event", None])  # type: ignore[list-item]
    server.publish(None)  # type: ignore[arg-type]


async def test_slow_subscriber_does_not_block_the_publisher(
    server: IpcServer, fake: Any, paths: Any, until: Any
) -> None:
    stuck = pynng.Sub0(recv_buffer_size=1)  # subscribed, never reads
    stuck.subscribe(b"")
    stuck.dial(f"ipc://{paths.event_socket}", block=True)
    live = pynng.Sub0(recv_timeout=5000)
    live.subscribe(b"")
    try:
        await until(lambda: server.statistics().subscribers == 1)
        frames = 600  # well past nng's per-subscriber queues
        for seq in range(1, frames + 1):
            server.publish([fake.event(seq)])
            # Returns once the publisher has sent it and sleeps again; it
            # would hang here if a send blocked.
            with trio.fail_after(10):
                await trio.testing.wait_all_tasks_blocked()
            assert server.statistics().queued_events == 0
        assert server.statistics().published_frames == frames
        # And the publisher still delivers to a subscriber that keeps up.
        live.dial(f"ipc://{paths.event_socket}", block=True)
        await until(lambda: server.statistics().subscribers == 2)
        server.publish([fake.event(frames + 1)])
        batch = codec.decode_events(await trio.to_thread.run_sync(live.recv))
    finally:
        stuck.close()
        live.close()
    assert batch.events == [fake.event(frames + 1)]
