"""Two versions of skiffyd's ingest path, run alternately on the same corpus.

Usage (from the repository root)::

    git worktree add /tmp/skiffyd-before <commit>
    .venv/bin/python -m tests.bench.ab_ingest /tmp/skiffyd-before . [--rounds 6]

The VM this project is measured on changes speed by ±20% from minute to
minute, so a before/after comparison is only fair when both run in the same
minutes: each round runs each version once per variant, each run in a fresh
interpreter with that checkout first on ``sys.path``. The corpus (the 1,000
rooms x 57 events of ``bench_ingest``) is built once, by this checkout, and
read by both. A run is decode → ``plan_sync`` → ``Cache.apply_sync`` (one
transaction) → EventBatch frames, timed in CPU seconds, in two variants: as
the daemon runs a new cache's first sync (``SyncPlan.initial``: messages
stored, not logged one by one) and with every message logged.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from tests.bench.ingest_corpus import DEFAULT_SEED, make_corpus

#: One run, in a fresh interpreter: argv = checkout, corpus file, cache dir, variant.
_RUN = r"""
import gc, sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from skiffyd.cache import Cache
from skiffyd.core.sync import plan_sync
from skiffyd.core.wire import sync_decoder
from tests.bench.ingest_corpus import OWN_USER
from tests.bench.ingest_inproc import encode_frames, new_key
data = Path(sys.argv[2]).read_bytes()
cache = Cache.open(Path(sys.argv[3]) / "cache.db", new_key(), OWN_USER)
gc.collect()
t = time.process_time()
plan = plan_sync(sync_decoder.decode(data), OWN_USER)
plan.initial = sys.argv[4] == "daemon" and cache.is_empty()
frames = encode_frames(cache.apply_sync(plan))
print(time.process_time() - t)
cache.close()
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("before", type=Path, help="checkout of the version before")
    parser.add_argument("after", type=Path, help="checkout of the version after")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED)
    args = parser.parse_args(argv)
    versions = {"before": args.before.resolve(), "after": args.after.resolve()}
    variants = ("daemon", "logged")
    with tempfile.TemporaryDirectory(prefix="ab-ingest-") as tmp:
        corpus = make_corpus(seed=args.seed)
        corpus_path = Path(tmp) / "corpus.json"
        corpus_path.write_bytes(corpus.data)
        cpu: dict[tuple[str, str], list[float]] = {}
        for i in range(args.rounds):
            for variant in variants:
                for name, checkout in versions.items():
                    cache_dir = Path(tmp) / f"{name}-{variant}-{i}"
                    cache_dir.mkdir()
                    out = subprocess.run(
                        [
                            sys.executable,
                            "-c",
                            _RUN,
                            str(checkout),
                            str(corpus_path),
                            str(cache_dir),
                            variant,
                        ],
                        check=True,
                        capture_output=True,
                        text=True,
                        cwd=checkout,
                    )
                    seconds = float(out.stdout.strip().splitlines()[-1])
                    cpu.setdefault((variant, name), []).append(seconds)
                    print(f"round {i + 1} {variant:6} {name:6} {seconds:.3f} s CPU", flush=True)
    n = corpus.events
    print(f"\n{n:,} events; CPU seconds, min / median of {args.rounds} (events/s)")
    for variant in variants:
        line = []
        for name in versions:
            xs = cpu[(variant, name)]
            lo, med = min(xs), statistics.median(xs)
            line.append(f"{name} {lo:.3f} / {med:.3f} ({n / lo:,.0f} / {n / med:,.0f})")
        before, after = (cpu[(variant, v)] for v in versions)
        speedup = min(before) / min(after), statistics.median(before) / statistics.median(after)
        print(f"{variant:6}  " + "   ".join(line) + f"   x{speedup[0]:.2f} / x{speedup[1]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
