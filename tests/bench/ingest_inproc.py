"""In-process ingest measurements: the anchors, skiffyd's ingest path, incremental syncs, a profile.

Every function here takes the corpus bytes and returns plain numbers (and
writes files only under the directory it is given). Each step is timed alone
as a :class:`Span`: wall time (``time.perf_counter``) and the CPU time of the
thread that runs it (``time.thread_time``). On a shared machine the CPU time
is the stable figure (another process taking the core stretches the wall
time, not the CPU time); the wall time is what a user waits, fsyncs
included. Building inputs (the corpus, a parsed dict for nio, the rows for the
raw apsw anchor) and opening a cache are outside the measured span.

skiffyd code is called as it is, never patched. Where the bench needs to see
inside (SQL statement counts and SQLite VM steps), it registers an apsw
``trace_v2`` callback on the cache's connection, in runs that are not timed.
"""

from __future__ import annotations

import cProfile
import gc
import io
import json
import os
import pstats
import re
import secrets
import statistics
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import apsw
import msgspec

import ipc_schema
from skiffyd.cache import Cache
from skiffyd.cache.store import KEYINGS, PAGE_SIZE, migrate
from skiffyd.core.sync import SyncPlan, plan_sync
from skiffyd.core.wire import sync_decoder
from skiffyd.ipc import codec
from skiffyd.ipc.server import MAX_BATCH_EVENTS
from tests.bench.ingest_corpus import OWN_USER, Corpus

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from pathlib import Path

INSTANCE_ID = "bench-ingest"
_pack = msgspec.msgpack.Encoder().encode


def new_key() -> str:
    return secrets.token_hex(32)


@dataclass(frozen=True)
class Span:
    """Seconds of wall time and of the running thread's CPU time."""

    wall: float
    cpu: float

    def __add__(self, other: Span) -> Span:
        return Span(self.wall + other.wall, self.cpu + other.cpu)

    @staticmethod
    def zero() -> Span:
        return Span(0.0, 0.0)


class Stopwatch:
    def __init__(self) -> None:
        self._wall = time.perf_counter()
        self._cpu = time.thread_time()

    def lap(self) -> Span:
        wall, cpu = time.perf_counter(), time.thread_time()
        span = Span(wall - self._wall, cpu - self._cpu)
        self._wall, self._cpu = wall, cpu
        return span


def clock(fn: Callable[[], Any]) -> tuple[Span, Any]:
    """How long ``fn()`` took (with the GC collected before, as timeit does), and its value."""
    gc.collect()
    watch = Stopwatch()
    value = fn()
    return watch.lap(), value


class GcMeter:
    """Time spent in the cyclic garbage collector while active (``gc.callbacks``)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.collections = [0, 0, 0]
        self._t0 = 0.0

    def _callback(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._t0 = time.perf_counter()
        else:
            self.seconds += time.perf_counter() - self._t0
            self.collections[info["generation"]] += 1

    def __enter__(self) -> GcMeter:
        gc.callbacks.append(self._callback)
        return self

    def __exit__(self, *exc: object) -> None:
        gc.callbacks.remove(self._callback)


def best_of(n: int, fn: Callable[[], Any]) -> Span:
    """The least wall time and the least CPU time of ``n`` runs (each its own minimum)."""
    spans = [clock(fn)[0] for _ in range(n)]
    return Span(min(x.wall for x in spans), min(x.cpu for x in spans))


# ----------------------------------------------------------------- anchors


@dataclass
class Anchors:
    json_loads: Span
    msgspec_decode: Span
    nio_from_dict: Span
    nio_receive_response: Span
    nio_rooms: int
    apsw_rows: int
    apsw_insert: Span
    notes: list[str] = field(default_factory=list)


def message_rows(plan: SyncPlan) -> list[tuple[Any, ...]]:
    """The rows skiffyd's ``messages`` table gets for ``plan``, as its INSERT binds them."""
    stride = 1 << 32
    rows: list[tuple[Any, ...]] = []
    for room in plan.rooms:
        pos = 0
        for item in room.items:
            if not item.visible:
                continue
            rows.append(
                (
                    item.room_id,
                    pos,
                    item.event_id,
                    None,
                    item.type,
                    item.state_key,
                    item.sender,
                    item.ts,
                    _pack(item.content),
                    _pack(item.prev_content) if item.prev_content is not None else None,
                    int(item.redacted),
                    item.reply_to,
                    item.thread_root,
                )
            )
            pos += stride
    return rows


