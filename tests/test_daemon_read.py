"""Daemon.read: small reads on the event loop's reader, the rest on the cache thread."""

from __future__ import annotations

import secrets
import threading
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from skiffyd.cache import Cache
from skiffyd.cache.store import CacheReader, CacheReads, ReaderBusy
from skiffyd.config import Paths
from skiffyd.daemon import Daemon

if TYPE_CHECKING:
    from pathlib import Path


class _Recording:
    """A reader that notes which thread asked it, then answers or is busy."""

    def __init__(self, inner: CacheReader, *, busy: bool) -> None:
        self.inner, self.busy, self.threads = inner, busy, []

    def read(self, fn: Any) -> Any:
        self.threads.append(threading.get_ident())
        if self.busy:
            raise ReaderBusy
        return self.inner.read(fn)


async def test_small_reads_stay_on_the_loop_and_busy_or_big_ones_take_the_thread(
    tmp_path: Path,
) -> None:
    key = secrets.token_hex(32)
    cache = Cache.open(tmp_path / "c.db", key, "@me:x")
    reader = CacheReader.open(tmp_path / "c.db", key)
    daemon = Daemon(_paths(tmp_path))
    loop_thread = threading.get_ident()
    used: list[int] = []

    def count(c: CacheReads) -> int:
        used.append(threading.get_ident())
        return c.outbox_count()

    try:
        ok = _Recording(reader, busy=False)
        s: Any = SimpleNamespace(reader=ok, cache=cache)
        assert await daemon.read(s, count, small=True) == 0
        assert used == [loop_thread]
        assert ok.threads == [loop_thread]
        assert await daemon.read(s, count, small=False) == 0
        assert used[1] != loop_thread
        assert ok.threads == [loop_thread]

        busy = _Recording(reader, busy=True)
        s = SimpleNamespace(reader=busy, cache=cache)
        assert await daemon.read(s, count, small=True) == 0
        assert busy.threads == [loop_thread]
        assert used[2] != loop_thread
    finally:
        reader.close()
        cache.close()


def _paths(base: Path) -> Paths:
    return Paths(
        config_dir=base / "config",
        data_dir=base / "data",
        state_dir=base / "state",
        runtime_dir=base / "run",
    )
