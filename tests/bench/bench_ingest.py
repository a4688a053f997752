"""``make bench``: skiffyd's sync ingest against its anchors, side by side, in one run.

Usage (from the repository root, with the project's virtual environment)::

    .venv/bin/python -m tests.bench.bench_ingest [--rooms 1000] [--events-per-room 57]
        [--seed N] [--incremental-samples 200] [--no-daemon] [--no-profile]
        [--json results.json] [--keep DIR]

Everything runs on ONE synthetic initial /sync (:mod:`tests.bench.ingest_corpus`,
deterministic for a seed):

1. anchors: ``json.loads``; ``msgspec`` decode into skiffyd's ``SyncResponse``;
   nio ``SyncResponse.from_dict`` and ``Client.receive_response``; raw apsw
   inserts of the same message rows into an encrypted file, one transaction;
2. skiffyd's ingest path: decode → ``plan_sync`` → ``Cache.apply_sync`` (one
   transaction, change log) → EventBatch frames (``skiffyd.ipc.codec``), and a
   publish through a real ``IpcServer`` Pub0 to one subscriber; as the daemon
   does it (a new cache's first sync does not log each message), and with
   every message logged, alternately;
3. incremental syncs of ONE new message into that account and into a 10-room
   account (median of many; SQL statements and SQLite VM steps per sync);
4. a real daemon against a fake homeserver: login → ready, peak RSS, warm
   start from the cache with no network (:mod:`tests.bench.ingest_daemon`);
5. a cProfile of skiffyd's ingest path and an SQL tally.

Bounded: about a minute on 2 cores; every server binds 127.0.0.1 or a unix
socket in a temporary directory, and every process is stopped by its PID.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from tests.bench import ingest_inproc as inproc
from tests.bench.ingest_corpus import DEFAULT_SEED, make_corpus
from tests.bench.ingest_inproc import Span

#: If one transaction for the whole initial sync fails, apply it as responses of this many rooms.
FALLBACK_ROOMS_PER_RESPONSE = 500
GOAL_EVENTS_PER_S = 50_000
GOAL_RSS_MB = 150
GOAL_WARM_START_S = 1.0


def rate(events: int, seconds: float) -> float:
    return events / seconds if seconds > 0 else float("inf")


def rates(events: int, span: Span) -> dict[str, float]:
    return {"wall": rate(events, span.wall), "cpu": rate(events, span.cpu)}


def span_text(span: Span) -> str:
    return f"{span.wall:.3f}/{span.cpu:.3f}"


def rates_text(events: int, span: Span) -> str:
    r = rates(events, span)
    return f"{r['wall']:>10,.0f} / {r['cpu']:>10,.0f} events/s"


def machine() -> dict[str, Any]:
    cpu = "?"
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    mem_kib = 0
    try:
        with open("/proc/meminfo", encoding="utf-8") as f:
            mem_kib = int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    import apsw
    import msgspec
    import nio

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(mem_kib / 1024 / 1024, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "msgspec": msgspec.__version__,
        "apsw": apsw.apsw_version(),
        "sqlite": apsw.sqlite_lib_version(),
        "nio": getattr(nio, "__version__", "0.26"),
    }


def section(title: str) -> None:
    print(f"\n== {title} " + "=" * max(0, 74 - len(title)), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="skiffyd ingest benchmarks (see module doc)")
    parser.add_argument("--rooms", type=int, default=1000)
    parser.add_argument("--events-per-room", type=int, default=57)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    parser.add_argument(
        "--repeat",
        type=int,
        default=5,
        help="runs of each variant of skiffyd's whole path (the best counts: the VM drifts)",
    )
    parser.add_argument(
        "--nio-runs",
        type=int,
        help="runs of nio's parse, each before a round of skiffyd's runs "
        "(default: as many as --repeat; the best counts, as for skiffyd's)",
    )
    parser.add_argument("--incremental-samples", type=int, default=200)
    parser.add_argument("--no-daemon", action="store_true", help="skip the real-daemon part")
    parser.add_argument("--no-profile", action="store_true", help="skip the profile")
    parser.add_argument("--json", type=Path, help="also write the results as JSON here")
    parser.add_argument("--keep", type=Path, help="keep the work files (profile, logs) here")
    parser.add_argument("--tmp", type=Path, help="where the cache files go (default: $TMPDIR)")
    args = parser.parse_args(argv)

    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine()}
    workdir = Path(tempfile.mkdtemp(prefix="skbench-", dir=args.tmp))
    try:
        return _run(args, workdir, results, started)
    finally:
        if args.keep is not None:
            args.keep.mkdir(parents=True, exist_ok=True)
            for p in workdir.iterdir():
                if p.suffix in (".prof", ".log", ".txt"):
                    shutil.copy2(p, args.keep / p.name)
        shutil.rmtree(workdir, ignore_errors=True)
        if args.json is not None:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(results, indent=2, default=str) + "\n")
            print(f"\nresults written to {args.json}")


def _nio_pairs(
    n: int, nio_totals: list[Span], daemon_runs: list[inproc.PipelineRun]
) -> dict[str, Any]:
    """Print and return skiffyd's speed over nio's, run by run: nio's run k
    against the daemon variant's run k (the runs right after it)."""
    pairs = [
        (x.cpu, r.total.cpu, x.cpu / r.total.cpu)
        for x, r in zip(nio_totals, daemon_runs, strict=False)
        if r.total.cpu > 0
    ]
    print(f"\nnio from_dict + receive_response, {len(nio_totals)} runs, each before a round:")
    for k, (nio_cpu, ours_cpu, ratio) in enumerate(pairs):
        print(
            f"  round {k + 1}: nio {nio_cpu:.2f} s CPU ({rate(n, nio_cpu):,.0f} events/s), "
            f"skiffyd (daemon) {ours_cpu:.3f} s → {ratio:.2f}x"
        )
    ratios = [p[2] for p in pairs]
    if ratios:
        print(
            f"  paired ratio, CPU: median {statistics.median(ratios):.2f}x, "
            f"lowest {min(ratios):.2f}x, highest {max(ratios):.2f}x"
        )
    return {
        "pairs": [{"nio_cpu": a, "skiffyd_cpu": b, "ratio": c} for a, b, c in pairs],
        "median_ratio": statistics.median(ratios) if ratios else None,
    }