def open_raw(path: Path, key: str) -> apsw.Connection:
    """An apsw connection set up as :meth:`Cache.open` sets up its own, with skiffyd's schema."""
    conn = apsw.Connection(str(path))
    for pragma in KEYINGS[0]:
        conn.execute(pragma.format(key=key))
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("SELECT count(*) FROM sqlite_master").fetchall()
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    migrate(conn)
    return conn


def raw_apsw_insert(rows: list[tuple[Any, ...]], path: Path) -> Span:
    """executemany of ``rows`` into an encrypted cache file, one transaction."""
    conn = open_raw(path, new_key())
    try:

        def insert() -> None:
            with conn:
                conn.executemany(
                    "INSERT INTO messages(room_id, pos, event_id, txn_id, type, state_key, sender, "
                    "ts, status, content, prev_content, redacted, reply_to, thread_root, body, "
                    "msgtype, display) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'sent', ?, ?, ?, ?, ?, '', "
                    "NULL, x'80')",
                    rows,
                )

        span, _ = clock(insert)
    finally:
        conn.close()
    return span


@dataclass
class NioRun:
    from_dict: Span
    receive_response: Span
    #: Rooms in nio's client after receive_response.
    rooms: int
    #: Whether nio's client had encryption on (its receive_response then does olm work).
    olm: bool

    @property
    def total(self) -> Span:
        return self.from_dict + self.receive_response


def nio_run(data: bytes) -> NioRun:
    """nio's ``SyncResponse.from_dict`` and ``Client.receive_response`` on
    ``data``, each timed; the dict is made outside the spans."""
    import nio

    parsed = json.loads(data)
    from_dict, response = clock(lambda: nio.SyncResponse.from_dict(parsed))
    if not isinstance(response, nio.SyncResponse):
        raise RuntimeError(f"nio could not parse the corpus: {response!r}")
    client = nio.Client(OWN_USER, "BENCHDEVICE", store_path="")
    receive, _ = clock(lambda: client.receive_response(response))
    return NioRun(from_dict, receive, len(client.rooms), client.olm is not None)


def anchors(corpus: Corpus, workdir: Path, *, repeat: int = 5) -> Anchors:
    data = corpus.data
    notes: list[str] = []
    json_s = best_of(repeat, lambda: json.loads(data))
    msgspec_s = best_of(repeat, lambda: sync_decoder.decode(data))

    # nio: one run here (its parse is the slow one; the bench alternates more
    # runs with skiffyd's, see nio_run).
    nio = nio_run(data)
    if nio.olm:
        notes.append("nio client has encryption on; receive_response includes olm work")

    plan = plan_sync(sync_decoder.decode(data), OWN_USER)
    rows = message_rows(plan)
    inserts = [raw_apsw_insert(rows, workdir / f"raw-{i}.db") for i in range(3)]
    apsw_s = Span(min(x.wall for x in inserts), min(x.cpu for x in inserts))
    return Anchors(
        json_loads=json_s,
        msgspec_decode=msgspec_s,
        nio_from_dict=nio.from_dict,
        nio_receive_response=nio.receive_response,
        nio_rooms=nio.rooms,
        apsw_rows=len(rows),
        apsw_insert=apsw_s,
        notes=notes,
    )


# --------------------------------------------------------- skiffyd's path


@dataclass
class PipelineRun:
    decode: Span
    plan: Span
    apply: Span
    encode: Span
    #: Responses the plan was applied in (1 unless the one-transaction apply failed).
    transactions: int
    logged_events: int
    frames: int
    frame_bytes: int
    rooms_in_cache: int
    messages_in_cache: int
    error: str | None = None
    #: Of ``total``: seconds in automatic cyclic-GC collections, and their count per generation.
    gc_seconds: float = 0.0
    gc_collections: list[int] = field(default_factory=list)
    events: list[Any] = field(default_factory=list, repr=False)

    @property
    def total(self) -> Span:
        return self.decode + self.plan + self.apply + self.encode


