"""A tiny fake homeserver on 127.0.0.1: the instrument of the daemon benchmarks.

It is NOT a Matrix homeserver. It answers just enough of the client-server
API for ``skiffyd login`` and the daemon's sync loop to run against a
prepared body, and answers it instantly, so that what a benchmark measures is
skiffyd's own work (HTTP receive, decode, plan, one cache transaction,
publish), not a server's:

* ``GET  /_matrix/client/versions``     a fixed list of versions
* ``POST /_matrix/client/v3/login``     ``m.login.password`` for one user and
  password; anything else answers 403 ``M_FORBIDDEN``
* ``POST /_matrix/client/v3/keys/upload``  ``{"one_time_key_counts": {...}}`` with
  the number of ``signed_curve25519`` keys uploaded so far, as a server
  counts them. (An empty ``{}`` would tell nio that no key was stored, and the
  daemon's upload loop would upload again at once, and again: a CPU spin that
  would spoil the measurement.)
* ``GET  /_matrix/client/v3/sync``      without ``since``: the prepared initial
  body (bytes from a file, sent as they are); with ``since``: after a short
  long-poll (``min(timeout, --long-poll)``) an empty incremental sync.
  With ``--parts N`` the initial body's joined rooms are served in N responses
  instead (the first without ``since``, the others at once for the
  ``next_batch`` of the one before, the account data in the first): a way to
  feed a client that cannot take the whole account in one response.
* ``POST /_matrix/client/v3/logout``    ``{}``
* anything else                         404 ``M_UNRECOGNIZED``

No state is kept but a counter for ``next_batch`` and the one-time key count; the access token is
checked only for being present (``Authorization: Bearer``). It binds
127.0.0.1 only. Each request is logged as one JSON line on stdout with
``time.monotonic()`` at its start and end (CLOCK_MONOTONIC is system-wide on
Linux, so a benchmark in another process can line them up with its own).

Run as a process (the benchmarks do, and stop it by its PID)::

    FAKE_HOMESERVER_PASSWORD=secret python -m tests.bench.fake_homeserver \\
        --body sync.json --user @me:example.org [--port 0] [--long-poll 1.0] [--parts 1]

It prints ``listening http://127.0.0.1:PORT`` as its first line.
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar
from urllib.parse import parse_qs, urlsplit

HOST = "127.0.0.1"
PASSWORD_ENV = "FAKE_HOMESERVER_PASSWORD"
ACCESS_TOKEN = "syt_bench_fake_access_token"
DEVICE_ID = "BENCHDEVICE"


PART_PREFIX = "initial_part"


def split_initial(body: bytes, parts: int) -> list[bytes]:
    """The initial sync as ``parts`` responses, chained by their ``next_batch``."""
    whole = json.loads(body)
    rooms = list(whole["rooms"]["join"].items())
    size = -(-len(rooms) // parts)
    out = []
    for i in range(parts):
        piece = dict(whole)
        piece["rooms"] = {**whole["rooms"], "join": dict(rooms[i * size : (i + 1) * size])}
        if i:
            piece["account_data"] = {"events": []}
        if i < parts - 1:
            piece["next_batch"] = f"{PART_PREFIX}{i + 1}"
        out.append(json.dumps(piece, ensure_ascii=False, separators=(",", ":")).encode())
    return out


def _empty_incremental(next_batch: str) -> dict[str, Any]:
    return {
        "next_batch": next_batch,
        "rooms": {"join": {}, "invite": {}, "leave": {}},
        "account_data": {"events": []},
        "to_device": {"events": []},
        "device_lists": {"changed": [], "left": []},
        "device_one_time_keys_count": {"signed_curve25519": 50},
    }


class FakeHomeserver(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(
        self,
        *,
        initial_body: bytes,
        user_id: str,
        password: str,
        port: int = 0,
        long_poll: float = 1.0,
        parts: int = 1,
        log: Any = None,
    ) -> None:
        super().__init__((HOST, port), _Handler)
        self.initial_parts = split_initial(initial_body, parts) if parts > 1 else [initial_body]
        self.user_id = user_id
        self.password = password
        self.long_poll = long_poll
        self.log = log
        self._batches = itertools.count(1)
        self.one_time_keys = 0
        self.lock = threading.Lock()

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self.server_address[1]}"

    def next_batch(self) -> str:
        return f"fake_{next(self._batches)}"

    def record(self, entry: dict[str, Any]) -> None:
        if self.log is None:
            return
        with self.lock:
            self.log.write(json.dumps(entry) + "\n")
            self.log.flush()


class _Handler(BaseHTTPRequestHandler):
    server: FakeHomeserver
    protocol_version = "HTTP/1.1"  # keep-alive, as a real homeserver
    _versions: ClassVar[bytes] = json.dumps(
        {"versions": ["v1.1", "v1.2", "v1.3", "v1.4", "v1.5", "v1.6", "v1.7", "v1.8"]}
    ).encode()

    def log_message(self, format: str, *args: Any) -> None:
        """Silence http.server's stderr lines; requests are logged as JSON instead."""

    def _send(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, errcode: str, error: str) -> None:
        self._send(status, json.dumps({"errcode": errcode, "error": error}).encode())

    def _body(self) -> Any:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw) if raw else {}
        except json.JSONDecodeError:
            return None

    def _authorized(self) -> bool:
        if self.headers.get("Authorization", "").startswith("Bearer "):
            return True
        self._error(401, "M_MISSING_TOKEN", "Missing access token")
        return False

    def _handle(self, method: str) -> None:
        started = time.monotonic()
        url = urlsplit(self.path)
        path = url.path
        status = 200
        size = 0
        if method == "GET" and path == "/_matrix/client/versions":
            body = self._versions
            self._send(200, body)
            size = len(body)
        elif method == "POST" and path == "/_matrix/client/v3/login":
            request = self._body()
            ok = (
                isinstance(request, dict)
                and request.get("type") == "m.login.password"
                and request.get("password") == self.server.password
                and (request.get("identifier") or {}).get("user")
                in (self.server.user_id, self.server.user_id[1:].split(":")[0])
            )
            if ok:
                body = json.dumps(
                    {
                        "user_id": self.server.user_id,
                        "access_token": ACCESS_TOKEN,
                        "device_id": DEVICE_ID,
                        "home_server": self.server.user_id.split(":", 1)[1],
                    }
                ).encode()
                self._send(200, body)
                size = len(body)
            else:
                status = 403
                self._error(403, "M_FORBIDDEN", "Invalid username or password")
        elif method == "POST" and path == "/_matrix/client/v3/keys/upload":
            request = self._body()
            if self._authorized():
                keys = request.get("one_time_keys") if isinstance(request, dict) else None
                if isinstance(keys, dict):
                    with self.server.lock:
                        self.server.one_time_keys += sum(
                            1 for k in keys if k.startswith("signed_curve25519:")
                        )
                counts = {"signed_curve25519": self.server.one_time_keys}
                self._send(200, json.dumps({"one_time_key_counts": counts}).encode())
            else:
                status = 401
        elif method == "POST" and path == "/_matrix/client/v3/logout":
            self._body()
            if self._authorized():
                self._send(200, b"{}")
            else:
                status = 401
        elif method == "GET" and path == "/_matrix/client/v3/sync":
            if not self._authorized():
                status = 401
            else:
                query = parse_qs(url.query)
                since = query.get("since", [""])[0]
                parts = self.server.initial_parts
                if not since:
                    body = parts[0]
                elif since.startswith(PART_PREFIX) and since[len(PART_PREFIX) :].isdigit():
                    body = parts[min(int(since[len(PART_PREFIX) :]), len(parts) - 1)]
                else:
                    try:
                        timeout_ms = int(query.get("timeout", ["0"])[0])
                    except ValueError:
                        timeout_ms = 0
                    time.sleep(min(timeout_ms / 1000, self.server.long_poll))
                    body = json.dumps(_empty_incremental(self.server.next_batch())).encode()
                self._send(200, body)
                size = len(body)
        else:
            if method == "POST":
                self._body()
            status = 404
            self._error(404, "M_UNRECOGNIZED", "Unrecognized request")
        self.server.record(
            {
                "method": method,
                "path": path,
                "since": parse_qs(url.query).get("since", [""])[0],
                "status": status,
                "bytes": size,
                "start": started,
                "end": time.monotonic(),
            }
        )

    def do_GET(self) -> None:
        self._handle("GET")

    def do_POST(self) -> None:
        self._handle("POST")

    def do_PUT(self) -> None:
        self._body()
        self._error(404, "M_UNRECOGNIZED", "Unrecognized request")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--body", type=Path, required=True, help="initial /sync body (JSON file)")
    parser.add_argument("--user", required=True, help="the one user id that may log in")
    parser.add_argument(
        "--password",
        default=os.environ.get(PASSWORD_ENV),
        help=f"the password (default: ${PASSWORD_ENV}, which keeps it out of `ps`)",
    )
    parser.add_argument("--port", type=int, default=0, help="0: any free port")
    parser.add_argument("--long-poll", type=float, default=1.0, help="seconds, at most")
    parser.add_argument("--parts", type=int, default=1, help="serve the initial sync in N parts")
    args = parser.parse_args(argv)
    if not args.password:
        parser.error(f"give --password or set {PASSWORD_ENV}")
    server = FakeHomeserver(
        initial_body=args.body.read_bytes(),
        user_id=args.user,
        password=args.password,
        port=args.port,
        long_poll=args.long_poll,
        parts=args.parts,
        log=sys.stdout,
    )
    print(f"listening {server.base_url}", flush=True)
    try:
        server.serve_forever(poll_interval=0.2)
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


if __name__ == "__main__":
    main()
