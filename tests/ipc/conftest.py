"""Fixtures for the IPC tests: short socket paths, a fake daemon, running servers.

Blocking client code always runs through ``trio.to_thread.run_sync``; the
server runs in the test's trio loop.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pynng
import pytest
import trio

import ipc_schema as s
from skiffyd.config import Paths
from skiffyd.ipc import codec
from skiffyd.ipc.client import DaemonClient
from skiffyd.ipc.server import IpcServer

CommandHandler = Callable[[s.Request], Awaitable[s.Result]]


def room_event(seq: int) -> s.RoomUpdated:
    return s.RoomUpdated(seq=seq, room=s.RoomInfo(room_id=f"!r{seq}:example.org", name=f"r{seq}"))


@dataclass
class FakeDaemon:
    """A command handler with canned answers and a change log for ChangesSince."""

    instance_id: str = "instance-1"
    log: list[s.LoggedEvent] = field(default_factory=list)
    #: ChangesSince answers at most this many events (to exercise ``more``).
    page: int = 1000
    received: list[s.Request] = field(default_factory=list)
    changes_calls: list[int] = field(default_factory=list)
    overrides: dict[type, CommandHandler] = field(default_factory=dict)

    @staticmethod
    def event(seq: int) -> s.RoomUpdated:
        return room_event(seq)

    @property
    def last_seq(self) -> int:
        return self.log[-1].seq if self.log else 0

    def append(self, *seqs: int) -> list[s.Event]:
        events: list[s.Event] = [room_event(seq) for seq in seqs]
        for ev in events:
            assert isinstance(ev, s.RoomUpdated)
            self.log.append(ev)
        return events

    async def handle(self, req: s.Request) -> s.Result:
        self.received.append(req)
        override = self.overrides.get(type(req))
        if override is not None:
            return await override(req)
        match req:
            case s.Hello():
                return s.HelloResult(
                    protocol_version=s.PROTOCOL_VERSION,
                    instance_id=self.instance_id,
                    last_seq=self.last_seq,
                )
            case s.Status():
                return s.StatusResult(
                    state="ready", instance_id=self.instance_id, last_seq=self.last_seq
                )
            case s.Login():
                return s.LoginResult(
                    user_id=req.user, device_id="DEVICE", homeserver=req.homeserver
                )
            case s.Logout():
                return s.OkResult()
            case s.Rooms():
                return s.RoomsResult(rooms=[s.RoomInfo(room_id="!a:example.org", name="A")])
            case s.Messages():
                return s.MessagesResult(
                    messages=[
                        s.MessageInfo(
                            event_id=f"$e{i}",
                            room_id=req.room_id,
                            sender="@b:example.org",
                            body=f"body {i}",
                            ts=i,
                            status="sent",
                        )
                        for i in range(req.limit)
                    ]
                )
            case s.Send():
                return s.SendResult(txn_id=f"txn-{len(req.body)}")
            case s.Join():
                return s.JoinResult(room_id=f"!joined-{req.room.lstrip('#!')}")
            case s.ChangesSince():
                return self.changes_since(req)
        raise AssertionError(f"unhandled {type(req).__name__}")

    def changes_since(self, req: s.ChangesSince) -> s.ChangesResult:
        self.changes_calls.append(req.seq)
        last = self.last_seq
        first = self.log[0].seq if self.log else 1
        if req.seq > last or req.seq < first - 1:
            return s.ChangesResult(events=[], last_seq=last, reset=True)
        after = [e for e in self.log if e.seq > req.seq]
        limit = min(req.limit, self.page)
        return s.ChangesResult(events=after[:limit], last_seq=last, more=len(after) > limit)


def short_paths(base: Path) -> Paths:
    return Paths(
        config_dir=base / "config",
        data_dir=base / "data",
        state_dir=base / "state",
        runtime_dir=base / "run",
    )


@pytest.fixture
def base_dir() -> Iterator[Path]:
    # pytest's tmp_path can be too long for a unix socket path (107 bytes).
    base = Path(tempfile.mkdtemp(prefix="skipc-", dir="/tmp"))
    yield base
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def paths(base_dir: Path) -> Paths:
    return short_paths(base_dir)


@pytest.fixture
def fake() -> FakeDaemon:
    return FakeDaemon()


@pytest.fixture
def make_fake() -> type[FakeDaemon]:
    return FakeDaemon


@dataclass
class Running:
    server: IpcServer
    scope: trio.CancelScope
    done: trio.Event

    async def stop(self) -> None:
        self.scope.cancel()
        await self.done.wait()


StartServer = Callable[..., Awaitable[Running]]


@pytest.fixture
async def start_server(nursery: trio.Nursery, paths: Paths) -> StartServer:
    """Start an IpcServer on ``paths``; returns a handle that can stop it."""

    async def run(srv: IpcServer, task_status: trio.TaskStatus[Running]) -> None:
        done = trio.Event()
        try:
            with trio.CancelScope() as scope:
                async with trio.open_nursery() as inner:
                    await inner.start(srv.run)
                    task_status.started(Running(srv, scope, done))
        finally:
            done.set()

    async def start(handler: CommandHandler, **kwargs: Any) -> Running:
        kwargs.setdefault("instance_id", "instance-1")
        srv = IpcServer(paths, handler, **kwargs)
        running: Running = await nursery.start(run, srv)
        return running

    return start


@pytest.fixture
async def server(start_server: StartServer, fake: FakeDaemon) -> IpcServer:
    running = await start_server(fake.handle, instance_id=fake.instance_id)
    return running.server


async def wait_until(predicate: Callable[[], bool]) -> None:
    """Poll until ``predicate()``; the fail_after is a hang guard, not a measure.

    Polling, because the state lives in nng's threads or in a worker thread,
    which cannot set a trio.Event.
    """
    with trio.fail_after(10):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)


@pytest.fixture
def until() -> Callable[[Callable[[], bool]], Awaitable[None]]:
    return wait_until


Call = Callable[..., Awaitable[s.Result]]
Raw = Callable[[bytes], Awaitable[s.Reply]]


@pytest.fixture
def call(paths: Paths) -> Call:
    """``await call(request, client_timeout=5.0)``: one DaemonClient request, in a thread."""

    async def do(req: s.Request, *, client_timeout: float = 5.0) -> s.Result:
        def blocking() -> s.Result:
            with DaemonClient(paths, timeout=client_timeout) as client:
                return client.request(req)

        return await trio.to_thread.run_sync(blocking)

    return do


@pytest.fixture
def raw(paths: Paths) -> Raw:
    """``await raw(frame)``: send any bytes on the command socket, decode the reply."""

    async def do(data: bytes) -> s.Reply:
        def blocking() -> s.Reply:
            with pynng.Req0(recv_timeout=5000, send_timeout=5000) as sock:
                sock.resend_time = -1
                sock.dial(f"ipc://{paths.command_socket}", block=True)
                sock.send(data)
                return codec.decode_reply(sock.recv())

        return await trio.to_thread.run_sync(blocking)

    return do
