"""Event fan-out: one IpcServer, 10 subscriber processes, and one slow one.

    .venv/bin/python -m tests.bench.bench_ipc_fanout [--events 200000] [--rate 50000]

A daemon process runs a real :class:`~skiffyd.ipc.server.IpcServer` whose
command handler answers ``Hello`` and ``ChangesSince`` from an in-memory change
log, and a producer task that appends synthetic ``MessageAdded`` events (with
a global ``seq``) to that log and publishes them, the way the sync service publishes what it
wrote to the cache: ``rate`` events/s in ticks of
``--tick`` seconds (one ``publish()`` per tick), or as fast as it can
(``--rate 0``: chunks of ``--chunk`` events, the event loop yielding between
them).

Subscribers are separate processes, each reading through the client library's
:class:`~skiffyd.ipc.client.EventSubscriber` (decode, gap detection,
``ChangesSince`` catch-up) and counting what it yields. A phase starts at a
known seq, so a subscriber ends when it has yielded the phase's last seq and
then checks that it saw every seq of the phase exactly once, in order. The
slow subscriber sleeps ``--slow-sleep`` seconds per event: it falls far
behind, nng drops frames for it, and it must still end with every seq exactly
once through the catch-up.

Phases (each publishes ``--events`` new events):

* ``paced``       10 subscribers, producer at ``--rate``
* ``paced+slow``  the same plus the slow subscriber
* ``max``         10 subscribers, producer unpaced
* ``max+slow``    the same plus the slow subscriber

Reported per phase: the producer's rate (events handed to ``publish()`` per
second), the publisher's rate (events sent on Pub0 per second, from the first
publish until the queue is empty), frames and dropped events at the daemon,
each subscriber's events/s (first to last event it yielded) and how many of
its events came through the catch-up, and the slow subscriber's totals.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.ipc_common import Child, bench_paths, machine, quiet_logs, temp_base

PHASES = ["paced", "paced+slow", "max", "max+slow"]
GOAL_EVENTS_PER_S = 20_000


# ------------------------------------------------------------------- daemon


def _peak_rss_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def daemon(conn: Any, base: Path, tuning: dict[str, int]) -> None:
    import trio

    import ipc_schema as s
    from skiffyd.ipc import server as server_module
    from skiffyd.ipc.server import IpcServer

    quiet_logs()
    for name, value in tuning.items():
        setattr(server_module, name, value)
    paths = bench_paths(base)
    # The change log is virtual: event ``seq`` is ``make(seq)``, built again
    # when a subscriber asks for it (as the daemon reads rows back from its
    # cache), so no phase holds its events in memory.
    log = {"last": 0}
    changes = {"requests": 0, "events": 0}

    def make(seq: int) -> s.MessageAdded:
        return s.MessageAdded(
            seq=seq,
            message=s.MessageInfo(
                event_id=f"$e{seq}:example.org",
                room_id=f"!room{seq % 50}:example.org",
                sender="@alice:example.org",
                body=f"message {seq}: a typical short line of chat",
                ts=1_700_000_000_000 + seq,
                status="sent",
            ),
        )

    async def handle(req: s.Request) -> s.Result:
        last = log["last"]
        if isinstance(req, s.ChangesSince):
            changes["requests"] += 1
            if req.seq > last or req.seq < 0:
                return s.ChangesResult(events=[], last_seq=last, reset=True)
            upto = min(last, req.seq + max(1, min(req.limit, 10_000)))
            events: list[s.LoggedEvent] = [make(seq) for seq in range(req.seq + 1, upto + 1)]
            changes["events"] += len(events)
            return s.ChangesResult(events=events, last_seq=last, more=upto < last)
        if isinstance(req, s.Hello):
            return s.HelloResult(
                protocol_version=s.PROTOCOL_VERSION, instance_id="bench", last_seq=last
            )
        return s.StatusResult(state="ready", last_seq=last)

    async def phase(server: IpcServer, cmd: dict[str, Any]) -> dict[str, Any]:
        with trio.fail_after(30):
            while server.statistics().subscribers != cmd["subscribers"]:  # noqa: ASYNC110
                await trio.sleep(0.01)
        await trio.sleep(0.2)  # let the subscribers' start-up requests settle
        before = server.statistics()
        changes.update(requests=0, events=0)
        start = log["last"]
        end = start + cmd["events"]
        rate, tick, chunk = cmd["rate"], cmd["tick"], cmd["chunk"]
        t0 = time.monotonic()
        while log["last"] < end:
            first = log["last"] + 1
            if rate:
                due = min(end, start + int((time.monotonic() - t0) * rate) + 1)
            else:
                due = min(end, first + chunk - 1)
            batch: list[s.Event] = [make(seq) for seq in range(first, due + 1)]
            log["last"] = due
            server.publish(batch)
            if rate:
                await trio.sleep(tick)
            else:
                await trio.lowlevel.checkpoint()
        t_produced = time.monotonic()
        while server.statistics().queued_events:  # noqa: ASYNC110
            await trio.sleep(0.001)
        t_sent = time.monotonic()
        # Serve catch-ups until the parent says the phase is over.
        await trio.to_thread.run_sync(conn.recv)
        after = server.statistics()
        return {
            "start": start,
            "end": end,
            "produce_s": t_produced - t0,
            "publish_s": t_sent - t0,
            "published_events": after.published_events - before.published_events,
            "published_frames": after.published_frames - before.published_frames,
            "dropped_events": after.dropped_events - before.dropped_events,
            "changes_requests": changes["requests"],
            "changes_events": changes["events"],
            "peak_rss_mb": _peak_rss_mb(),
        }

    async def main() -> None:
        server = IpcServer(paths, handle, instance_id="bench")
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            conn.send("ready")
            while True:
                cmd = await trio.to_thread.run_sync(conn.recv)
                if cmd["op"] == "quit":
                    break
                if cmd["op"] == "start":
                    conn.send(log["last"])
                    conn.send(await phase(server, cmd))
            nursery.cancel_scope.cancel()

    trio.run(main)


# -------------------------------------------------------------- subscribers


def subscriber(conn: Any, base: Path, slow_sleep: float, recv_buffer: int | None) -> None:
    import gc

    from skiffyd.ipc import client
    from skiffyd.ipc.client import EventSubscriber

    if recv_buffer is not None:
        client.SUB_RECV_BUFFER = recv_buffer
    paths = bench_paths(base)
    sleep = time.sleep
    while True:
        cmd = conn.recv()
        if cmd["op"] == "quit":
            return
        start, end = cmd["start"], cmd["end"]
        with EventSubscriber(paths, timeout=30, poll_interval=0.05) as sub:
            sub.connect()
            conn.send("subscribed")
            seqs: list[int] = []
            t_first = t_last = 0.0
            gc.disable()  # the counting loop allocates nothing that cycles
            try:
                for event in sub.iter_events(since_seq=start, idle_timeout=20):
                    seqs.append(event.seq)
                    if slow_sleep:
                        sleep(slow_sleep)
                    if event.seq >= end:
                        break
                    if len(seqs) == 1:
                        t_first = time.monotonic()
                t_last = time.monotonic()
            finally:
                gc.enable()
            stats = sub.statistics()
        conn.send(
            {
                "events": len(seqs),
                "exactly_once": seqs == list(range(start + 1, end + 1)),
                "seconds": t_last - t_first,
                "rate": (len(seqs) - 1) / (t_last - t_first) if t_last > t_first else 0.0,
                "frames": stats.frames,
                "from_frames": stats.published_events,
                "caught_up": stats.caught_up_events,
                "catch_up_requests": stats.catch_up_requests,
                "duplicates": stats.duplicates,
                "resets": stats.resets,
                "peak_rss_mb": _peak_rss_mb(),
            }
        )


# --------------------------------------------------------------------- main


def run(args: argparse.Namespace) -> dict[str, Any]:
    phases: dict[str, Any] = {}
    host = machine()  # before this benchmark's own processes add to the load
    t_start = time.monotonic()
    with temp_base() as base:
        tuning = {
            name: value
            for name, value in (
                ("PUB_SEND_BUFFER", args.pub_send_buffer),
                ("MAX_BATCH_EVENTS", args.max_batch),
            )
            if value is not None
        }
        d = Child(daemon, base, tuning)
        subs: list[Child] = []
        slow: Child | None = None
        try:
            subs = [
                Child(subscriber, base, 0.0, args.sub_recv_buffer) for _ in range(args.subscribers)
            ]
            slow = Child(subscriber, base, args.slow_sleep, args.sub_recv_buffer)
            assert d.recv() == "ready"
            print_header(args)
            for name in args.phases:
                with_slow = name.endswith("+slow")
                members = subs + ([slow] if with_slow else [])
                d.send(
                    {
                        "op": "start",
                        "subscribers": len(members),
                        "events": args.events,
                        "rate": 0 if name.startswith("max") else args.rate,
                        "tick": args.tick,
                        "chunk": args.chunk,
                    }
                )
                start = d.recv()
                end = start + args.events
                for child in members:
                    child.send({"op": "phase", "start": start, "end": end})
                for child in members:
                    assert child.recv() == "subscribed"
                results = [child.recv(timeout=120) for child in members]
                d.send("phase over")
                server = d.recv()
                fast = results[: len(subs)]
                rates = [r["rate"] for r in fast]
                phases[name] = {
                    "producer_rate": args.events / server["produce_s"],
                    "publisher_rate": server["published_events"] / server["publish_s"],
                    "server": server,
                    "fast_min_rate": min(rates),
                    "fast_median_rate": sorted(rates)[len(rates) // 2],
                    "fast_max_rate": max(rates),
                    "fast_all_exactly_once": all(r["exactly_once"] for r in fast),
                    "fast_caught_up": sum(r["caught_up"] for r in fast),
                    "fast": fast,
                    "slow": results[len(subs)] if with_slow else None,
                }
                print_phase(name, phases[name], args)
        finally:
            for child in [*subs, *([slow] if slow else [])]:
                with contextlib.suppress(OSError):
                    child.send({"op": "quit"})
                child.stop()
            with contextlib.suppress(OSError):
                d.send({"op": "quit"})
            d.stop()
    return {
        "machine": host,
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "elapsed_s": time.monotonic() - t_start,
        "phases": phases,
    }


def print_header(args: argparse.Namespace) -> None:
    print(
        f"{'phase':<11} {'producer/s':>10} {'publisher/s':>11} {'frames':>6} "
        f"| {args.subscribers} subscribers: {'min/s':>8} {'median/s':>8} {'max/s':>8} "
        f"{'caught up':>9} {'exact':>5} | peak RSS MB: daemon, subscriber"
    )


def print_phase(name: str, p: dict[str, Any], args: argparse.Namespace) -> None:
    srv = p["server"]
    fast_rss = max(r["peak_rss_mb"] for r in p["fast"])
    print(
        f"{name:<11} {p['producer_rate']:>10,.0f} {p['publisher_rate']:>11,.0f} "
        f"{srv['published_frames']:>6} | {'':>15}{p['fast_min_rate']:>8,.0f} "
        f"{p['fast_median_rate']:>8,.0f} {p['fast_max_rate']:>8,.0f} "
        f"{p['fast_caught_up']:>9} {'yes' if p['fast_all_exactly_once'] else 'NO':>5} | "
        f"{srv['peak_rss_mb']:.0f}, {fast_rss:.0f}"
    )
    slow = p["slow"]
    if slow is not None:
        print(
            f"{'':<11} slow subscriber: {slow['events']:,} events in {slow['seconds']:.1f} s "
            f"({slow['rate']:,.0f}/s): {slow['from_frames']:,} from frames, "
            f"{slow['caught_up']:,} caught up in {slow['catch_up_requests']} requests, "
            f"exactly once: {'yes' if slow['exactly_once'] else 'NO'}, "
            f"peak RSS {slow['peak_rss_mb']:.0f} MB"
        )
    sys.stdout.flush()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=150_000, help="per phase")
    parser.add_argument("--rate", type=int, default=50_000, help="events/s of the paced phases")
    parser.add_argument("--tick", type=float, default=0.005, help="seconds between publishes")
    parser.add_argument("--chunk", type=int, default=500, help="events per publish, unpaced")
    parser.add_argument("--subscribers", type=int, default=10)
    parser.add_argument("--slow-sleep", type=float, default=0.00005, help="seconds per event")
    parser.add_argument("--phases", nargs="+", default=PHASES, choices=PHASES)
    tuning = parser.add_argument_group("tuning (default: skiffyd's own settings)")
    tuning.add_argument("--sub-recv-buffer", type=int, help="client.SUB_RECV_BUFFER (frames)")
    tuning.add_argument("--pub-send-buffer", type=int, help="server.PUB_SEND_BUFFER (frames)")
    tuning.add_argument("--max-batch", type=int, help="server.MAX_BATCH_EVENTS")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    report = run(args)
    m = report["machine"]
    print(
        f"# {m['cpus']} CPUs, {m['cpu']}; Python {m['python']}, nng {m['nng']}, "
        f"load {m['loadavg_1m']:.1f} before, {os.getloadavg()[0]:.1f} after (ours included); "
        f"pynng {m['pynng']}; {report['elapsed_s']:.1f} s"
    )
    ok = all(
        p["fast_all_exactly_once"] and (p["slow"] is None or p["slow"]["exactly_once"])
        for p in report["phases"].values()
    )
    slowest = min(p["fast_min_rate"] for p in report["phases"].values())
    print(
        f"goal: each of {args.subscribers} subscribers >= {GOAL_EVENTS_PER_S:,} events/s: "
        f"slowest {slowest:,.0f}/s ({'met' if slowest >= GOAL_EVENTS_PER_S else 'NOT met'}); "
        f"every subscriber, the slow one included, saw every seq exactly once: "
        f"{'yes' if ok else 'NO'}"
    )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
