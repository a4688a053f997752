"""The previous command hand-off, kept only to benchmark against.

:class:`ContextsIpcServer` is :class:`~skiffyd.ipc.server.IpcServer` with the
command side as it was before the raw-socket design: a cooked Rep0 socket and
8 contexts, each in its own trio task doing ``await ctx.arecv()``, the
handler, ``await ctx.asend()``. Each ``arecv``/``asend`` completes through an
nng aio whose callback runs on an nng thread and wakes trio with
``run_sync_soon``. Events, permissions and peer checks are unchanged.
"""

from __future__ import annotations

from typing import Any

import pynng
import trio

from skiffyd.ipc.server import NNG_RECV_MAX_BYTES, IpcServer

CONTEXTS = 8


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
