"""The daemon's side of IPC: commands on a Rep0 socket, events on a Pub0 socket.

Theory of operation
-------------------
:meth:`IpcServer.run` makes the runtime directory (0700), then listens on
``cmd.sock`` (Rep0) and ``events.sock`` (Pub0). Each listener is created
*unstarted* through nng's C API, given ``ipc:permissions = 0600`` and only
then started, so neither socket file is ever reachable with a wider mode
(pynng's ``listen()`` would start it at once). The mode is checked on disk
afterwards and fixed with ``chmod`` if a platform ignored the option. A
pre-pipe-connect callback reads ``ipc:peer-uid`` from every new connection and
closes it unless that uid is ours (and closes it when the uid cannot be read:
fail closed); a refused peer gets nng's 8-byte handshake, then end of file.
Only when both sockets listen does ``run`` report ``started()``.

Commands. The command socket is a Rep0 socket in nng's *raw* mode. One
reader task waits for nng's receive descriptor (``recv-fd``) to turn readable
(``trio.lowlevel.wait_readable``), then takes every waiting request with
non-blocking receives until nng says ``EAGAIN``. Each is decoded
(:func:`skiffyd.ipc.codec.decode_request`); a frame that does not decode is
answered at once with its error. Then ``answer_now`` (when given) may answer
the command right there, synchronously: the daemon does so for commands that
need only memory and a small read of the cache, for which a task of their
own would cost more than the work (docs/benchmarks-ipc.md). Every other
command gets one trio task: await the handler, send the reply. In raw mode a
request carries its route back (the pipe id and the requester's request id,
in the nng message header); the reply is sent with that header, also without
blocking. So no nng thread calls into Python for a command and no request
waits for a hop between threads (the only callbacks are the per-connection
peer checks), and a command that awaits the network for seconds (login,
join, backfill) holds only its own task while every other UI's commands keep
being answered. At most ``max_in_flight`` commands run in tasks at once;
beyond that the reader stops taking requests and they wait in nng (back
pressure).

Why not Rep0 contexts with ``await ctx.arecv()`` (the previous design):
each ``arecv``/``asend`` completes through a callback on an nng thread that
takes the GIL and wakes trio. Measured here with 8 UIs connected
(``docs/benchmarks-ipc.md``, ``tests/bench/bench_ipc_rtt.py``), the raw
socket costs about half the daemon CPU per command and answers 1.4-2x more
commands per second when all 8 UIs are busy; with one busy UI both answer a
small cached read in 130-200 µs p50 (a raw pynng echo: 60-120 µs).
``recv-fd`` exists per socket, not per context, which is why the raw socket
(one descriptor, every route in the header) is the way to use it without
serialising commands.

Every failure becomes an error reply:
undecodable bytes, an unknown command, bad arguments, an oversized frame, a
:class:`~skiffyd.errors.SkiffyError` from the handler (its code, message and
details) or any other exception (``SKIFFY_DAEMON_INTERNAL``, logged with its
type and where it was raised, never with the request, which can hold a
password or a message body). After :meth:`IpcServer.stop_accepting` new
commands get ``SKIFFY_DAEMON_SHUTTING_DOWN``.

Oversized frames, as measured with nng 1.11 / pynng 0.9: nng checks
``recv-size-max`` when it reads a frame's length header and, if the frame is
bigger, closes the connection without a word (and without reading or
allocating the body, so a huge frame costs the daemon nothing). A Req0 peer with nng's default
resend policy then redials and sends the same frame again, in a loop (8
reconnects in 3 s here) until its own timeout. So the nng limit is set to
:data:`NNG_RECV_MAX_BYTES` (16x the logical limit): a frame between
``MAX_REQUEST_BYTES`` and that gets a proper ``SKIFFY_IPC_TOO_LARGE`` reply,
and only a frame above it (4 MiB) is cut off by nng. skiffyd's own client
never sends either (it refuses locally), and sets ``req:resend-time`` to
infinite, with which nng fails a request at once with ``ConnectionReset``
when the connection drops instead of resending it: a command is never
executed twice because the daemon restarted under it.

Events. :meth:`IpcServer.publish` is synchronous and never blocks nor raises:
it appends to a bounded queue and wakes the publisher task, which sends
everything queued at that moment as :class:`~ipc_schema.EventBatch` frames of
at most :data:`MAX_BATCH_EVENTS` events (and roughly
:data:`MAX_EVENT_FRAME_BYTES`). Pub0 sends are non-blocking: nng drops frames
for a subscriber that does not keep up, and if the daemon produces events
faster than it can encode them the queue drops the oldest. Both are safe:
every change-log event carries ``seq``, and a UI that sees a gap asks
``ChangesSince``.

Shutdown. Cancelling :meth:`run` cancels the reader, the command tasks (their
requesters see the connection drop) and the publisher, then closes the
sockets; nng removes the socket files when it closes the listeners, and
``run`` removes any that are left (only ones it created).
"""

