"""`make demo` runs end to end, non-interactively, and leaves nothing running."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from skiffyd.devenv.procs import clean_env

pytestmark = pytest.mark.integration


def processes_mentioning(needle: str) -> list[int]:
    """PIDs whose command line or environment mentions ``needle``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        for name in ("cmdline", "environ"):
            try:
                data = (entry / name).read_bytes()
            except OSError:
                continue
            if needle.encode() in data:
                found.append(int(entry.name))
                break
    return found


def test_demo_runs_and_stops_everything() -> None:
    r = subprocess.run(
        [sys.executable, "-m", "skiffyd.devenv.demo", "--seconds", "3"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        env=clean_env(),
        check=False,
    )
    assert r.returncode == 0, f"demo failed:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    out = r.stdout
    for expected in (
        "$ skiffyd status",
        "$ skiffyd rooms",
        "Welcome to skiffyd",
        "$ skiffyd messages",
        "export XDG_CONFIG_HOME=",
        "$ skiffyd tail",
        "Still here.",
        "demo: stopped everything",
    ):
        assert expected in out, f"{expected!r} missing from the demo's output:\n{out[-3000:]}"
    workdir = re.search(r"demo: working in (\S+)", out)
    ss_dir = re.search(r"Secret Service is up in (\S+)", out)
    assert workdir
    assert ss_dir
    for directory in (workdir.group(1), ss_dir.group(1)):
        assert not processes_mentioning(directory), f"left running: {directory}"
        assert not Path(directory).exists()
