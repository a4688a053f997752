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

Commands. The command socket is a (cooked) Rep0 socket, and every request
is received into a Rep0 *context* of its own, which keeps the request's
route back and sends its reply. One plain thread, the *command thread*
(``skiffyd-ipc-commands``), takes the requests: it waits in nng for the next
one (a blocking receive on a free context, with the GIL released), decodes it
(:func:`skiffyd.ipc.codec.decode_request`; a frame that does not decode is
answered at once with its error), and then ``answer_now`` (when given) may
answer it right there: the daemon does so for small reads of the cache,
which a hop to the event loop would cost more than (docs/benchmarks-ipc.md).
``answer_now`` therefore runs on the command thread and must be thread-safe
(the daemon's takes a lock it shares with the event loop). Every other
command is passed to the event loop (``TrioToken.run_sync_soon``) and gets
one trio task there: await the handler, send the reply from its context.
So a command that awaits the network for seconds (login, join, backfill)
holds only its own task and context while every other UI's commands keep
being answered, and a small read is answered even while the event loop is
busy. At most ``max_in_flight`` commands are held at once; beyond that the
command thread takes no more requests and they wait in nng (back pressure).

The contexts' receives and sends go through nng aios *without callbacks*
(:class:`_Slot`): no nng thread calls into Python for a command (the only
callbacks are the per-connection peer checks). A receive completes in nng's
thread and wakes the command thread where it waits; a reply goes onto its
connection from the thread that sends it (the command thread, or the event
loop for a task's reply). Only a reply whose connection is still busy
sending an earlier one (a UI with several commands in flight) is left to
nng, which sends it when the connection frees; its context is not reused
until then (the event loop looks every :data:`SENDING_CHECK_S`), and after
:data:`REPLY_SEND_TIMEOUT_MS` (a UI that stopped reading) nng gives it back
and it is dropped. A thread that fails takes :meth:`IpcServer.run` down with
its exception; cancelling ``run`` closes every context, which ends the
thread's receive, and waits for the thread. While the thread runs, Python's
GIL switch interval is :data:`SWITCH_INTERVAL_S` (see there).

Earlier designs, measured beside this one by ``tests/bench/bench_ipc_rtt.py``
(``docs/benchmarks-ipc.md``; the code in ``tests/bench/ipc_legacy.py``):
Rep0 contexts with ``await ctx.arecv()`` (until 2026-11-22: each
``arecv``/``asend`` completes through a callback on an nng thread that takes
the GIL and wakes trio); a Rep0 socket in raw mode read on the event loop
through ``recv-fd`` (until 2026-12-01: a raw socket's reply goes through its
send queue and nng's forwarder, two hand-offs between nng's threads); a
context per request read on the event loop through ``recv-fd`` (2026-12-01:
every request costs the loop a wake-up, ``epoll`` and trio's scheduling,
~50 µs of round trip and ~100 µs of CPU more than this design).

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

Shutdown. Cancelling :meth:`run` stops the command thread, cancels the
command tasks (their requesters see the connection drop) and the publisher,
then closes the sockets; nng removes the socket files when it closes the
listeners, and ``run`` removes any that are left (only ones it created).
"""

from __future__ import annotations

import contextlib
import os
import stat
import sys
import threading
import time
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
#: Replies nng holds for a connection still busy sending an earlier one (a UI
#: with several commands in flight on one connection), each in its context:
#: beyond this many, no new request is taken until some are sent.
MAX_SENDING = 128
#: How long such a reply may wait for its connection before it is dropped
#: (a UI that stopped reading its socket), ms.
REPLY_SEND_TIMEOUT_MS = 5_000
#: How often the command thread looks whether such replies went out, when
#: it waits for a context (nng does not say when they do).
SENDING_POLL_S = 0.001
#: How often the event loop looks whether they went out otherwise.
SENDING_CHECK_S = 0.1
#: nng's "no timeout" for an aio.
NNG_DURATION_INFINITE = -1
#: Python's GIL switch interval while the command thread runs (Python's
#: default is 5 ms). A thread waiting for the GIL asks its holder to let go
#: only after a whole interval without being woken; an event loop that runs
#: Python for milliseconds with a checkpoint (a brief release) every 0.5-2 ms
#: wakes it each time and re-takes the GIL first, so with 5 ms the command
#: thread could wait as long as the loop stayed busy (measured: a read not
#: answered in 20 s). With 0.2 ms a read waits at most a few ms.
SWITCH_INTERVAL_S = 0.0002
SOCKET_MODE = 0o600

Handler = Callable[[ipc_schema.Request], Awaitable[ipc_schema.Result]]
#: Answers a command at once, on the command thread (with a Result, or with
#: its reply frame already encoded: bytes), or says None (see IpcServer).
AnswerNow = Callable[[ipc_schema.Request], "ipc_schema.Result | bytes | None"]

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
    #: Replies nng held for a while because their connection was still
    #: sending an earlier one (a UI with several commands in flight).
    queued_replies: int
    #: Of those, replies dropped because the connection stayed busy for
    #: REPLY_SEND_TIMEOUT_MS (a UI that stopped reading its socket).
    dropped_replies: int
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
        self._idle = trio.Event()
        self._idle.set()
        self._served = 0  # by the handler, on the event loop
        self._served_now = 0  # by answer_now, on the command thread
        self._refused = 0
        self._dropped_replies = 0  # under the slots' lock
        self._slots: _Slots | None = None
        self._commands: trio.Nursery | None = None  # the command tasks' nursery
        self._sending = trio.Event()
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
        """The command socket: a cooked Rep0 (see the module docstring)."""
        return pynng.Rep0(recv_max_size=NNG_RECV_MAX_BYTES)

    async def _serve_commands(self, rep: Any) -> None:
        """Run the command thread (:meth:`_take_commands`) until cancelled,
        with the tasks of the commands it passes to the event loop."""
        token = trio.lowlevel.current_trio_token()
        slots = _Slots(rep.socket, self._max_in_flight, self._reply_dropped)
        self._slots = slots
        ended = trio.Event()
        failure: list[BaseException] = []

        def run_thread() -> None:
            try:
                self._take_commands(slots, token)
            except BaseException as exc:  # handed to the event loop, raised there
                failure.append(exc)
            finally:
                with contextlib.suppress(trio.RunFinishedError):
                    token.run_sync_soon(ended.set)

        thread = threading.Thread(target=run_thread, name="skiffyd-ipc-commands", daemon=True)
        _lower_switch_interval()
        try:
            async with trio.open_nursery() as nursery:
                self._commands = nursery
                nursery.start_soon(self._watch_sending, slots)
                thread.start()
                try:
                    await ended.wait()
                finally:
                    slots.stop()  # the thread's receive ends; it takes no more
                    with trio.CancelScope(shield=True):
                        await trio.to_thread.run_sync(thread.join)
                if failure:
                    raise failure[0]
                raise DaemonError("the IPC command thread ended")  # only cancelling stops it
        finally:
            self._commands = None
            slots.close()
            _restore_switch_interval()

    def _take_commands(self, slots: _Slots, token: trio.lowlevel.TrioToken) -> None:
        """The command thread: take each request into a context of its own,
        answer it there (an error, or ``answer_now``) or pass it to the event
        loop, until the slots are stopped."""
        while True:
            slot = slots.take()
            if slot is None:
                return  # stopped
            got = slot.receive()
            if isinstance(got, int):
                slots.put_back(slot)
                if slots.stopped or got == lib.NNG_ECLOSED:
                    return
                self._log.warning("ipc.recv_failed", error=_nng_error(got))
                time.sleep(0.01)
                continue
            request = self._decode(got)
            if not isinstance(request, bytes) and self._answer_now is not None:
                request = self._try_answer_now(request) or request
            if isinstance(request, bytes):
                # Answered in this thread: an error, or answer_now's answer.
                self._reply(slot, request)
                if slots.release(slot):
                    token.run_sync_soon(self._poke_sending)
            else:
                token.run_sync_soon(self._start_command, slot, request)

    def _start_command(self, slot: _Slot, request: ipc_schema.Request) -> None:
        """On the event loop: handle ``request`` in a task of its own."""
        nursery = self._commands
        try:
            if nursery is None:
                raise RuntimeError("not serving")
            nursery.start_soon(self._command, slot, request)
        except RuntimeError:  # the server is stopping: no reply
            self._release(slot)

    async def _command(self, slot: _Slot, request: ipc_schema.Request) -> None:
        """Handle ``request`` and reply in its context."""
        try:
            self._reply(slot, await self._handle(request))
        finally:
            self._release(slot)

    def _release(self, slot: _Slot) -> None:
        """On the event loop: ``slot``'s command is done."""
        slots = self._slots
        if slots is not None and slots.release(slot):
            self._poke_sending()

    def _poke_sending(self) -> None:
        """On the event loop: a reply was left to nng; look until it is sent."""
        self._sending.set()

    async def _watch_sending(self, slots: _Slots) -> None:
        """Give back the contexts whose replies nng held, once it sent them
        (nng does not say when: look every :data:`SENDING_CHECK_S`)."""
        while True:
            self._sending = trio.Event()
            if slots.reclaim():
                with trio.move_on_after(SENDING_CHECK_S):
                    await self._sending.wait()
            else:
                await self._sending.wait()

    def _try_answer_now(self, request: ipc_schema.Request) -> bytes | None:
        """``answer_now``'s reply to ``request``, or None when it has none.
        On the command thread."""
        assert self._answer_now is not None
        try:
            result = self._answer_now(request)
            if result is None:
                return None
            reply = result if isinstance(result, bytes) else _result_reply("answer_now", result)
        except Exception as exc:
            reply = self._error_reply(type(request).__struct_config__.tag, exc)
        self._served_now += 1  # only this thread counts these
        return reply

    def _reply(self, slot: _Slot, reply: bytes) -> None:
        """Send ``reply`` from the request's context, without waiting."""
        try:
            slot.send(reply)
        except pynng.NNGException as exc:  # nng out of memory: this reply only
            self._log.error("ipc.reply_failed", error_type=type(exc).__name__)

    def _reply_dropped(self, rv: int) -> None:
        """A reply nng gave back unsent: its connection stayed busy for
        :data:`REPLY_SEND_TIMEOUT_MS` (a UI that stopped reading). Called
        under the slots' lock, from either thread."""
        self._dropped_replies += 1
        self._log.warning("ipc.reply_dropped", error=_nng_error(rv))

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
            served=self._served + self._served_now,
            refused_peers=self._refused,
            queued_replies=self._slots.queued if self._slots is not None else 0,
            dropped_replies=self._dropped_replies,
            subscribers=self._subscribers,
            queued_events=len(self._queue),
            published_events=self._published_events,
            published_frames=self._published_frames,
            dropped_events=self._dropped_events,
        )


class _Slot:
    """One context of the command socket, with a receive and a send aio.

    The aios have no callback, so nng never calls into Python. A receive
    waits in the calling thread (the command thread, with the GIL released)
    until a request comes for this context, nng completing the aio from its
    own thread; it ends with ``NNG_ECLOSED`` when the context is closed
    (:meth:`_Slots.stop`). A send never waits: nng writes the reply to its
    connection in the calling thread when the connection is free; when it is
    still sending an earlier reply, nng queues this one and finishes it later
    on its side, and until then the slot is :attr:`sending` and is not used
    again. A slot belongs to one thread at a time: the command thread while
    it receives and answers, the event loop while a task handles the command.
    """

    __slots__ = ("_ctx", "_pending", "_recv", "_send")

    def __init__(self, sock: Any) -> None:
        ctx = ffi.new("nng_ctx *")
        check_err(lib.nng_ctx_open(ctx, sock))
        aios: list[Any] = []
        try:
            for timeout_ms in (NNG_DURATION_INFINITE, REPLY_SEND_TIMEOUT_MS):
                aio_p = ffi.new("nng_aio **")
                check_err(lib.nng_aio_alloc(aio_p, ffi.NULL, ffi.NULL))
                lib.nng_aio_set_timeout(aio_p[0], timeout_ms)
                aios.append(aio_p[0])
        except BaseException:
            for aio in aios:
                lib.nng_aio_free(aio)
            lib.nng_ctx_close(ctx[0])
            raise
        self._ctx = ctx
        self._recv, self._send = aios
        self._pending = False  # a send was started and not yet looked at

    def receive(self) -> bytes | int:
        """The body of the next request for this context, when it comes, or
        nng's error code (``NNG_ECLOSED``: the context or socket was closed)."""
        aio = self._recv
        lib.nng_ctx_recv(self._ctx[0], aio)
        lib.nng_aio_wait(aio)
        rv: int = lib.nng_aio_result(aio)
        if rv != 0:
            return rv
        msg = lib.nng_aio_get_msg(aio)
        lib.nng_aio_set_msg(aio, ffi.NULL)
        try:
            return bytes(ffi.buffer(lib.nng_msg_body(msg), lib.nng_msg_len(msg)))
        finally:
            lib.nng_msg_free(msg)

    def send(self, reply: bytes) -> None:
        """Send ``reply`` to the request this context received; never waits."""
        msg_p = ffi.new("nng_msg **")
        check_err(lib.nng_msg_alloc(msg_p, 0))
        msg = msg_p[0]
        rv = lib.nng_msg_append(msg, reply, len(reply))
        if rv != 0:
            lib.nng_msg_free(msg)
            check_err(rv)
        lib.nng_aio_set_msg(self._send, msg)
        self._pending = True
        lib.nng_ctx_send(self._ctx[0], self._send)

    @property
    def sending(self) -> bool:
        """Whether nng still holds this context's reply (its connection is busy)."""
        return bool(lib.nng_aio_busy(self._send))

    def sent(self) -> int:
        """Once not :attr:`sending`: how the last send ended (0: sent, or its
        requester is gone), freeing a reply nng gave back unsent."""
        if not self._pending:
            return 0
        self._pending = False
        aio = self._send
        rv: int = lib.nng_aio_result(aio)
        msg = lib.nng_aio_get_msg(aio)
        if msg != ffi.NULL:
            lib.nng_aio_set_msg(aio, ffi.NULL)
            lib.nng_msg_free(msg)
        return rv

    def close_context(self) -> None:
        """Close the context: a receive waiting on it ends with ``NNG_ECLOSED``,
        and so does any later one. Safe from any thread, and twice."""
        lib.nng_ctx_close(self._ctx[0])

    def free(self) -> None:
        """Free the aios; once no thread uses the slot any more."""
        lib.nng_aio_stop(self._recv)
        lib.nng_aio_stop(self._send)  # a queued reply is cancelled
        self.sent()
        lib.nng_aio_free(self._recv)
        lib.nng_aio_free(self._send)


class _Slots:
    """The command socket's contexts: free ones, those holding a command (at
    most ``most``: back pressure beyond), and those whose reply nng still
    holds (at most :data:`MAX_SENDING`). Made as needed, kept for reuse.

    Shared by the command thread (:meth:`take`, :meth:`put_back`,
    :meth:`release`) and the event loop (:meth:`release`, :meth:`reclaim`,
    :meth:`stop`, :meth:`close`), under one lock.
    """

    def __init__(self, sock: Any, most: int, dropped: Callable[[int], None]) -> None:
        self._sock = sock
        self._most = most
        self._dropped = dropped
        self._cond = threading.Condition(threading.Lock())
        self._all: list[_Slot] = []
        self._free: list[_Slot] = []
        self._held = 0
        #: Released, but nng has not sent their reply yet.
        self._sending: list[_Slot] = []
        self.stopped = False
        self._closed = False  # the slots are freed: nothing may touch them
        #: Replies nng held for a while (statistics).
        self.queued = 0

    def take(self) -> _Slot | None:
        """A context for the next request, once one is free; None once stopped.
        Waits (the command thread) while every context holds a command or
        too many replies wait in nng: requests then wait in nng."""
        with self._cond:
            while not self.stopped:
                if self._sending:
                    self._reclaim()
                if self._held < self._most and len(self._sending) < MAX_SENDING:
                    if self._free:
                        slot = self._free.pop()
                    else:
                        slot = _Slot(self._sock)
                        self._all.append(slot)
                    self._held += 1
                    return slot
                # Released contexts wake this; replies going out do not.
                self._cond.wait(SENDING_POLL_S if self._sending else None)
            return None

    def put_back(self, slot: _Slot) -> None:
        """``slot`` was taken, but no request came."""
        with self._cond:
            self._held -= 1
            self._free.append(slot)

    def release(self, slot: _Slot) -> bool:
        """``slot``'s command is done and its reply (if any) handed to nng;
        True if nng holds that reply for its busy connection. (A command
        passed to the event loop as the server stopped may come back after
        :meth:`close`: nothing is left to do.)"""
        with self._cond:
            if self._closed:
                return False
            self._held -= 1
            self._cond.notify()
            if slot.sending:
                self._sending.append(slot)
                self.queued += 1
                return True
            self._reuse(slot)
            return False

    def reclaim(self) -> bool:
        """Take back the contexts whose replies nng has sent; True while
        some are still sending."""
        with self._cond:
            if self._sending:
                self._reclaim()
                self._cond.notify()
            return bool(self._sending)

    def _reclaim(self) -> None:
        still: list[_Slot] = []
        for slot in self._sending:
            if slot.sending:
                still.append(slot)
            else:
                self._reuse(slot)
        self._sending = still

    def _reuse(self, slot: _Slot) -> None:
        rv = slot.sent()
        if rv != 0 and not self.stopped:  # stopping closes the contexts: not a drop
            self._dropped(rv)
        self._free.append(slot)

    def stop(self) -> None:
        """Take no more requests: close every context (a receive waiting on
        one ends) and wake a :meth:`take` waiting for one."""
        with self._cond:
            self.stopped = True
            for slot in self._all:
                slot.close_context()
            self._cond.notify_all()

    def close(self) -> None:
        """Free everything; once the command thread has ended."""
        with self._cond:
            self.stopped = self._closed = True
            for slot in self._all:
                slot.close_context()
                slot.free()
            self._all.clear()
            self._free.clear()
            self._sending.clear()


#: Command threads running in this process, and the switch interval from
#: before the first of them (:data:`SWITCH_INTERVAL_S`).
_switch_lock = threading.Lock()
_switch_users = 0
_switch_before = 0.0


def _lower_switch_interval() -> None:
    global _switch_users, _switch_before
    with _switch_lock:
        if _switch_users == 0:
            _switch_before = sys.getswitchinterval()
            sys.setswitchinterval(min(_switch_before, SWITCH_INTERVAL_S))
        _switch_users += 1


def _restore_switch_interval() -> None:
    """The last command thread to stop puts the interval back."""
    global _switch_users
    with _switch_lock:
        _switch_users -= 1
        if _switch_users == 0:
            sys.setswitchinterval(_switch_before)


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