def split_plan(plan: SyncPlan, rooms_per_response: int) -> list[SyncPlan]:
    """The same plan as several responses of ``rooms_per_response`` rooms (the token on the last)."""
    chunks = [
        plan.rooms[i : i + rooms_per_response]
        for i in range(0, len(plan.rooms), rooms_per_response)
    ]
    return [
        SyncPlan(
            next_batch=plan.next_batch if i == len(chunks) - 1 else f"{plan.next_batch}-part{i}",
            rooms=chunk,
            direct=plan.direct if i == 0 else None,
        )
        for i, chunk in enumerate(chunks)
    ]


def encode_frames(events: Sequence[Any]) -> list[bytes]:
    """EventBatch frames of at most MAX_BATCH_EVENTS events, as the Pub0 publisher makes them."""
    return [
        codec.encode_events(INSTANCE_ID, events[i : i + MAX_BATCH_EVENTS])
        for i in range(0, len(events), MAX_BATCH_EVENTS)
    ]


def run_pipeline(
    data: bytes,
    cache_path: Path,
    *,
    rooms_per_response: int | None = None,
    keep_cache: bool = False,
    gc_off: bool = False,
    logged: bool = False,
) -> tuple[PipelineRun, Cache | None]:
    """decode → plan → apply (one transaction per response) → EventBatch frames.

    As the daemon does it (``SyncService``): the first response into an
    empty cache is an initial sync (``SyncPlan.initial``), which logs the
    rooms and members but not each message. ``logged`` makes every message
    logged and published, as a sync into a cache that already holds rooms
    does. With ``rooms_per_response`` the plan is applied as several
    responses (the fallback when one transaction for the whole corpus
    fails). ``gc_off`` disables the cyclic GC for the run (a diagnostic).
    """
    gc.collect()
    if gc_off:
        gc.disable()
    try:
        return _run_pipeline(data, cache_path, rooms_per_response, keep_cache, logged)
    finally:
        gc.enable()


def _run_pipeline(
    data: bytes, cache_path: Path, rooms_per_response: int | None, keep_cache: bool, logged: bool
) -> tuple[PipelineRun, Cache | None]:
    with GcMeter() as meter:
        watch = Stopwatch()
        response = sync_decoder.decode(data)
        decode_s = watch.lap()
        plan = plan_sync(response, OWN_USER)
        plan_s = watch.lap()
    cache = Cache.open(cache_path, new_key(), OWN_USER)
    plans = [plan] if rooms_per_response is None else split_plan(plan, rooms_per_response)

    def apply() -> list[Any]:
        events: list[Any] = []
        for p in plans:
            # skiffyd.matrix.sync: ``since is None and cache.is_empty()``.
            p.initial = not logged and cache.is_empty()
            events.extend(cache.apply_sync(p))
        return events

    error = None
    try:
        with meter:
            watch = Stopwatch()
            events = apply()
            apply_s = watch.lap()
            frames = encode_frames(events)
            encode_s = watch.lap()
    except Exception as exc:
        cache.close()
        error = f"{type(exc).__name__}: {exc}"
        zero = Span.zero()
        return PipelineRun(decode_s, plan_s, zero, zero, len(plans), 0, 0, 0, 0, 0, error), None
    rooms = len(cache.rooms())
    messages = int(cache._conn.execute("SELECT count(*) FROM messages").fetchone()[0])
    run = PipelineRun(
        decode=decode_s,
        plan=plan_s,
        apply=apply_s,
        encode=encode_s,
        transactions=len(plans),
        logged_events=len(events),
        frames=len(frames),
        frame_bytes=sum(len(f) for f in frames),
        rooms_in_cache=rooms,
        messages_in_cache=messages,
        gc_seconds=meter.seconds,
        gc_collections=meter.collections,
        events=events,
    )
    if keep_cache:
        return run, cache
    cache.close()
    return run, None


# ------------------------------------------------------- publish via Pub0


class _QuietLog:
    """A structlog stand-in that drops everything (the bench prints its own lines)."""

    def __getattr__(self, name: str) -> Callable[..., None]:
        return lambda *args, **kwargs: None


@dataclass
class PublishRun:
    seconds: float
    sent: int
    received: int
    frames: int
    dropped: int
    error: str | None = None


