"""Small process helpers shared by the dev environment."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

#: Environment variables that could route a loopback request through a proxy
#: or point a child at the real desktop session. Removed from every child.
SCRUBBED_ENV = (
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "DBUS_SESSION_BUS_ADDRESS",
    "GNOME_KEYRING_CONTROL",
    "PYTHON_KEYRING_BACKEND",
    "KEYRING_PROPERTY_FILE",
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
)


def repo_root() -> Path:
    """The checkout this package lives in (``skiffyd/devenv/`` → two up)."""
    return Path(__file__).resolve().parents[2]


def clean_env(**overrides: str) -> dict[str, str]:
    """A copy of ``os.environ`` without :data:`SCRUBBED_ENV`, plus ``overrides``."""
    env = {k: v for k, v in os.environ.items() if k not in SCRUBBED_ENV}
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost,::1"
    env.update(overrides)
    return env


def no_keyring_env(home: Path) -> dict[str, str]:
    """:func:`clean_env` with HOME and every XDG directory at ``home`` and no
    session bus: a ``skiffyd`` that finds no keyring to use."""
    env = clean_env(
        XDG_RUNTIME_DIR=str(home),
        XDG_DATA_HOME=str(home / "data"),
        XDG_STATE_HOME=str(home / "state"),
        XDG_CONFIG_HOME=str(home / "config"),
        HOME=str(home),
    )
    env.pop("DBUS_SESSION_BUS_ADDRESS", None)
    return env


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def stop_process(proc: subprocess.Popen[Any], *, timeout: float = 10.0) -> int | None:
    """SIGTERM ``proc`` by its PID, SIGKILL it after ``timeout``; reap it.

    Returns its exit status (``None`` only if it could not be reaped).
    """
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                return None
    return proc.returncode


def tail(path: Path, lines: int = 40) -> str:
    """The last ``lines`` lines of a text file, or a note that it is missing."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        return f"({path.name}: {exc.strerror})"
    return "\n".join(text.splitlines()[-lines:])


def wait_exit(proc: subprocess.Popen[Any], timeout: float) -> int | None:
    """Wait up to ``timeout`` for ``proc`` to exit; its status or ``None``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        code = proc.poll()
        if code is not None:
            return code
        time.sleep(0.05)
    return proc.poll()
