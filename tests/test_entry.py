"""The ``skiffyd`` entry point and what the daemon's start loads."""

from __future__ import annotations

import subprocess
import sys
from typing import TYPE_CHECKING

import structlog

from skiffyd import logs
from skiffyd.devenv.procs import no_keyring_env

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


def _imported(stderr: str) -> set[str]:
    """Module names from ``-X importtime`` output."""
    names = set()
    for line in stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip())
    return names


def test_skiffyd_run_starts_without_the_cli_framework(tmp_path: Path) -> None:
    """``skiffyd run`` goes straight to the daemon: typer, rich and pydantic
    (a fifth of a warm start) are never imported; other verbs still work."""
    env = no_keyring_env(tmp_path)  # the daemon stops at once

    def skiffyd(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-X", "importtime", "-m", "skiffyd", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    run = skiffyd("run")
    assert run.returncode == 78, run.stderr[-2000:]
    imported = _imported(run.stderr)
    assert "skiffyd.daemon" in imported
    assert "trio" in imported
    # ("rich" itself is listed: structlog's attempt, refused by skiffyd.entry.)
    assert not {"typer", "rich.console", "pydantic", "skiffyd.cli"} & imported
    assert run.stderr.strip().splitlines()[-1].startswith("skiffyd: ")

    # The CLI is the same command for every other verb.
    help_run = skiffyd("--help")
    assert help_run.returncode == 0
    assert "run" in help_run.stdout
    assert "typer" in _imported(help_run.stderr)


def test_pretty_logs_show_tracebacks_without_local_variables(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SKIFFY_LOG_FORMAT", "pretty")
    logs.configure("info")
    try:
        access_token = "syt_local_secret_in_a_frame"
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            structlog.get_logger("test").exception("it.failed")
        del access_token
        err = capsys.readouterr().err
    finally:
        monkeypatch.setenv("SKIFFY_LOG_FORMAT", "json")
        logs.configure("info")
    assert "it.failed" in err
    assert "RuntimeError: boom" in err  # the traceback is there
    assert "syt_local_secret_in_a_frame" not in err