def publish_through_pub0(
    events: list[Any], runtime_base: Path, timeout: float = 60.0
) -> PublishRun:
    """Publish ``events`` through a real IpcServer's Pub0 to one Sub0 subscriber.

    Measured: from ``IpcServer.publish`` to the subscriber having received and
    decoded the last event (it counts events, so it knows when it is done).
    """
    import pynng
    import trio

    from skiffyd.config import Paths
    from skiffyd.ipc.server import IpcServer

    paths = Paths(
        config_dir=runtime_base / "config",
        data_dir=runtime_base / "data",
        state_dir=runtime_base / "state",
        runtime_dir=runtime_base / "run",
    )
    expected = len(events)
    got = {"events": 0, "frames": 0, "last": 0.0}
    connected = threading.Event()
    errors: list[str] = []

    def subscribe() -> None:
        try:
            with pynng.Sub0(recv_buffer_size=1024, recv_timeout=int(timeout * 1000)) as sub:
                sub.subscribe(b"")
                sub.dial(f"ipc://{paths.event_socket}", block=True)
                connected.set()
                while got["events"] < expected:
                    frame = sub.recv()
                    got["events"] += len(codec.decode_events(frame).events)
                    got["frames"] += 1
                    got["last"] = time.perf_counter()
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            connected.set()

    async def handler(request: ipc_schema.Request) -> ipc_schema.Result:
        return ipc_schema.OkResult()

    result: dict[str, Any] = {}

    async def main() -> None:
        server = IpcServer(paths, handler, instance_id=INSTANCE_ID, log=_QuietLog())
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            thread = threading.Thread(target=subscribe, name="bench-sub0", daemon=True)
            thread.start()
            with trio.fail_after(10):
                while not connected.is_set() or server.statistics().subscribers < 1:  # noqa: ASYNC110
                    await trio.sleep(0.005)
            gc.collect()
            t0 = time.perf_counter()
            server.publish(events)
            with trio.move_on_after(timeout):
                while thread.is_alive():  # noqa: ASYNC110
                    await trio.sleep(0.001)
            result["t0"] = t0
            result["dropped"] = server.statistics().dropped_events
            nursery.cancel_scope.cancel()

    trio.run(main)
    end = got["last"] or time.perf_counter()
    return PublishRun(
        seconds=end - result["t0"],
        sent=expected,
        received=got["events"],
        frames=got["frames"],
        dropped=result["dropped"],
        error=errors[0] if errors else None,
    )


# ------------------------------------------------------------ SQL tally


_WS = re.compile(r"\s+")


class SqlTally:
    """Per SQL statement: executions, time and SQLite VM steps (apsw trace_v2 PROFILE)."""

    def __init__(self, conn: apsw.Connection) -> None:
        self.conn = conn
        self.by_sql: dict[str, list[int]] = {}

    def _on_profile(self, info: dict[str, Any]) -> None:
        if info.get("trigger"):
            return
        sql = _WS.sub(" ", info["sql"]).strip()
        entry = self.by_sql.setdefault(sql, [0, 0, 0])
        entry[0] += 1
        entry[1] += info.get("nanoseconds", 0)
        entry[2] += info.get("stmt_status", {}).get("SQLITE_STMTSTATUS_VM_STEP", 0)

    def __enter__(self) -> SqlTally:
        self.conn.trace_v2(apsw.SQLITE_TRACE_PROFILE, self._on_profile, id="bench-tally")
        return self

    def __exit__(self, *exc: object) -> None:
        self.conn.trace_v2(0, None, id="bench-tally")

    @property
    def statements(self) -> int:
        return sum(v[0] for v in self.by_sql.values())

    @property
    def vm_steps(self) -> int:
        return sum(v[2] for v in self.by_sql.values())

    def top(self, n: int = 15) -> list[dict[str, Any]]:
        rows = sorted(self.by_sql.items(), key=lambda kv: -kv[1][1])[:n]
        return [
            {"sql": sql[:150], "count": c, "ms": round(ns / 1e6, 1), "vm_steps": steps}
            for sql, (c, ns, steps) in rows
        ]


# ---------------------------------------------------------- incremental


@dataclass
class IncrementalRun:
    account_rooms: int
    samples: int
    median_ms: float
    p90_ms: float
    min_ms: float
    cpu_median_ms: float
    statements_per_sync: float
    vm_steps_per_sync: float
    logged_events_per_sync: float