def _run(args: argparse.Namespace, workdir: Path, results: dict[str, Any], started: float) -> int:
    m = results["machine"]
    section("machine")
    print(f"{m['cpu']} · {m['cores']} cores · {m['memory_gib']} GiB · Python {m['python']}")
    load = os.getloadavg()
    results["load_average_at_start"] = load
    print(
        f"load average at start {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} "
        "(above the core count, other processes share the CPU: read the CPU columns)"
    )
    print(f"msgspec {m['msgspec']} · apsw {m['apsw']} (SQLite {m['sqlite']}) · matrix-nio")
    print(f"cache files on {inproc.fs_type(workdir)}")

    section("corpus")
    t0 = time.perf_counter()
    corpus = make_corpus(args.rooms, args.events_per_room, args.seed)
    corpus.body.clear()  # only the bytes are needed; a big live heap would slow every GC
    n = corpus.events
    print(
        f"{args.rooms} rooms x {args.events_per_room} events = {n:,} events, "
        f"{len(corpus.data) / 1e6:.1f} MB JSON (seed {args.seed}; built in "
        f"{time.perf_counter() - t0:.1f} s)"
    )
    results["corpus"] = {
        "rooms": args.rooms,
        "events_per_room": args.events_per_room,
        "events": n,
        "bytes": len(corpus.data),
        "seed": args.seed,
    }

    # ---------------------------------------------------------- anchors
    section("anchors (same body): seconds wall / CPU, events/s wall / CPU")
    a = inproc.anchors(corpus, workdir)
    apsw_name = f"raw apsw insert, {a.apsw_rows:,} message rows, 1 txn"
    anchor_spans = {
        "json.loads": a.json_loads,
        "msgspec decode → skiffyd SyncResponse": a.msgspec_decode,
        "nio SyncResponse.from_dict": a.nio_from_dict,
        "nio Client.receive_response (parsed)": a.nio_receive_response,
        "nio from_dict + receive_response": a.nio_from_dict + a.nio_receive_response,
        apsw_name: a.apsw_insert,
    }
    for name, span in anchor_spans.items():
        print(f"{name:48} {span_text(span)}  {rates_text(n, span)}")
    print(
        f"{'':48} (raw apsw: {rate(a.apsw_rows, a.apsw_insert.wall):,.0f} rows/s wall; "
        f"nio rooms after receive_response: {a.nio_rooms})"
    )
    for note in a.notes:
        print(f"note: {note}")
    results["anchors"] = {
        name: {"span": dataclasses.asdict(span), "events_per_s": rates(n, span)}
        for name, span in anchor_spans.items()
    } | {"apsw_rows": a.apsw_rows}

    # ------------------------------------------------------ skiffyd path
    section("skiffyd ingest path: decode → plan → apply (1 txn) → change log → EventBatch")
    print(
        "two variants, run alternately: AS THE DAEMON DOES IT (a new cache's first sync logs\n"
        "rooms and members, not each message: UIs read a room's messages when they open it),\n"
        "and EVERY MESSAGE LOGGED (what a sync into a cache that already holds rooms does)"
    )
    variants = {"daemon": False, "logged": True}
    runs: dict[str, list[inproc.PipelineRun]] = {name: [] for name in variants}
    rooms_per_response: int | None = None
    one_txn_error: str | None = None
    big_cache = None
    repeat = max(1, args.repeat)
    # nio's run k goes just before round k (run 0 is the anchors' own), so the
    # ratio can be taken pairwise, each pair in the same minute of the VM.
    nio_totals = [a.nio_from_dict + a.nio_receive_response]
    nio_runs = repeat if args.nio_runs is None else args.nio_runs
    for i in range(repeat):
        if 0 < i < nio_runs:
            nio_totals.append(inproc.nio_run(corpus.data).total)
            print(
                f"   nio run {i + 1} (from_dict + receive_response), wall/CPU s: "
                f"{span_text(nio_totals[-1])}"
            )
        for name, logged in variants.items():
            # The account the incremental syncs use: the daemon's variant.
            keep = i == repeat - 1

            def one(
                db_name: str, per_response: int | None, *, logged: bool = logged, keep: bool = keep
            ) -> Any:
                return inproc.run_pipeline(
                    corpus.data,
                    workdir / db_name,
                    rooms_per_response=per_response,
                    keep_cache=keep and not logged,
                    logged=logged,
                )

            run, cache = one(f"pipeline-{name}-{i}.db", rooms_per_response)
            if run.error and rooms_per_response is None:
                one_txn_error = run.error
                print(f"ONE transaction for the whole response FAILED: {run.error}")
                rooms_per_response = FALLBACK_ROOMS_PER_RESPONSE
                print(
                    f"falling back to responses of {rooms_per_response} rooms "
                    "(one transaction each) to measure the rest of the path"
                )
                run, cache = one(f"pipeline-{name}-{i}-split.db", rooms_per_response)
            if run.error:
                print(f"the ingest path FAILED: {run.error}")
                results["pipeline"] = {"error": run.error}
                return 1
            runs[name].append(run)
            if cache is not None:
                big_cache = cache
            if not keep:
                run.events.clear()  # a big live heap would slow the next run's GC
            print(
                f"{name:>6} run {i + 1} ({run.transactions} txn), wall/CPU s: decode "
                f"{span_text(run.decode)}  plan {span_text(run.plan)}  apply "
                f"{span_text(run.apply)}  encode {span_text(run.encode)}  = {span_text(run.total)}"
            )
            print(
                f"       {rates_text(n, run.total)}; cyclic GC {run.gc_seconds:.3f} s wall in "
                f"{sum(run.gc_collections)} collections ({run.gc_collections[2]} full)"
            )
    best_of = {
        name: Span(min(r.total.wall for r in rs), min(r.total.cpu for r in rs))
        for name, rs in runs.items()
    }
    best = best_of["daemon"]
    best_run = min(runs["daemon"], key=lambda r: r.total.cpu)
    skiffyd = rates(n, best)
    met = "met" if skiffyd["wall"] >= GOAL_EVENTS_PER_S else "NOT met"
    print(
        f"best, as the daemon does it: {span_text(best)} s → {rates_text(n, best)}   "
        f"[goal ≥ {GOAL_EVENTS_PER_S:,} events/s: {met}]"
    )
    logged_best = best_of["logged"]
    logged_run = min(runs["logged"], key=lambda r: r.total.cpu)
    print(f"best, every message logged: {span_text(logged_best)} s → {rates_text(n, logged_best)}")
    for label, r in (("daemon", best_run), ("logged", logged_run)):
        print(
            f"stage rates ({label}, CPU, best run): "
            + " · ".join(
                f"{stage} {rate(n, getattr(r, stage).cpu):,.0f}"
                for stage in ("decode", "plan", "apply", "encode")
            )
            + " events/s"
        )
        print(
            f"  cache: {r.rooms_in_cache} rooms, {r.messages_in_cache:,} timeline rows; "
            f"change log {r.logged_events:,} events in {r.frames} EventBatch frames "
            f"({r.frame_bytes / 1e6:.1f} MB msgpack)"
        )

    nogc, _ = inproc.run_pipeline(
        corpus.data,
        workdir / "pipeline-nogc.db",
        rooms_per_response=rooms_per_response,
        gc_off=True,
    )
    print(
        f"diagnostic, the daemon's variant with the cyclic GC disabled during the run (not a "
        f"skiffyd setting): {span_text(nogc.total)} s → {rates_text(n, nogc.total)} "
        f"(apply {span_text(nogc.apply)} s)"
    )
    nogc.events.clear()

    pubs = {}
    for name in variants:
        pub = inproc.publish_through_pub0(runs[name][-1].events, workdir / f"ipc-{name}")
        pubs[name] = pub
        pub_note = f"; dropped {pub.dropped}" + (f"; error {pub.error}" if pub.error else "")
        print(
            f"publish ({name}) through a real IpcServer Pub0 → 1 subscriber (received and "
            f"decoded): {pub.received:,}/{pub.sent:,} events in {pub.frames} frames, "
            f"{pub.seconds:.3f} s wall ({rate(pub.received, pub.seconds):,.0f} events/s{pub_note})"
        )
    with_pub = best.wall - min(r.encode.wall for r in runs["daemon"]) + pubs["daemon"].seconds
    with_pub_rate = rate(n, with_pub)
    print(
        f"the daemon's variant with the real publish instead of encode: {with_pub:.3f} s wall → "
        f"{with_pub_rate:,.0f} events/s"
    )

    nio_paired = _nio_pairs(n, nio_totals, runs["daemon"])
    nio_best = Span(min(x.wall for x in nio_totals), min(x.cpu for x in nio_totals))
    if len(nio_totals) > 1:
        # The table below compares best with best: nio's best run, not its first.
        anchor_spans["nio from_dict + receive_response"] = nio_best

    ratios: dict[str, dict[str, dict[str, float]]] = {}
    for label, span in (("daemon", best), ("logged", logged_best)):
        print(f"\nratio of skiffyd's path ({label}, best) to each anchor, wall / CPU:")
        ours = rates(n, span)
        ratios[label] = {}
        for name, anchor_span in anchor_spans.items():
            anchor = rates(n, anchor_span)
            ratios[label][name] = {k: ours[k] / anchor[k] for k in ("wall", "cpu")}
            r = ratios[label][name]
            print(f"  vs {name:48} {r['wall']:7.2f}x / {r['cpu']:6.2f}x")

    def runs_json(rs: list[inproc.PipelineRun]) -> list[dict[str, Any]]:
        return [
            {k: v for k, v in dataclasses.asdict(r).items() if k != "events"}
            | {"total": dataclasses.asdict(r.total)}
            for r in rs
        ]

    results["pipeline"] = {
        "one_transaction_error": one_txn_error,
        "rooms_per_response": rooms_per_response,
        "runs": runs_json(runs["daemon"]),
        "best": dataclasses.asdict(best),
        "best_events_per_s": skiffyd,
        "logged_runs": runs_json(runs["logged"]),
        "logged_best": dataclasses.asdict(logged_best),
        "logged_best_events_per_s": rates(n, logged_best),
        "publish": {name: dataclasses.asdict(pub) for name, pub in pubs.items()},
        "with_publish_events_per_s": with_pub_rate,
        "gc_off_diagnostic": {k: v for k, v in dataclasses.asdict(nogc).items() if k != "events"}
        | {"total": dataclasses.asdict(nogc.total)},
        "ratios": ratios,
        "nio_runs": [dataclasses.asdict(x) for x in nio_totals],
        "nio_best": dataclasses.asdict(nio_best),
        "nio_paired": nio_paired,
    }
    for rs in runs.values():
        for r in rs:
            r.events.clear()

    # ------------------------------------------------------ incremental
    section("incremental sync: ONE new message (decode → plan → apply → frame)")
    assert big_cache is not None
    small = make_corpus(10, args.events_per_room, args.seed)
    small_run, small_cache = inproc.run_pipeline(small.data, workdir / "small.db", keep_cache=True)
    incr: list[inproc.IncrementalRun] = []
    try:
        if small_run.error or small_cache is None:
            print(f"10-room account FAILED: {small_run.error}")
            accounts = [(corpus, big_cache)]
        else:
            accounts = [(small, small_cache), (corpus, big_cache)]
        incr = inproc.incremental(accounts, samples=args.incremental_samples)
        unread = inproc.unread_growth(*accounts[0])
    finally:
        big_cache.close()
        if small_cache is not None:
            small_cache.close()
    print(
        f"{'account':>14} {'median ms':>10} {'p90 ms':>8} {'min ms':>8} {'CPU med':>8} "
        f"{'SQL stmts':>10} {'VM steps':>10} {'logged':>7}"
    )
    for r in incr:
        print(
            f"{r.account_rooms:>8} rooms {r.median_ms:10.2f} {r.p90_ms:8.2f} {r.min_ms:8.2f} "
            f"{r.cpu_median_ms:8.2f} "
            f"{r.statements_per_sync:10.1f} {r.vm_steps_per_sync:10.0f} "
            f"{r.logged_events_per_sync:7.1f}"
        )
    if len(incr) == 2:
        print(
            f"{args.rooms}-room / 10-room: median {incr[1].median_ms / incr[0].median_ms:.2f}x "
            f"wall, {incr[1].cpu_median_ms / incr[0].cpu_median_ms:.2f}x CPU, "
            f"VM steps {incr[1].vm_steps_per_sync / max(1.0, incr[0].vm_steps_per_sync):.2f}x "
            f"(samples interleaved; synchronous=FULL, so each commit waits for an fsync)"
        )
    results["incremental"] = [dataclasses.asdict(r) for r in incr]
    if unread:
        print(
            "one room, one new message from another member, as its unread messages pile up "
            "(own read receipt fixed):"
        )
        for u in unread:
            print(
                f"  +{u.unread_from_others:<5} unread: CPU {u.cpu_median_ms:.2f} ms, "
                f"{u.vm_steps_per_sync:,.0f} VM steps/sync, of which the unread "
                f"count(*) {u.unread_count_vm_steps:,.0f}"
            )
        results["unread_growth"] = [dataclasses.asdict(u) for u in unread]

    # ----------------------------------------------------------- daemon
    if not args.no_daemon:
        section("a real daemon (skiffyd run) against the fake homeserver")
        from tests.bench import ingest_daemon

        try:
            d = ingest_daemon.run(corpus, workdir)
        except ingest_daemon.DaemonCrashedError as exc:
            parts = -(-args.rooms // FALLBACK_ROOMS_PER_RESPONSE)
            print(f"with the whole account in ONE /sync response the daemon DIED: {exc}")
            print(f"again, with the fake server sending the initial sync in {parts} responses:")
            results["daemon_one_response_error"] = str(exc)
            d = ingest_daemon.run(corpus, workdir, parts=parts)
        mb = 1024
        peak = d.ready_memory_kib["VmHWM"] / mb
        print(
            f"idle, logged out: VmRSS {d.idle_memory_kib['VmRSS'] / mb:.0f} MB "
            f"(VmHWM {d.idle_memory_kib['VmHWM'] / mb:.0f} MB)"
        )
        server_send = f"{d.server_send_s:.3f} s" if d.server_send_s is not None else "?"
        print(
            f"login → ready: {d.login_to_ready_s:.2f} s wall, the daemon using "
            f"{d.login_to_ready_cpu_s:.2f} s CPU (the `skiffyd login` CLI returned after "
            f"{d.login_cli_s:.2f} s; the fake server spent {server_send} sending the body; "
            f"{d.sync_requests} /sync requests; initial sync in {d.parts} response(s))"
        )
        print(
            f"peak RSS (VmHWM) when ready: {peak:.0f} MB; VmRSS then "
            f"{d.ready_memory_kib['VmRSS'] / mb:.0f} MB, 1 s later "
            f"{d.ready_memory_after_1s_kib['VmRSS'] / mb:.0f} MB   "
            f"[goal < {GOAL_RSS_MB} MB: {'met' if peak < GOAL_RSS_MB else 'NOT met'}]"
        )
        print(f"rooms served after ready: {d.rooms_after_ready}/{d.rooms_expected}")
        print(f"one `skiffyd rooms --json` against the running daemon: {d.cli_rooms_s:.3f} s")
        for w in d.warm:
            ready_log = "?" if w.daemon_ready_log_s is None else f"{w.daemon_ready_log_s:.3f} s"
            print(
                f"warm start, no network ({w.how}): {w.seconds:.3f} s to {w.rooms} rooms "
                f"({w.tries} tries; daemon CPU {w.cpu_s or 0:.2f} s; daemon.ready logged at "
                f"{ready_log}; "
                f"state then: {w.state}; "
                f"VmHWM {w.memory_kib.get('VmHWM', 0) / mb:.0f} MB)"
                + (
                    f"   [goal < {GOAL_WARM_START_S:g} s: "
                    f"{'met' if w.seconds < GOAL_WARM_START_S else 'NOT met'}]"
                )
            )
        ipc_warm = sorted(w.seconds for w in d.warm if w.how.startswith("in-process"))
        if ipc_warm:
            print(
                f"warm start (in-process client): median {statistics.median(ipc_warm):.3f} s "
                f"of {len(ipc_warm)}"
            )
        print(
            f"of which interpreter start + the daemon's imports alone: {d.import_s:.3f} s "
            "(best of 3)"
        )
        for line in d.log_lines:
            print(f"  log: {line[:160]}")
        results["daemon"] = dataclasses.asdict(d)

    # ---------------------------------------------------------- profile
    if not args.no_profile:
        section("profile of skiffyd's ingest path (cProfile; times inflated by the profiler)")
        p = inproc.profile(corpus.data, workdir, rooms_per_response=rooms_per_response)
        print(f"profiled run: {p.seconds:.2f} s\n-- by own time (tottime)")
        print(p.by_tottime.rstrip())
        print("-- by cumulative time")
        print(p.by_cumulative.rstrip())
        print(
            f"-- SQL (apsw trace_v2, separate run): {p.sql_statements:,} statements, "
            f"{p.sql_seconds:.2f} s inside SQLite"
        )
        print(f"{'count':>8} {'ms':>8} {'VM steps':>11}  statement")
        for row in p.sql:
            print(f"{row['count']:>8} {row['ms']:>8} {row['vm_steps']:>11}  {row['sql']}")
        (workdir / "profile.txt").write_text(p.by_tottime + "\n\n" + p.by_cumulative)
        mem = inproc.memory_breakdown(corpus.data, workdir, rooms_per_response=rooms_per_response)
        print(
            f"-- Python heap held during one ingest (tracemalloc, MB; the {mem.body_mb:.1f} MB "
            "body not counted): "
            f"after decode {mem.after_decode_mb:.0f} · after plan {mem.after_plan_mb:.0f} · "
            f"after apply {mem.after_apply_mb:.0f} · after encode {mem.after_encode_mb:.0f} · "
            f"events + frames alone {mem.without_response_mb:.0f} · peak {mem.peak_mb:.0f}"
        )
        results["memory_breakdown_mb"] = dataclasses.asdict(mem)
        results["profile"] = {
            "seconds": p.seconds,
            "sql": p.sql,
            "sql_statements": p.sql_statements,
            "sql_seconds": p.sql_seconds,
        }

    section("done")
    load = os.getloadavg()
    results["load_average_at_end"] = load
    print(
        f"total wall time {time.monotonic() - started:.0f} s; load average at the end "
        f"{load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