from __future__ import annotations

import contextlib
import os
import stat
import threading
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pynng
import structlog
import trio
from pynng import ffi, lib
from pynng.exceptions import check_err

import ipc_schema
from ipc_schema import MAX_REQUEST_BYTES, ErrorCode, ErrorInfo
from skiffyd.errors import DaemonAlreadyRunningError, DaemonError, SkiffyError
from skiffyd.ipc import codec

if TYPE_CHECKING:
    from skiffyd.config import Paths

#: nng's own frame limit on the command socket; see the module docstring.
NNG_RECV_MAX_BYTES = 16 * MAX_REQUEST_BYTES
#: The most events in one EventBatch frame.
MAX_BATCH_EVENTS = 1000
#: A batch whose frame is bigger than this is split (unless it holds one event).
MAX_EVENT_FRAME_BYTES = 1024 * 1024
#: Events waiting for the publisher beyond this drop the oldest.
MAX_QUEUED_EVENTS = 100_000
#: Per-subscriber queue in nng's Pub0 (frames), before nng drops for that peer.
#: It fills only when a subscriber stops reading its socket altogether (nng
#: on the subscriber's side keeps reading and drops there); it bounds what
#: a stopped UI pins in the daemon.
PUB_SEND_BUFFER = 64
#: Commands handled at the same time; more wait in nng (back pressure).
MAX_IN_FLIGHT = 64
#: Requests nng queues for the daemon, and replies on their way out.
REP_RECV_BUFFER = 128
REP_SEND_BUFFER = 128
#: Requests taken in one go before the reader lets other tasks run.
DRAIN_CHECKPOINT = 16
#: A reply that finds nng's send queue full is retried this often, this far apart.
REPLY_SEND_TRIES = 1000
REPLY_RETRY_DELAY = 0.001
SOCKET_MODE = 0o600

Handler = Callable[[ipc_schema.Request], Awaitable[ipc_schema.Result]]
#: Answers a command at once, on the event loop, or says None (see IpcServer).
AnswerNow = Callable[[ipc_schema.Request], "ipc_schema.Result | None"]

_RESULT_TYPES: tuple[type, ...] = ipc_schema.Result.__args__
_EVENT_TYPES: tuple[type, ...] = ipc_schema.Event.__args__

_module_log = structlog.get_logger(__name__)


def peer_allowed(peer_uid: int | None, own_uid: int) -> bool:
    """Whether a connection whose peer runs as ``peer_uid`` may talk to us.

    ``None`` means the uid could not be read: refuse (fail closed).
    """
    return peer_uid is not None and peer_uid == own_uid


def pipe_peer_uid(pipe: Any) -> int | None:
    """The uid of the process at the other end of an nng IPC pipe, or None."""
    value = ffi.new("uint64_t *")
    if lib.nng_pipe_get_uint64(pipe.pipe, b"ipc:peer-uid", value) != 0:
        return None
    return int(value[0])


@dataclass(frozen=True, slots=True)
class IpcStatistics:
    """A snapshot of the server's counters (trio's ``statistics()`` convention)."""

    #: Commands being handled now.
    in_flight: int
    #: Commands answered so far, by answer_now or the handler (not counting
    #: frames that did not decode).
    served: int
    #: Connections closed because the peer's uid was not ours.
    refused_peers: int
    #: Event subscribers connected and attached to Pub0.
    subscribers: int
    queued_events: int
    published_events: int
    published_frames: int
    dropped_events: int