def incremental(
    accounts: Sequence[tuple[Corpus, Cache]], *, samples: int, warmup: int = 10
) -> list[IncrementalRun]:
    """``samples`` incremental syncs of ONE new message each, per account, interleaved.

    Each sample is decode → plan → apply (one transaction) → EventBatch frame,
    into rooms spread over the account. The accounts take turns sample by
    sample, so that disk noise (each commit waits for an fsync) falls on all
    of them alike. The bodies are built before the clock starts.
    """
    step = 7919  # a prime: visits the rooms in a scattered order

    def bodies(corpus: Corpus, first: int, n: int) -> list[bytes]:
        return [corpus.incremental((i * step) % len(corpus.rooms)) for i in range(first, first + n)]

    def one(cache: Cache, data: bytes) -> int:
        events = cache.apply_sync(plan_sync(sync_decoder.decode(data), OWN_USER))
        encode_frames(events)
        return len(events)

    for corpus, cache in accounts:
        for data in bodies(corpus, 0, warmup):
            one(cache, data)
    planned = [bodies(corpus, warmup, samples) for corpus, _ in accounts]
    times: list[list[Span]] = [[] for _ in accounts]
    logged = [0 for _ in accounts]
    gc.collect()
    for i in range(samples):
        for k, (_, cache) in enumerate(accounts):
            data = planned[k][i]
            watch = Stopwatch()
            logged[k] += one(cache, data)
            times[k].append(watch.lap())
    traced = 20
    runs = []
    for k, (corpus, cache) in enumerate(accounts):
        extra = bodies(corpus, warmup + samples, traced)
        with SqlTally(cache._conn) as tally:
            for data in extra:
                one(cache, data)
        ts = sorted(x.wall for x in times[k])
        runs.append(
            IncrementalRun(
                account_rooms=len(cache.rooms()),
                samples=samples,
                median_ms=statistics.median(ts) * 1000,
                p90_ms=ts[int(len(ts) * 0.9)] * 1000,
                min_ms=ts[0] * 1000,
                cpu_median_ms=statistics.median(x.cpu for x in times[k]) * 1000,
                statements_per_sync=tally.statements / traced,
                vm_steps_per_sync=tally.vm_steps / traced,
                logged_events_per_sync=logged[k] / samples,
            )
        )
    return runs


# -------------------------------------------------------------- profile


@dataclass
class Profile:
    seconds: float
    by_tottime: str
    by_cumulative: str
    sql: list[dict[str, Any]]
    sql_statements: int
    sql_seconds: float
    prof_path: str


def profile(
    data: bytes, workdir: Path, *, rooms_per_response: int | None, top: int = 25
) -> Profile:
    """cProfile of decode → plan → apply → encode on a fresh cache; then an SQL tally run."""
    profiler = cProfile.Profile()
    path = workdir / "profile.db"
    profiler.enable()
    t0 = time.perf_counter()
    run, _ = run_pipeline(data, path, rooms_per_response=rooms_per_response)
    seconds = time.perf_counter() - t0
    profiler.disable()
    if run.error:
        raise RuntimeError(run.error)
    prof_path = workdir / "ingest.prof"
    profiler.dump_stats(prof_path)

    def table(order: str) -> str:
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.strip_dirs().sort_stats(order).print_stats(top)
        text = out.getvalue()
        # Drop pstats' header lines up to the column titles.
        start = text.find("   ncalls")
        return text[start:] if start >= 0 else text

    # An untimed run with the SQL tally (the trace callback costs time itself).
    response = sync_decoder.decode(data)
    plan = plan_sync(response, OWN_USER)
    cache = Cache.open(workdir / "tally.db", new_key(), OWN_USER)
    plans = [plan] if rooms_per_response is None else split_plan(plan, rooms_per_response)
    try:
        with SqlTally(cache._conn) as tally:
            for p in plans:
                p.initial = cache.is_empty()  # as the daemon does (run_pipeline)
                cache.apply_sync(p)
    finally:
        cache.close()
    return Profile(
        seconds=seconds,
        by_tottime=table("tottime"),
        by_cumulative=table("cumulative"),
        sql=tally.top(15),
        sql_statements=tally.statements,
        sql_seconds=sum(v[1] for v in tally.by_sql.values()) / 1e9,
        prof_path=str(prof_path),
    )


