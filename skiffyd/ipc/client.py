"""The client library for UIs and the CLI: blocking, no trio, no asyncio.

:class:`DaemonClient` sends one command and waits for its reply::

    with DaemonClient() as client:
        rooms = client.request_as(ipc_schema.Rooms(), ipc_schema.RoomsResult)

An error reply is raised as :class:`~skiffyd.errors.SkiffyError` with the
daemon's code, message and details unchanged. When there is no daemon to talk
to, :class:`~skiffyd.errors.DaemonNotRunningError` is raised: no socket file,
a stale one, or the connection dropped before the answer came. When a daemon
is connected but does not answer in time, :class:`DaemonTimeoutError` (a
subclass, code ``SKIFFY_IPC_TIMEOUT``) is raised instead.

The Req0 socket is set never to resend a request (nng's default resends after
60 s and after a reconnect), so a command is executed at most once; a dropped
connection fails the request at once instead.

:class:`EventSubscriber` turns the lossy Pub0 stream into a gap-free one. It
tracks the last ``seq`` it yielded and, when a frame skips ahead, when a new
``instance_id`` appears (the daemon restarted) or when it starts from a known
``since_seq``, it asks ``ChangesSince`` and yields what it missed before going
on, dropping anything it has already yielded. ``SessionStateChanged`` events
are ephemeral and pass straight through. Receives wake up every
``poll_interval`` seconds, so ``KeyboardInterrupt`` (Ctrl-C) is raised out of
:meth:`EventSubscriber.iter_events` promptly and :meth:`EventSubscriber.stop`
works from another thread.
"""

from __future__ import annotations

import threading
import time
import typing
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self, TypeVar

import msgspec
import pynng

import ipc_schema
from ipc_schema import MAX_REQUEST_BYTES, PROTOCOL_VERSION, ErrorCode
from skiffyd.config import Paths
from skiffyd.errors import DaemonNotRunningError, IpcError, SkiffyError
from skiffyd.ipc import codec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path
    from types import TracebackType

R = TypeVar("R", bound=msgspec.Struct)

#: How many frames the subscriber's nng queue holds before nng drops the
#: oldest (the gap is then filled through ChangesSince). Enough for bursts
#: (~0.2 s at 50k events/s); more would only make a UI that lags hold what
#: it is behind on in memory, up to this many frames of up to 1 MiB
#: (docs/benchmarks-ipc.md).
SUB_RECV_BUFFER = 32


_LOGGED_TYPES: tuple[type, ...] = typing.get_args(ipc_schema.LoggedEvent)


@dataclass(frozen=True, slots=True)
class SubscriberStatistics:
    """A snapshot of an :class:`EventSubscriber`'s counters."""

    #: Event frames received from the daemon's Pub0 socket.
    frames: int
    #: Events yielded from those frames.
    published_events: int
    #: ``ChangesSince`` requests made to fill gaps (one per page).
    catch_up_requests: int
    #: Events yielded from ``ChangesSince`` answers (what the frames missed).
    caught_up_events: int
    #: Events skipped because they had already been yielded.
    duplicates: int
    #: Times the daemon answered ``reset`` (the UI had to reload).
    resets: int


class DaemonTimeoutError(DaemonNotRunningError):
    """A daemon is connected but did not answer within the timeout."""

    code = ErrorCode.IPC_TIMEOUT


def _not_running(path: Path, why: str) -> DaemonNotRunningError:
    return DaemonNotRunningError(
        f"skiffyd is not running ({why} at {path}); start it with `skiffyd run`",
        details={"socket": str(path)},
    )


def _dial(sock: Any, path: Path) -> None:
    """Dial ``ipc://path`` once, failing fast when nobody listens."""
    if not path.exists():
        raise _not_running(path, "no socket")
    try:
        sock.dial(f"ipc://{path}", block=True)
    except pynng.ConnectionRefused as exc:
        raise _not_running(path, "nobody listens on the socket") from exc
    except pynng.PermissionDenied as exc:
        raise DaemonNotRunningError(
            f"permission denied on {path}: the daemon there belongs to another user",
            details={"socket": str(path)},
        ) from exc
    except pynng.NNGException as exc:
        raise DaemonNotRunningError(
            f"cannot connect to skiffyd at {path}: {exc}", details={"socket": str(path)}
        ) from exc


