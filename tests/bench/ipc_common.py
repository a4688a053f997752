"""Shared pieces of the IPC benchmarks: temp dirs, processes, percentiles.

Every benchmark process is started with the ``spawn`` method (no fork of a
process that runs nng threads) and talks to its parent over a
``multiprocessing`` pipe. Sockets live in a fresh ``/tmp/skbench-*`` dir that
is removed at the end.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import platform
import shutil
import signal
import statistics
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from skiffyd.config import Paths

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence

SPAWN = multiprocessing.get_context("spawn")


def bench_paths(base: Path) -> Paths:
    """Short paths (a unix socket path must fit in 107 bytes)."""
    return Paths(
        config_dir=base / "config",
        data_dir=base / "data",
        state_dir=base / "state",
        runtime_dir=base / "run",
    )


@contextlib.contextmanager
def temp_base() -> Iterator[Path]:
    base = Path(tempfile.mkdtemp(prefix="skbench-", dir="/tmp"))
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """The p-th percentile (nearest rank) of already sorted values."""
    if not sorted_values:
        return float("nan")
    k = max(0, min(len(sorted_values) - 1, round(p / 100 * (len(sorted_values) - 1))))
    return sorted_values[k]


def summary_us(latencies_ns: Sequence[int]) -> dict[str, float]:
    """p50 / p90 / p99 / mean of nanosecond latencies, in microseconds."""
    values = sorted(x / 1000 for x in latencies_ns)
    return {
        "n": len(values),
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "mean": statistics.fmean(values) if values else float("nan"),
    }


def machine() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    import msgspec
    import pynng
    import trio
    from pynng import ffi, lib

    return {
        "cpus": os.cpu_count(),
        "cpu": cpu,
        "python": sys.version.split()[0],
        "kernel": platform.release(),
        "nng": ffi.string(lib.nng_version()).decode(),
        "pynng": pynng.__version__,
        "trio": trio.__version__,
        "msgspec": msgspec.__version__,
        # Other work on a shared machine shows up here: compare before trusting a run.
        "loadavg_1m": os.getloadavg()[0],
    }


class Child:
    """A spawned process and the parent's end of its pipe."""

    def __init__(self, target: Callable[..., None], *args: Any) -> None:
        parent, child = SPAWN.Pipe()
        self.conn = parent
        self.proc = SPAWN.Process(target=target, args=(child, *args), daemon=True)
        self.proc.start()
        child.close()

    @property
    def pid(self) -> int:
        assert self.proc.pid is not None
        return self.proc.pid

    def send(self, obj: Any) -> None:
        self.conn.send(obj)

    def recv(self, timeout: float = 60.0) -> Any:
        if not self.conn.poll(timeout):
            raise TimeoutError(f"no answer from {self.proc.name} within {timeout} s")
        return self.conn.recv()

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM (the trio servers stop cleanly on it), then SIGKILL."""
        if self.proc.is_alive() and self.proc.pid is not None:
            os.kill(self.proc.pid, signal.SIGTERM)
            self.proc.join(timeout)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def quiet_logs() -> None:
    """Benchmark servers log nothing below warning (logging is not what is measured)."""
    import logging

    import structlog

    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
