"""The previous command hand-offs, kept only to benchmark against.

:class:`RawIpcServer` is :class:`~skiffyd.ipc.server.IpcServer` with the
command side as it was from 2026-11-22 to 2026-12-01: a Rep0 socket in nng's
*raw* mode driven by its ``recv-fd``, each request's route kept in its nng
header and sent back with the reply through the raw socket's send queue
(which nng forwards to the connection on its own threads, two hand-offs).

:class:`ContextsIpcServer` is :class:`~skiffyd.ipc.server.IpcServer` with the
command side as it was before the raw-socket design: a cooked Rep0 socket and
8 contexts, each in its own trio task doing ``await ctx.arecv()``, the
handler, ``await ctx.asend()``. Each ``arecv``/``asend`` completes through an
nng aio whose callback runs on an nng thread and wakes trio with
``run_sync_soon``. Events, permissions and peer checks are unchanged.

:class:`LoopIpcServer` is the command side as it was on 2026-12-01 before the
command thread: a context per request, on the event loop.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pynng
import trio
from pynng import ffi, lib
from pynng.exceptions import check_err

from skiffyd.ipc.server import NNG_RECV_MAX_BYTES, IpcServer, _nng_error, _Slots

if TYPE_CHECKING:
    from collections.abc import Callable

    import ipc_schema

CONTEXTS = 8
#: The raw design's nng queues and reply retries.
REP_RECV_BUFFER = 128
REP_SEND_BUFFER = 128
REPLY_SEND_TRIES = 1000
REPLY_RETRY_DELAY = 0.001
#: Requests taken in one go before the reader lets other tasks run.
DRAIN_CHECKPOINT = 16


class RawIpcServer(IpcServer):
    #: Command tasks running (the raw design's back pressure).
    _tasks = 0

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
                    nursery.start_soon(self._raw_command, sock, header, request, done)
                if taken % DRAIN_CHECKPOINT == 0:
                    # A long burst still lets the commands (and the rest of
                    # the daemon) run.
                    await trio.lowlevel.checkpoint()

    async def _raw_command(
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


class ContextsIpcServer(IpcServer):
    def _command_socket(self) -> Any:
        return pynng.Rep0(recv_max_size=NNG_RECV_MAX_BYTES)

    async def _serve_commands(self, rep: Any) -> None:
        contexts = [rep.new_context() for _ in range(CONTEXTS)]
        try:
            async with trio.open_nursery() as nursery:
                for ctx in contexts:
                    nursery.start_soon(self._serve_context, ctx)
        finally:
            for ctx in contexts:  # contexts before their socket
                ctx.close()

    async def _serve_context(self, ctx: Any) -> None:
        while True:
            try:
                data: bytes = await ctx.arecv()
            except pynng.Closed:
                return
            request = self._decode(data)
            reply = request if isinstance(request, bytes) else await self._handle(request)
            try:
                await ctx.asend(reply)
            except pynng.Closed:
                return
            except pynng.NNGException:
                pass  # the requester went away


class LoopIpcServer(IpcServer):
    """The command side as it was on 2026-12-01 before the command thread:
    a context per request, received and answered on the event loop.

    One reader task waits for the socket's ``recv-fd`` to turn readable,
    then takes every waiting request into a context of its own with
    receives that never wait (aio timeout 0), calls ``answer_now`` there, on
    the event loop, and sends the reply from the loop's thread. A compact
    copy for the benchmark: the same hand-offs, with the back pressure of
    the current :class:`~skiffyd.ipc.server._Slots` (which waits on a lock
    when all contexts are held: never with the benchmark's 8 UIs).
    """

    async def _serve_commands(self, rep: Any) -> None:
        recv_fd: int = rep.recv_fd
        slots = _Slots(rep.socket, self._max_in_flight, self._reply_dropped)
        self._slots = slots
        try:
            async with trio.open_nursery() as nursery:
                self._commands = nursery
                nursery.start_soon(self._watch_sending, slots)
                taken = 0
                while True:
                    slot = slots.take()
                    assert slot is not None
                    lib.nng_aio_set_timeout(slot._recv, 0)  # never waits
                    got = slot.receive()
                    if isinstance(got, int):
                        slots.put_back(slot)
                        if got == lib.NNG_ETIMEDOUT:  # nothing waiting
                            taken = 0
                            await trio.lowlevel.wait_readable(recv_fd)
                        elif got == lib.NNG_ECLOSED:
                            return
                        else:
                            self._log.warning("ipc.recv_failed", error=_nng_error(got))
                            await trio.sleep(0.01)
                        continue
                    taken += 1
                    request = self._decode(got)
                    if not isinstance(request, bytes) and self._answer_now is not None:
                        request = self._try_answer_now(request) or request
                    if isinstance(request, bytes):
                        self._reply(slot, request)
                        self._release(slot)
                    else:
                        nursery.start_soon(self._command, slot, request)
                    if taken % DRAIN_CHECKPOINT == 0:
                        await trio.lowlevel.checkpoint()
        finally:
            self._commands = None
            slots.close()
