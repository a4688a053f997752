"""The service manager's readiness protocol (sd_notify), without libsystemd.

A no-op when ``NOTIFY_SOCKET`` is unset (not under systemd ``Type=notify``).
"""

from __future__ import annotations

import os
import socket


def notify(*lines: str) -> None:
    address = os.environ.get("NOTIFY_SOCKET")
    if not address:
        return
    if address.startswith("@"):
        address = "\0" + address[1:]
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall("\n".join(lines).encode())
    except OSError:
        # The service manager went away; nothing useful to do.
        return