class DaemonClient:
    """A blocking connection to the daemon's command socket. Thread-safe."""

    def __init__(self, paths: Paths | None = None, *, timeout: float = 30.0) -> None:
        self._paths = paths if paths is not None else Paths.from_env()
        self._timeout = timeout
        self._sock: Any = None
        self._lock = threading.Lock()

    @property
    def socket_path(self) -> Path:
        return self._paths.command_socket

    def connect(self) -> None:
        """Connect now (``request`` connects on first use). Idempotent."""
        with self._lock:
            self._connect_locked()

    def _connect_locked(self) -> None:
        if self._sock is not None:
            return
        ms = max(1, round(self._timeout * 1000))
        sock = pynng.Req0(recv_timeout=ms, send_timeout=ms)
        try:
            sock.resend_time = -1  # never resend: at-most-once commands
            _dial(sock, self.socket_path)
        except BaseException:
            sock.close()
            raise
        self._sock = sock

    def request(self, req: ipc_schema.Request) -> ipc_schema.Result:
        """Send ``req`` and return the result, or raise the daemon's error."""
        data = codec.encode_request(req)
        if len(data) > MAX_REQUEST_BYTES:
            raise IpcError(
                f"request of {len(data)} bytes is larger than the limit of "
                f"{MAX_REQUEST_BYTES} bytes",
                code=ErrorCode.IPC_TOO_LARGE,
                details={"size": len(data), "limit": MAX_REQUEST_BYTES},
            )
        with self._lock:
            self._connect_locked()
            sock = self._sock
            if not sock.pipes and not self.socket_path.exists():
                raise _not_running(self.socket_path, "no socket")
            try:
                sock.send(data)
                raw: bytes = sock.recv()
            except pynng.Timeout as exc:
                path = self.socket_path
                raise DaemonTimeoutError(
                    f"skiffyd did not answer within {self._timeout:g} s (socket {path})",
                    details={"socket": str(path), "timeout": self._timeout},
                ) from exc
            except pynng.ConnectionReset as exc:
                path = self.socket_path
                raise DaemonNotRunningError(
                    f"the connection to skiffyd at {path} was lost before it answered; "
                    "check `skiffyd status`",
                    details={"socket": str(path)},
                ) from exc
            except pynng.Closed as exc:
                raise IpcError("the client was closed", code=ErrorCode.IPC_MALFORMED) from exc
        try:
            reply = codec.decode_reply(raw)
        except msgspec.DecodeError as exc:
            raise IpcError(
                "could not decode skiffyd's reply; is the daemon a different version?",
                code=ErrorCode.IPC_MALFORMED,
            ) from exc
        if reply.error is not None:
            raise SkiffyError(
                reply.error.message, code=reply.error.code, details=reply.error.details
            )
        if reply.result is None:
            raise IpcError("skiffyd sent an empty reply", code=ErrorCode.IPC_MALFORMED)
        return reply.result

    def request_as(self, req: ipc_schema.Request, result_type: type[R]) -> R:
        """``request``, checking that the result is a ``result_type``."""
        result = self.request(req)
        if not isinstance(result, result_type):
            raise IpcError(
                f"skiffyd answered `{type(req).__name__}` with {type(result).__name__}, "
                f"expected {result_type.__name__}",
                code=ErrorCode.IPC_MALFORMED,
            )
        return result

    def hello(self) -> ipc_schema.HelloResult:
        """Say hello and check that the daemon speaks our protocol version."""
        result = self.request_as(ipc_schema.Hello(), ipc_schema.HelloResult)
        if result.protocol_version != PROTOCOL_VERSION:
            raise IpcError(
                f"skiffyd speaks IPC protocol {result.protocol_version}, this client "
                f"speaks {PROTOCOL_VERSION}; use matching versions",
                code=ErrorCode.IPC_VERSION_MISMATCH,
                details={"daemon": result.protocol_version, "client": PROTOCOL_VERSION},
            )
        return result

    def close(self) -> None:
        with self._lock:
            if self._sock is not None:
                self._sock.close()
                self._sock = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class EventSubscriber:
    """The daemon's events, in ``seq`` order and without gaps."""

    def __init__(
        self,
        paths: Paths | None = None,
        *,
        client: DaemonClient | None = None,
        timeout: float = 30.0,
        poll_interval: float = 0.2,
    ) -> None:
        self._paths = paths if paths is not None else Paths.from_env()
        self._own_client = client is None
        self._client = client if client is not None else DaemonClient(self._paths, timeout=timeout)
        self._poll_ms = max(1, round(poll_interval * 1000))
        self._sub: Any = None
        self._stop = threading.Event()
        self._last_seq: int | None = None
        self._instance_id: str | None = None
        self._frames = 0
        self._published_events = 0
        self._catch_up_requests = 0
        self._caught_up_events = 0
        self._duplicates = 0
        self._resets = 0

    @property
    def last_seq(self) -> int | None:
        """The seq of the last change-log event yielded (resume from here)."""
        return self._last_seq

    @property
    def instance_id(self) -> str | None:
        return self._instance_id

    def statistics(self) -> SubscriberStatistics:
        return SubscriberStatistics(
            frames=self._frames,
            published_events=self._published_events,
            catch_up_requests=self._catch_up_requests,
            caught_up_events=self._caught_up_events,
            duplicates=self._duplicates,
            resets=self._resets,
        )

    def connect(self) -> None:
        """Subscribe now (``iter_events`` does it on first use). Idempotent."""
        if self._sub is not None:
            return
        sub = pynng.Sub0(recv_timeout=self._poll_ms, recv_buffer_size=SUB_RECV_BUFFER)
        try:
            sub.subscribe(b"")
            _dial(sub, self._paths.event_socket)
        except BaseException:
            sub.close()
            raise
        self._sub = sub

    def stop(self) -> None:
        """Make the running (or the next) ``iter_events`` return. Thread-safe."""
        self._stop.set()

    def iter_events(
        self,
        since_seq: int | None = None,
        *,
        idle_timeout: float | None = None,
        on_reset: Callable[[int], None] | None = None,
    ) -> Iterator[ipc_schema.Event]:
        """Yield events as they come, filling gaps through ``ChangesSince``.

        ``since_seq``: start with everything after this seq (as when a UI
        resumes); ``None`` starts with whatever is published next.
        ``idle_timeout``: return when no frame came for this many seconds.
        ``on_reset``: called with the new ``last_seq`` when the daemon says
        the UI's state is too old or from another instance (``reset``): the
        UI must reload its rooms and messages. Without it the reset is only
        absorbed (fine for a tail of events).
        """
        self.connect()
        if since_seq is not None:
            self._instance_id = self._client.hello().instance_id
            self._last_seq = since_seq
            yield from self._catch_up(on_reset)
        deadline = None if idle_timeout is None else time.monotonic() + idle_timeout
        while True:
            if self._stop.is_set():
                self._stop.clear()  # one stop() ends one iteration
                return
            try:
                frame: bytes = self._sub.recv()
            except pynng.Timeout:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                continue
            except pynng.Closed:
                return
            if idle_timeout is not None:
                deadline = time.monotonic() + idle_timeout
            self._frames += 1
            try:
                batch = codec.decode_events(frame)
            except msgspec.DecodeError as exc:
                raise IpcError(
                    "could not decode an event frame from skiffyd; "
                    "is the daemon a different version?",
                    code=ErrorCode.IPC_MALFORMED,
                ) from exc
            if batch.instance_id != self._instance_id:
                previous = self._instance_id
                self._instance_id = batch.instance_id
                if previous is not None and self._last_seq is not None:
                    yield from self._catch_up(on_reset, known_instance=previous)
            for event in batch.events:
                if not isinstance(event, _LOGGED_TYPES):
                    # Ephemeral (session state, typing, session expired): not
                    # in the change log, so never part of gap tracking.
                    yield event
                    continue
                last = self._last_seq
                if last is not None:
                    if event.seq <= last:
                        self._duplicates += 1
                        continue  # already yielded
                    if event.seq > last + 1:
                        yield from self._catch_up(on_reset)
                        last = self._last_seq
                        assert last is not None
                        if event.seq <= last:
                            self._duplicates += 1
                            continue
                self._last_seq = event.seq
                self._published_events += 1
                yield event

    def _catch_up(
        self, on_reset: Callable[[int], None] | None, known_instance: str | None = None
    ) -> Iterator[ipc_schema.Event]:
        """Yield the logged events after ``last_seq``, from the daemon's cache.

        ``known_instance``: the instance id ``last_seq`` was seen under; the
        daemon answers ``reset`` when its change log is another one.
        """
        while True:
            assert self._last_seq is not None
            asked = self._last_seq
            changes = self._client.request_as(
                ipc_schema.ChangesSince(seq=asked, instance_id=known_instance),
                ipc_schema.ChangesResult,
            )
            known_instance = changes.instance_id or known_instance
            self._catch_up_requests += 1
            if changes.reset:
                self._resets += 1
                self._last_seq = changes.last_seq
                if on_reset is not None:
                    on_reset(changes.last_seq)
                return
            for event in changes.events:
                if event.seq > self._last_seq:
                    self._last_seq = event.seq
                    self._caught_up_events += 1
                    yield event
            if not changes.more or self._last_seq == asked:
                # Nothing more (or no progress: never loop on a confused answer).
                self._last_seq = max(self._last_seq, changes.last_seq)
                return

    def close(self) -> None:
        self._stop.set()
        if self._sub is not None:
            self._sub.close()
            self._sub = None
        if self._own_client:
            self._client.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