class IpcServer:
    """Rep0 commands and Pub0 events on the daemon's runtime directory."""

    def __init__(
        self,
        paths: Paths,
        handler: Handler,
        *,
        instance_id: str,
        max_in_flight: int = MAX_IN_FLIGHT,
        answer_now: AnswerNow | None = None,
        log: Any = None,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self._paths = paths
        self._handler = handler
        self._answer_now = answer_now
        self._instance_id = instance_id
        self._max_in_flight = max_in_flight
        self._log = log if log is not None else _module_log
        self._own_uid = os.getuid()
        self._accepting = True

        self._queue: deque[ipc_schema.Event] = deque()
        self._wake: trio.Event | None = None
        self._token: trio.lowlevel.TrioToken | None = None

        self._in_flight = 0
        self._tasks = 0  # command tasks, including those that only answer an error
        self._idle = trio.Event()
        self._idle.set()
        self._served = 0
        self._refused = 0
        self._subscribers = 0
        self._counter_lock = threading.Lock()  # nng threads bump _refused
        self._published_events = 0
        self._published_frames = 0
        self._dropped_events = 0

    @property
    def instance_id(self) -> str:
        return self._instance_id

    @instance_id.setter
    def instance_id(self, value: str) -> None:
        """A new change log (a new account session) is a new instance for UIs."""
        self._instance_id = value

    # ------------------------------------------------------------------ run

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled. Reports ``started()`` once both sockets listen."""
        self._paths.ensure_private_dir(self._paths.runtime_dir)
        self._token = trio.lowlevel.current_trio_token()
        self._wake = trio.Event()
        created: list[tuple[Path, int]] = []
        rep = self._command_socket()
        pub = pynng.Pub0(send_buffer_size=PUB_SEND_BUFFER)
        try:
            for sock in (rep, pub):
                sock.add_pre_pipe_connect_cb(self._check_peer)
            pub.add_post_pipe_connect_cb(self._subscriber_added)
            pub.add_post_pipe_remove_cb(self._subscriber_removed)
            created.append(self._listen(rep, self._paths.command_socket))
            created.append(self._listen(pub, self._paths.event_socket))
            self._log.info(
                "ipc.listening",
                command_socket=str(self._paths.command_socket),
                event_socket=str(self._paths.event_socket),
                max_in_flight=self._max_in_flight,
            )
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._serve_commands, rep)
                nursery.start_soon(self._publish_loop, pub)
                task_status.started()
        finally:
            self._wake = None
            # Every task that used the sockets is done by now. Tell trio the
            # descriptors it may have polled are going away, then close.
            for sock in (rep, pub):
                _notify_closing(sock)
            rep.close()
            pub.close()
            for path, inode in created:
                _remove_socket_file(path, inode)
            self._log.info("ipc.closed")

    def _listen(self, sock: Any, path: Path) -> tuple[Path, int]:
        """Listen on ``ipc://path`` with mode 0600 from the first moment."""
        listener = ffi.new("nng_listener *")
        url = f"ipc://{path}".encode()
        try:
            check_err(lib.nng_listener_create(listener, sock.socket, url))
            try:
                check_err(lib.nng_listener_set_int(listener[0], b"ipc:permissions", SOCKET_MODE))
                check_err(lib.nng_listener_start(listener[0], 0))
            except BaseException:
                lib.nng_listener_close(listener[0])
                raise
        except pynng.AddressInUse as exc:
            raise DaemonAlreadyRunningError(
                f"another skiffyd is already listening on {path}",
                details={"socket": str(path)},
            ) from exc
        except pynng.NNGException as exc:
            raise DaemonError(
                f"cannot listen on {path}: {exc}", details={"socket": str(path)}
            ) from exc
        # Let pynng know about the listener, as its own listen() would.
        sock._listeners[lib.nng_listener_id(listener[0])] = pynng.Listener(listener, sock)
        st = os.stat(path)
        if stat.S_IMODE(st.st_mode) != SOCKET_MODE:
            self._log.warning(
                "ipc.socket_mode_fixed", socket=str(path), mode=oct(stat.S_IMODE(st.st_mode))
            )
            try:
                os.chmod(path, SOCKET_MODE)
                st = os.stat(path)
            except OSError as exc:
                raise DaemonError(f"cannot make {path} private: {exc.strerror}") from exc
        return path, st.st_ino

    def _check_peer(self, pipe: Any) -> None:
        """pynng pre-pipe-connect callback; runs on an nng thread."""
        try:
            uid = pipe_peer_uid(pipe)
            if peer_allowed(uid, self._own_uid):
                return
            with self._counter_lock:
                self._refused += 1
            self._log.warning("ipc.peer_refused", peer_uid=uid, own_uid=self._own_uid)
            pipe.close()
        except Exception as exc:  # never let a connection through on error
            self._log.error("ipc.peer_check_failed", error_type=type(exc).__name__)
            with contextlib.suppress(pynng.NNGException):
                pipe.close()

    def _subscriber_added(self, pipe: Any) -> None:
        # nng's ADD_POST: the pipe is attached to Pub0 and gets what is sent
        # from now on (at ADD_PRE it would not yet).
        with self._counter_lock:
            self._subscribers += 1

    def _subscriber_removed(self, pipe: Any) -> None:
        with self._counter_lock:
            self._subscribers -= 1

    # ------------------------------------------------------------- commands

    def stop_accepting(self) -> None:
        """From now on, answer every new command with DAEMON_SHUTTING_DOWN."""
        self._accepting = False

    async def wait_idle(self) -> None:
        """Wait until no command is being handled (for a graceful shutdown)."""
        while self._in_flight:
            await self._idle.wait()

    def _command_socket(self) -> Any:
        """The command socket: Rep0 in raw mode (see the module docstring)."""
        return pynng.Rep0(
            opener=lib.nng_rep0_open_raw,
            recv_max_size=NNG_RECV_MAX_BYTES,
            recv_buffer_size=REP_RECV_BUFFER,
            send_buffer_size=REP_SEND_BUFFER,
        )

    async def _serve_commands(self, rep: Any) -> None:
        """Take requests off the raw Rep0 socket; answer them at once or in a task each.

        The socket's receive descriptor turns readable when requests wait;
        they are then taken with non-blocking receives until nng has none
        left. Nothing in this path runs on an nng thread or crosses threads.
        """
        sock = rep.socket
        recv_fd: int = rep.recv_fd
        msg_p = ffi.new("nng_msg **")
        slot_free = trio.Event()

        def done() -> None:
            nonlocal slot_free
            self._tasks -= 1
            slot_free.set()

        async with trio.open_nursery() as nursery:
            taken = 0
            while True:
                if self._tasks >= self._max_in_flight:
                    # Back pressure: requests wait in nng until a slot frees.
                    slot_free = trio.Event()
                    await slot_free.wait()
                    continue
                rv = lib.nng_recvmsg(sock, msg_p, lib.NNG_FLAG_NONBLOCK)
                if rv == lib.NNG_EAGAIN:
                    taken = 0
                    await trio.lowlevel.wait_readable(recv_fd)
                    continue
                if rv == lib.NNG_ECLOSED:
                    return
                if rv != 0:
                    self._log.warning("ipc.recv_failed", error=_nng_error(rv))
                    await trio.sleep(0.01)
                    continue
                msg = msg_p[0]
                try:
                    header = bytes(ffi.buffer(lib.nng_msg_header(msg), lib.nng_msg_header_len(msg)))
                    body = bytes(ffi.buffer(lib.nng_msg_body(msg), lib.nng_msg_len(msg)))
                finally:
                    lib.nng_msg_free(msg)
                taken += 1
                request = self._decode(body)
                if not isinstance(request, bytes) and self._answer_now is not None:
                    request = self._try_answer_now(request) or request
                if isinstance(request, bytes) and self._reply_at_once(sock, header, request):
                    pass  # answered without a task: an error, or answer_now's answer
                else:
                    self._tasks += 1
                    nursery.start_soon(self._command, sock, header, request, done)
                if taken % DRAIN_CHECKPOINT == 0:
                    # A long burst still lets the commands (and the rest of
                    # the daemon) run.
                    await trio.lowlevel.checkpoint()

    async def _command(
        self,
        sock: Any,
        header: bytes,
        request: ipc_schema.Request | bytes,
        done: Callable[[], None],
    ) -> None:
        """Handle ``request`` (or send the reply it already has) and reply."""
        try:
            reply = request if isinstance(request, bytes) else await self._handle(request)
            await self._send_reply(sock, header, reply)
        except pynng.NNGException as exc:  # nng out of memory: this reply only
            self._log.error("ipc.reply_failed", error_type=type(exc).__name__)
        finally:
            done()

    def _try_answer_now(self, request: ipc_schema.Request) -> bytes | None:
        """``answer_now``'s reply to ``request``, or None when it has none."""
        assert self._answer_now is not None
        try:
            result = self._answer_now(request)
            if result is None:
                return None
            reply = _result_reply("answer_now", result)
        except Exception as exc:
            reply = self._error_reply(type(request).__struct_config__.tag, exc)
        self._served += 1
        return reply

    def _reply_at_once(self, sock: Any, header: bytes, reply: bytes) -> bool:
        """Send ``reply`` without waiting; False if nng's send queue is full."""
        try:
            return self._send_now(sock, header, reply)
        except pynng.NNGException as exc:  # nng out of memory: this reply only
            self._log.error("ipc.reply_failed", error_type=type(exc).__name__)
            return True

    async def _send_reply(self, sock: Any, header: bytes, reply: bytes) -> None:
        """Send ``reply`` back along the request's route (its ``header``).

        The raw socket queues it without blocking; a requester that went away
        meanwhile is nng's to forget. Only a full send queue (nng's forwarder
        is behind) makes this wait a little.
        """
        for _ in range(REPLY_SEND_TRIES):
            if self._send_now(sock, header, reply):
                return
            await trio.sleep(REPLY_RETRY_DELAY)
        self._log.warning("ipc.reply_dropped", reason="send queue full")

    def _send_now(self, sock: Any, header: bytes, reply: bytes) -> bool:
        """One non-blocking send of ``reply`` along ``header``'s route. False:
        nng's send queue is full, try again; True: sent, or never will be."""
        msg_p = ffi.new("nng_msg **")
        check_err(lib.nng_msg_alloc(msg_p, 0))
        msg = msg_p[0]
        try:
            check_err(lib.nng_msg_header_append(msg, header, len(header)))
            check_err(lib.nng_msg_append(msg, reply, len(reply)))
            rv = lib.nng_sendmsg(sock, msg, lib.NNG_FLAG_NONBLOCK)
            if rv == 0:
                msg = None  # nng owns it now
                return True
            if rv == lib.NNG_EAGAIN:
                return False
            if rv != lib.NNG_ECLOSED:
                self._log.info("ipc.reply_not_sent", error=_nng_error(rv))
            return True
        finally:
            if msg is not None:
                lib.nng_msg_free(msg)

    def _decode(self, data: bytes) -> ipc_schema.Request | bytes:
        """The request in ``data``, or the error reply it gets instead."""
        if not self._accepting:
            return codec.error_reply(ErrorCode.DAEMON_SHUTTING_DOWN, "skiffyd is shutting down")
        try:
            decoded = codec.decode_request(data)
        except Exception as exc:  # a decoder bug must not take the server down
            self._log.error("ipc.decode_crashed", error_type=type(exc).__name__, size=len(data))
            return codec.error_reply(ErrorCode.IPC_MALFORMED, "request could not be decoded")
        if isinstance(decoded, ErrorInfo):
            self._log.info("ipc.bad_request", code=decoded.code, size=len(data))
            return codec.encode_reply(ipc_schema.Reply(error=decoded))
        return decoded

    async def _handle(self, request: ipc_schema.Request) -> bytes:
        self._in_flight += 1
        if self._in_flight == 1:
            self._idle = trio.Event()
        try:
            return await self._call_handler(request)
        finally:
            self._served += 1
            self._in_flight -= 1
            if not self._in_flight:
                self._idle.set()

    async def _call_handler(self, request: ipc_schema.Request) -> bytes:
        try:
            return _result_reply("handler", await self._handler(request))
        except Exception as exc:
            return self._error_reply(type(request).__struct_config__.tag, exc)

    def _error_reply(self, cmd: object, exc: Exception) -> bytes:
        """The reply for a command whose handler raised ``exc``."""
        skiffy = _skiffy_error(exc)
        if skiffy is not None:
            self._log.info("ipc.command_failed", cmd=cmd, code=skiffy.code)
            try:
                return codec.error_reply(skiffy.code, skiffy.message, skiffy.details)
            except (TypeError, msgspec.EncodeError) as enc_exc:
                exc = enc_exc  # details that do not encode: an internal error
        self._log.error(
            "ipc.command_crashed",
            cmd=cmd,
            error_type=type(exc).__name__,
            where=_where(exc),
        )
        return codec.error_reply(
            ErrorCode.DAEMON_INTERNAL,
            f"internal error in skiffyd while handling `{cmd}` ({type(exc).__name__}); "
            "see the daemon's log",
        )

    # --------------------------------------------------------------- events

    def publish(self, events: Sequence[ipc_schema.Event]) -> None:
        """Queue ``events`` for the subscribers. Never blocks, never raises.

        Callable from the trio thread or from any other thread.
        """
        try:
            accepted = [e for e in events if isinstance(e, _EVENT_TYPES)]
            if len(accepted) != len(events):
                self._log.error("ipc.publish_not_events", dropped=len(events) - len(accepted))
            overflow = len(self._queue) + len(accepted) - MAX_QUEUED_EVENTS
            if overflow > 0:
                for _ in range(min(overflow, len(self._queue))):
                    self._queue.popleft()
                self._dropped_events += overflow
                accepted = accepted[-MAX_QUEUED_EVENTS:]
            self._queue.extend(accepted)
            self._wake_publisher()
        except Exception as exc:
            self._log.error("ipc.publish_failed", error_type=type(exc).__name__)

    def _wake_publisher(self) -> None:
        token = self._token
        if self._wake is None or token is None:
            return  # not running: the queue waits for run()
        try:
            current = trio.lowlevel.current_trio_token()
        except RuntimeError:
            current = None
        if current is token:
            self._set_wake()
        else:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self._set_wake)

    def _set_wake(self) -> None:
        if self._wake is not None:
            self._wake.set()

    async def _publish_loop(self, pub: Any) -> None:
        while True:
            if not self._queue:
                assert self._wake is not None
                await self._wake.wait()
                self._wake = trio.Event()
                continue
            n = min(len(self._queue), MAX_BATCH_EVENTS)
            batch = [self._queue.popleft() for _ in range(n)]
            for frame, count in self._frames(batch):
                try:
                    pub.send(frame, block=False)
                except pynng.TryAgain:
                    self._dropped_events += count
                    continue
                self._published_frames += 1
                self._published_events += count
            await trio.lowlevel.checkpoint()

    def _frames(self, events: list[ipc_schema.Event]) -> Iterator[tuple[bytes, int]]:
        try:
            frame = codec.encode_events(self._instance_id, events)
        except (TypeError, msgspec.EncodeError) as exc:
            if len(events) == 1:
                self._dropped_events += 1
                self._log.error("ipc.event_not_encodable", error_type=type(exc).__name__)
                return
            frame = None
        if frame is not None and (len(frame) <= MAX_EVENT_FRAME_BYTES or len(events) == 1):
            yield frame, len(events)
            return
        half = len(events) // 2
        yield from self._frames(events[:half])
        yield from self._frames(events[half:])

    # ---------------------------------------------------------- statistics

    def statistics(self) -> IpcStatistics:
        return IpcStatistics(
            in_flight=self._in_flight,
            served=self._served,
            refused_peers=self._refused,
            subscribers=self._subscribers,
            queued_events=len(self._queue),
            published_events=self._published_events,
            published_frames=self._published_frames,
            dropped_events=self._dropped_events,
        )