def fs_type(path: Path) -> str:
    """The file system ``path`` is on, from /proc/mounts (longest matching mount point)."""
    best = ("", "?")
    try:
        real = os.path.realpath(path)
        with open("/proc/mounts", encoding="utf-8") as mounts:
            for line in mounts:
                parts = line.split()
                if len(parts) >= 3 and real.startswith(parts[1]) and len(parts[1]) > len(best[0]):
                    best = (parts[1], parts[2])
    except OSError:
        pass
    return f"{best[1]} ({best[0]})"


@dataclass
class MemoryBreakdown:
    """Python heap (tracemalloc, MB) held after each stage of one ingest, and the peak."""

    body_mb: float
    after_decode_mb: float
    after_plan_mb: float
    after_apply_mb: float
    after_encode_mb: float
    without_response_mb: float
    peak_mb: float


def memory_breakdown(
    data: bytes, workdir: Path, *, rooms_per_response: int | None
) -> MemoryBreakdown:
    """What the ingest of ``data`` holds in Python memory, stage by stage.

    ``without_response_mb``: what is left when only the events to publish and
    the frames are kept (the decoded response and the plan dropped). SQLite's
    own page cache is not Python memory and is not counted.
    """
    import tracemalloc

    mb = 1024 * 1024
    gc.collect()
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]

        def now() -> float:
            return (tracemalloc.get_traced_memory()[0] - base) / mb

        response: Any = sync_decoder.decode(data)
        after_decode = now()
        plan: Any = plan_sync(response, OWN_USER)
        after_plan = now()
        cache = Cache.open(workdir / "memory.db", new_key(), OWN_USER)
        plans = [plan] if rooms_per_response is None else split_plan(plan, rooms_per_response)
        events: list[Any] = []
        try:
            for p in plans:
                p.initial = cache.is_empty()  # as the daemon does (run_pipeline)
                events.extend(cache.apply_sync(p))
        finally:
            cache.close()
        after_apply = now()
        frames = encode_frames(events)
        after_encode = now()
        del response, plan, plans
        gc.collect()
        without = now()
        peak = (tracemalloc.get_traced_memory()[1] - base) / mb
        del frames, events
    finally:
        tracemalloc.stop()
    return MemoryBreakdown(
        body_mb=len(data) / mb,
        after_decode_mb=after_decode,
        after_plan_mb=after_plan,
        after_apply_mb=after_apply,
        after_encode_mb=after_encode,
        without_response_mb=without,
        peak_mb=peak,
    )


@dataclass
class UnreadPoint:
    unread_from_others: int
    cpu_median_ms: float
    vm_steps_per_sync: float
    unread_count_vm_steps: float


def unread_growth(
    corpus: Corpus, cache: Cache, *, checkpoints: Sequence[int] = (0, 500, 2000), probe: int = 20
) -> list[UnreadPoint]:
    """Cost of one new message in ONE room as its unread messages pile up.

    The room is one with the account's own read receipt (so the cache counts
    the messages after it); every new message comes from another member.
    """
    row = cache._conn.execute(
        "SELECT room_id FROM rooms WHERE read_receipt IS NOT NULL ORDER BY room_id LIMIT 1"
    ).fetchone()
    if row is None:
        return []
    index = next(i for i, r in enumerate(corpus.rooms) if r.room_id == row[0])
    room = corpus.rooms[index]
    others = [m for m in room.members if m != OWN_USER]
    room.members[:] = others  # only messages from others from now on

    def one() -> None:
        plan = plan_sync(sync_decoder.decode(corpus.incremental(index)), OWN_USER)
        encode_frames(cache.apply_sync(plan))

    points = []
    sent = 0
    for target in checkpoints:
        while sent < target:
            one()
            sent += 1
        cpu = []
        with SqlTally(cache._conn) as tally:
            for _ in range(probe):
                t0 = time.thread_time()
                one()
                cpu.append(time.thread_time() - t0)
        counted = sum(v[2] for sql, v in tally.by_sql.items() if sql.startswith("SELECT count(*)"))
        points.append(
            UnreadPoint(
                unread_from_others=sent,
                cpu_median_ms=statistics.median(cpu) * 1000,
                vm_steps_per_sync=tally.vm_steps / probe,
                unread_count_vm_steps=counted / probe,
            )
        )
        sent += probe
    return points
