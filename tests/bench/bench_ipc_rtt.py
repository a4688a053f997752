"""Command round trip over IPC, side by side with a raw pynng echo.

    .venv/bin/python -m tests.bench.bench_ipc_rtt [--requests 3000] [--rounds 3]

Servers, each in its own process, all started once and idle but for the one
being measured:

* ``echo``       the anchor: a blocking pynng ``Rep0`` that sends back what it
                 receives (no trio, no msgpack).
* ``ipc``        skiffyd's :class:`~skiffyd.ipc.server.IpcServer` answering
                 ``Messages`` with 5 messages from memory, at once on its
                 command thread (``answer_now``): the transport and the
                 server alone.
* ``ipc+task``   the same answer from the command handler, in a trio task
                 of its own (the command thread passes the command to the
                 event loop: how every other command is answered).
* ``cache``      the daemon's own IpcServer and handlers (``Daemon.server``)
                 reading the 5 newest of 60 messages from a real encrypted
                 cache file, as the daemon does a small read: answered at
                 once on the server's command thread (``Daemon.answer_now``),
                 through the cache's reader. Nothing is written meanwhile, so after
                 the first read the reader reuses its answer (it checks the
                 writer's count of commits, then answers from memory):
                 the case of UIs reading a room nothing changed in.
* ``cache-miss`` the same with the reader keeping no answers: every request
                 reads SQLite, as the first read after any commit does.
* ``cache+thread`` the same read in a task of its own on the event loop,
                 then on the daemon's cache thread (``trio.to_thread`` with a
                 ``CapacityLimiter(1)``): how big reads go.
* ``cache-follow`` the daemon as in ``cache`` while it writes: every
                 :data:`TICK_S` a new message goes into the room the way a
                 sync puts it there (``Daemon.db(cache.apply_sync, ...)``,
                 then its events are published), and each active UI waits
                 for an event, then reads the room: the first read after
                 each commit, what a UI does when told of a new message.
                 The daemon makes the answers UIs read last again after
                 each write (``Cache.run_then_answer``, ``CacheReader.adopt``).
* ``cache-follow-off`` the same without that (``REFRESH_ANSWERS = 0``): the
                 first read after each commit reads SQLite.

Not run unless named with ``--kinds``:

* ``ipc+thread`` the memory answer through ``trio.to_thread``.
* ``ipc-raw``    ``ipc`` with the command socket as it was until 2026-12-01:
                 Rep0 in raw mode (``tests/bench/ipc_legacy.py``).
* ``cache-raw``  ``cache`` with that raw-mode command socket.
* ``ipc-loop``   ``ipc`` with the command side as it was on 2026-12-01 before
                 the command thread: a context per request, received and
                 answered on the event loop (``recv-fd``).
* ``ipc+task-loop``, ``cache-loop``, ``cache-follow-loop`` ``ipc+task``,
                 ``cache`` and ``cache-follow`` so.
* ``cache-dv``   ``cache`` with the reader as it was until 2026-12-01: it asks
                 SQLite (``PRAGMA data_version``) whether anything changed.
* ``contexts``   the IpcServer design before the raw socket, for comparison:
                 8 Rep0 contexts, each ``await ctx.arecv()`` / ``ctx.asend()``.

Eight UI processes stay connected to the server being measured (each with a
command socket and an event subscription, as a UI has). Two scenarios:

* ``1 of 8 active``: one UI sends requests back to back, the other 7 idle.
* ``8 of 8 active``: all eight send back to back at the same time.

Two clients per UI: ``raw`` (a blocking ``Req0`` sending pre-encoded bytes:
transport and server only) and ``client`` (skiffyd's blocking
:class:`~skiffyd.ipc.client.DaemonClient`: encode, send, receive, decode,
check; what a UI pays). Kinds and scenarios alternate round by round, so
drift on the machine hits all of them alike; the percentiles pool every
round. Prints a table and, with ``--json PATH``, writes the raw summary.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.bench.ipc_common import (
    Child,
    bench_paths,
    cpu_seconds,
    machine,
    quiet_logs,
    summary_us,
    temp_base,
)

if TYPE_CHECKING:
    from collections.abc import Callable

    import ipc_schema

UIS = 8
GOAL_P50_US = 400
ROOM = "!bench:example.org"
#: How often the ``cache-follow`` servers write a message while measured.
TICK_S = 0.002
#: The follow kinds' reads per scenario and round, all active UIs together
#: (one per event, so this many ticks).
FOLLOW_READS = 1000
#: SIGUSR1 starts a follow server's writes, SIGUSR2 stops them: the servers
#: not being measured stay idle.
START_WRITES, STOP_WRITES = signal.SIGUSR1, signal.SIGUSR2


# ------------------------------------------------------------------ servers


def _cached_messages() -> ipc_schema.MessagesResult:
    import ipc_schema as s

    return s.MessagesResult(
        messages=[
            s.MessageInfo(
                event_id=f"$event{i}:example.org",
                room_id=ROOM,
                sender="@alice:example.org",
                body=f"message number {i}, a short line of chat",
                ts=1_700_000_000_000 + i,
                status="sent",
            )
            for i in range(5)
        ]
    )


def serve_echo(conn: Any, base: Path) -> None:
    import pynng

    paths = bench_paths(base)
    paths.ensure_private_dir(paths.runtime_dir)
    with pynng.Rep0(listen=f"ipc://{paths.command_socket}") as rep:
        # UIs also subscribe; SIGTERM's default action ends this process.
        pub = pynng.Pub0(listen=f"ipc://{paths.event_socket}")
        conn.send("ready")
        while pub is not None:
            rep.send(rep.recv())


async def _serve_until_sigterm(conn: Any, server: Any) -> None:
    """Run ``server`` (an IpcServer), say "ready" on ``conn``, stop at SIGTERM."""
    import trio

    with trio.open_signal_receiver(signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            conn.send("ready")
            async for _ in signals:
                nursery.cancel_scope.cancel()
                break


def serve_ipc(conn: Any, base: Path, variant: str) -> None:
    import trio

    import ipc_schema as s
    from skiffyd.ipc.server import IpcServer

    quiet_logs()
    paths = bench_paths(base)
    cached = _cached_messages()
    limiter: trio.CapacityLimiter | None = None

    def lookup(req: s.Messages) -> s.Result:
        assert req.room_id == ROOM
        return cached

    async def handle(req: s.Request) -> s.Result:
        if isinstance(req, s.Messages):
            if variant == "ipc+thread":
                assert limiter is not None
                return await trio.to_thread.run_sync(lookup, req, limiter=limiter)
            return lookup(req)
        if isinstance(req, s.Hello):
            return s.HelloResult(protocol_version=s.PROTOCOL_VERSION, instance_id="b", last_seq=0)
        return s.StatusResult(state="ready")

    server_cls: type[IpcServer] = IpcServer
    if variant == "contexts":
        from tests.bench.ipc_legacy import ContextsIpcServer

        server_cls = ContextsIpcServer
    elif variant == "ipc-raw":
        from tests.bench.ipc_legacy import RawIpcServer

        server_cls = RawIpcServer
    elif variant in ("ipc-loop", "ipc+task-loop"):
        from tests.bench.ipc_legacy import LoopIpcServer

        server_cls = LoopIpcServer

    async def main() -> None:
        nonlocal limiter
        limiter = trio.CapacityLimiter(1)
        now = (
            (lambda req: lookup(req) if isinstance(req, s.Messages) else None)
            if variant in ("ipc", "ipc-raw", "ipc-loop")
            else None
        )
        await _serve_until_sigterm(
            conn, server_cls(paths, handle, instance_id="bench", answer_now=now)
        )

    trio.run(main)


def serve_cache(conn: Any, base: Path, variant: str) -> None:
    import secrets
    from types import SimpleNamespace

    import trio

    import skiffyd.daemon
    from skiffyd.cache import Cache, store
    from skiffyd.cache.store import CacheReader
    from skiffyd.core.sync import RoomSync, SyncPlan
    from skiffyd.core.timeline import classify
    from skiffyd.core.wire import ClientEvent

    quiet_logs()
    paths = bench_paths(base)
    path = base / "cache.db"
    key = secrets.token_hex(32)
    cache = Cache.open(path, key, "@me:example.org")

    def plan(first: int, count: int) -> SyncPlan:
        items = [
            classify(
                ROOM,
                ClientEvent(
                    type="m.room.message",
                    event_id=f"$event{i}:example.org",
                    sender="@alice:example.org",
                    origin_server_ts=1_700_000_000_000 + i,
                    content={
                        "msgtype": "m.text",
                        "body": f"message number {i}, a short line of chat",
                    },
                ),
            )
            for i in range(first, first + count)
        ]
        return SyncPlan(
            next_batch=f"s{first + count}",
            rooms=[
                RoomSync(
                    ROOM,
                    {"membership": "join", "joined_count": 2},
                    items=[i for i in items if i is not None],
                )
            ],
        )

    cache.apply_sync(plan(0, 60))
    if variant == "cache+thread":
        skiffyd.daemon.INLINE_READ_ROWS = 0  # answer_now declines: a task, the thread
    if variant == "cache-follow-off":
        store.REFRESH_ANSWERS = 0  # the daemon makes no answer after a write
    if variant == "cache-raw":
        from tests.bench.ipc_legacy import RawIpcServer

        skiffyd.daemon.IpcServer = RawIpcServer  # type: ignore[attr-defined]
    if variant in ("cache-loop", "cache-follow-loop"):
        from tests.bench.ipc_legacy import LoopIpcServer

        skiffyd.daemon.IpcServer = LoopIpcServer  # type: ignore[attr-defined]
    daemon = skiffyd.daemon.Daemon(paths)
    keep = 0 if variant == "cache-miss" else store.READER_ANSWER_ROWS
    if variant == "cache-dv":  # the reader asks SQLite whether anything changed
        reader = CacheReader.open(path, key, answer_rows=keep)
    else:  # as the daemon's: it counts the writer's commits
        reader = cache.open_reader(key, answer_rows=keep)
    daemon.session = SimpleNamespace(cache=cache, reader=reader)  # type: ignore[assignment]
    if not variant.startswith("cache-follow"):
        # The daemon's own server: its handler and answer_now.
        trio.run(_serve_until_sigterm, conn, daemon.server)
        return

    async def follow() -> None:
        """The server, and a message written every TICK_S while told to."""
        writing = trio.Event()
        n = 60

        async def write() -> None:
            nonlocal n
            while True:
                await writing.wait()
                daemon.publish(await daemon.db(cache.apply_sync, plan(n, 1)))
                n += 1
                await trio.sleep(TICK_S)

        with trio.open_signal_receiver(signal.SIGTERM, START_WRITES, STOP_WRITES) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(daemon.server.run)
                nursery.start_soon(write)
                conn.send("ready")
                async for signum in signals:
                    if signum == START_WRITES:
                        writing.set()
                    elif signum == STOP_WRITES:
                        writing = trio.Event()
                    else:
                        nursery.cancel_scope.cancel()
                        break

    trio.run(follow)


SERVERS: dict[str, Callable[..., None]] = {
    "echo": serve_echo,
    "ipc": serve_ipc,
    "ipc+task": serve_ipc,
    "cache": serve_cache,
    "cache-raw": serve_cache,
    "cache-loop": serve_cache,
    "cache-follow-loop": serve_cache,
    "cache-miss": serve_cache,
    "cache-dv": serve_cache,
    "cache+thread": serve_cache,
    "cache-follow": serve_cache,
    "cache-follow-off": serve_cache,
    "ipc+thread": serve_ipc,
    "ipc-raw": serve_ipc,
    "ipc-loop": serve_ipc,
    "ipc+task-loop": serve_ipc,
    "contexts": serve_ipc,
}


# ---------------------------------------------------------------------- UIs


def _raw_call(sock: Any, frame: bytes) -> Callable[[], None]:
    def once() -> None:
        sock.send(frame)
        sock.recv()

    return once


def _client_call(client: Any, request: Any) -> Callable[[], None]:
    import ipc_schema as s

    def once() -> None:
        client.request_as(request, s.MessagesResult)

    return once


def ui(conn: Any) -> None:
    """One UI process: connects where told, runs request loops when told."""
    import pynng

    import ipc_schema as s
    from skiffyd.ipc import codec
    from skiffyd.ipc.client import DaemonClient

    request = s.Messages(room_id=ROOM, limit=5)
    frame = codec.encode_request(request)
    socks: list[Any] = []
    client: DaemonClient | None = None
    raw: Any = None
    sub: Any = None

    def next_event() -> None:
        """Wait for an event, then skip any queued behind it: the read that
        follows comes right after the latest commit."""
        sub.recv()
        while True:
            try:
                sub.recv(block=False)
            except pynng.TryAgain:
                return

    while True:
        cmd = conn.recv()
        if cmd[0] == "connect":
            paths = bench_paths(Path(cmd[1]))
            raw = pynng.Req0(recv_timeout=10_000, send_timeout=10_000)
            raw.resend_time = -1
            raw.dial(f"ipc://{paths.command_socket}", block=True)
            sub = pynng.Sub0(recv_buffer_size=16)
            sub.subscribe(b"")
            sub.dial(f"ipc://{paths.event_socket}", block=True)
            client = DaemonClient(paths, timeout=10)
            client.connect()
            socks = [raw, sub]
            conn.send("connected")
        elif cmd[0] == "disconnect":
            if client is not None:
                client.close()
            for sock in socks:
                sock.close()
            socks, client, raw, sub = [], None, None, None
            conn.send("disconnected")
        elif cmd[0] == "run":
            _, mode, n, warmup, start_at, follow = cmd
            assert client is not None
            assert raw is not None
            once = _raw_call(raw, frame) if mode == "raw" else _client_call(client, request)
            wait = next_event if follow else (lambda: None)
            for _ in range(warmup):
                wait()
                once()
            # All active UIs start together: sleep, then spin the last 2 ms.
            time.sleep(max(0.0, start_at - time.monotonic() - 0.002))
            while time.monotonic() < start_at:
                pass
            lat: list[int] = []
            clock = time.perf_counter_ns
            t0 = time.monotonic()
            for _ in range(n):
                wait()
                a = clock()
                once()
                lat.append(clock() - a)
            t1 = time.monotonic()
            conn.send((lat, t0, t1))
        elif cmd[0] == "quit":
            return


# -------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    kinds = args.kinds
    host = machine()  # before this benchmark's own processes add to the load
    results: dict[str, dict[str, Any]] = {}
    with temp_base() as base:
        dirs = {kind: base / f"s{i}" for i, kind in enumerate(kinds)}
        servers: list[Child] = []
        uis: list[Child] = []
        try:
            for kind in kinds:
                target = SERVERS[kind]
                extra = () if kind == "echo" else (kind,)
                dirs[kind].mkdir()
                servers.append(Child(target, dirs[kind], *extra))
            uis = [Child(ui) for _ in range(UIS)]
            for child in servers:
                assert child.recv() == "ready"

            pooled: dict[tuple[str, str, str], list[int]] = {}
            rates: dict[tuple[str, str, str], list[float]] = {}
            cpu: dict[tuple[str, str, str], list[float]] = {}
            pids = {kind: child.pid for kind, child in zip(kinds, servers, strict=True)}
            scenarios = [("1 of 8 active", 1), ("8 of 8 active", UIS)]
            modes = ["raw", "client"]
            t_start = time.monotonic()
            for _round in range(args.rounds):
                for kind in kinds:
                    follow = kind.startswith("cache-follow")
                    for u in uis:
                        u.send(("connect", str(dirs[kind])))
                    for u in uis:
                        assert u.recv() == "connected"
                    if follow:
                        os.kill(pids[kind], START_WRITES)
                    time.sleep(0.05)
                    for scenario, active in scenarios:
                        for mode in modes:
                            if kind == "echo" and mode == "client":
                                continue  # the echo does not speak skiffyd's protocol
                            n = (args.follow_reads if follow else args.requests) // active
                            warmup = 20 if follow else args.warmup
                            start_at = time.monotonic() + 0.5
                            for u in uis[:active]:
                                u.send(("run", mode, n, warmup, start_at, follow))
                            time.sleep(0.4)  # warm-ups done; timed loops start at start_at
                            cpu0 = cpu_seconds(pids[kind])
                            outs = [u.recv() for u in uis[:active]]
                            cpu1 = cpu_seconds(pids[kind])
                            key = (kind, scenario, mode)
                            cpu.setdefault(key, []).append((cpu1 - cpu0) / (n * active))
                            pooled.setdefault(key, []).extend(x for o in outs for x in o[0])
                            span = max(o[2] for o in outs) - min(o[1] for o in outs)
                            rates.setdefault(key, []).append(n * active / span)
                    if follow:
                        os.kill(pids[kind], STOP_WRITES)
                    for u in uis:
                        u.send(("disconnect",))
                    for u in uis:
                        assert u.recv() == "disconnected"
            elapsed = time.monotonic() - t_start
        finally:
            for u in uis:
                with contextlib.suppress(BrokenPipeError, OSError):
                    u.send(("quit",))
                u.stop()
            for child in servers:
                child.stop()

    for (kind, scenario, mode), lat in pooled.items():
        stats = summary_us(lat)
        key = (kind, scenario, mode)
        stats["req_per_s"] = sum(rates[key]) / len(rates[key])
        stats["server_cpu_us"] = 1e6 * sum(cpu[key]) / len(cpu[key])
        results.setdefault(scenario, {})[f"{kind}/{mode}"] = stats
    for by_kind in results.values():
        anchor = by_kind["echo/raw"]
        for stats in by_kind.values():
            stats["p50_vs_echo"] = stats["p50"] / anchor["p50"]
            stats["p99_vs_echo"] = stats["p99"] / anchor["p99"]
    return {
        "machine": host,
        "requests": args.requests,
        "rounds": args.rounds,
        "uis": UIS,
        "elapsed_s": elapsed,
        "results": results,
    }


def print_table(report: dict[str, Any]) -> None:
    m = report["machine"]
    print(
        f"# {m['cpus']} CPUs, {m['cpu']}; Python {m['python']}, nng {m['nng']}, "
        f"load {m['loadavg_1m']:.1f} before, {os.getloadavg()[0]:.1f} after (ours included); "
        f"pynng {m['pynng']}, trio {m['trio']}; {report['uis']} UIs connected, "
        f"{report['rounds']} rounds, {report['elapsed_s']:.1f} s"
    )
    for scenario, by_kind in report["results"].items():
        print(f"\n## {scenario}")
        print(
            f"{'server/client':<22} {'p50 µs':>8} {'p90 µs':>8} {'p99 µs':>8} "
            f"{'req/s':>8} {'srv CPU µs':>10} {'p50 /echo':>10} {'p99 /echo':>10}"
        )
        for name, st in by_kind.items():
            print(
                f"{name:<22} {st['p50']:>8.0f} {st['p90']:>8.0f} {st['p99']:>8.0f} "
                f"{st['req_per_s']:>8.0f} {st['server_cpu_us']:>10.0f} "
                f"{st['p50_vs_echo']:>10.2f} {st['p99_vs_echo']:>10.2f}"
            )


def print_goal(report: dict[str, Any]) -> None:
    one = report["results"]["1 of 8 active"]
    for name in (
        "cache/client",
        "cache-miss/client",
        "cache-follow/client",
        "cache-follow-off/client",
        "ipc/client",
    ):
        if name in one:
            p50 = one[name]["p50"]
            print(
                f"goal: p50 < {GOAL_P50_US} µs for a small cached read with {UIS} UIs "
                f"connected ({name}): {p50:.0f} µs, "
                f"{'met' if p50 < GOAL_P50_US else 'NOT met'}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=3000, help="per scenario and round")
    parser.add_argument("--warmup", type=int, default=200)
    parser.add_argument(
        "--follow-reads",
        type=int,
        default=FOLLOW_READS,
        help="per scenario and round, for the cache-follow kinds",
    )
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--kinds",
        nargs="+",
        default=[
            "echo",
            "ipc",
            "ipc+task",
            "cache",
            "cache-miss",
            "cache-follow",
            "cache-follow-off",
            "cache+thread",
        ],
        choices=sorted(SERVERS),
    )
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    if "echo" not in args.kinds:
        args.kinds.insert(0, "echo")
    report = run(args)
    print_table(report)
    print_goal(report)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