def _result_reply(source: str, result: ipc_schema.Result) -> bytes:
    """The reply frame for ``result``; TypeError if ``source`` gave no Result."""
    if not isinstance(result, _RESULT_TYPES):
        raise TypeError(f"{source} returned {type(result).__name__}, not a Result")
    return codec.result_reply(result)


def _skiffy_error(exc: BaseException) -> SkiffyError | None:
    """The SkiffyError behind ``exc``, also when a nursery wrapped it in a group."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc if isinstance(exc, SkiffyError) else None


def _where(exc: BaseException) -> list[str]:
    """Where an exception was raised, as file:line function; no values, no locals."""
    frames = traceback.extract_tb(exc.__traceback__)[-5:]
    return [f"{Path(f.filename).name}:{f.lineno} {f.name}" for f in frames]


def _nng_error(rv: int) -> str:
    return str(ffi.string(lib.nng_strerror(rv)).decode(errors="replace"))


def _notify_closing(sock: Any) -> None:
    """Tell trio that ``sock``'s receive descriptor (if any) is about to close."""
    try:
        fd = sock.recv_fd
    except pynng.NNGException:
        return  # this socket cannot receive (Pub0)
    trio.lowlevel.notify_closing(fd)


def _remove_socket_file(path: Path, inode: int) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(st.st_mode) and st.st_ino == inode:
        path.unlink(missing_ok=True)
