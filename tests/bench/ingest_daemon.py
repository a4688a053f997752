"""A real ``skiffyd run`` holding the benchmark account: peak RSS, login → ready, warm start.

What runs (every process on 127.0.0.1 or a unix socket, each stopped by its PID):

1. a private Secret Service (:class:`skiffyd.devenv.secret_service.SecretService`);
2. :mod:`tests.bench.fake_homeserver` as a child process, serving the corpus
   as the initial ``/sync``;
3. ``skiffyd run`` through :class:`skiffyd.devenv.instance.SkiffyInstance`
   (isolated XDG directories), then ``skiffyd login`` against the fake server.

Measured:

* login → ready: from just before ``skiffyd login`` (the CLI process) until
  ``Status`` says ``ready`` after the first sync (polled every 10 ms by an
  in-process :class:`~skiffyd.ipc.client.DaemonClient`), with the fake
  server's own time to send the body (from its request log) beside it;
* the daemon's memory: ``VmHWM`` (peak RSS) and ``VmRSS`` from
  ``/proc/<pid>/status`` when idle and logged out, when ready, and after a
  warm start;
* warm start with no network (the fake server stopped): from spawning
  ``skiffyd run`` until a ``Rooms`` request is answered with every room from
  the cache, polled (a) by an in-process client every 5 ms and (b) by running
  ``skiffyd rooms --json`` (a whole CLI process per try, as a user would).
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import ipc_schema
from skiffyd.devenv.instance import SkiffyInstance
from skiffyd.devenv.procs import clean_env, stop_process
from skiffyd.devenv.secret_service import SecretService
from skiffyd.errors import SkiffyError
from skiffyd.ipc.client import DaemonClient
from tests.bench.fake_homeserver import PASSWORD_ENV
from tests.bench.ingest_corpus import OWN_USER, Corpus

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


def memory(pid: int) -> dict[str, int]:
    """VmHWM and VmRSS of ``pid`` in KiB."""
    values: dict[str, int] = {}
    with open(f"/proc/{pid}/status", encoding="utf-8") as status:
        for line in status:
            key, _, rest = line.partition(":")
            if key in ("VmHWM", "VmRSS"):
                values[key] = int(rest.split()[0])
    return values


def cpu_seconds(pid: int) -> float:
    """User + system CPU time ``pid`` has used so far (``/proc/<pid>/stat``)."""
    with open(f"/proc/{pid}/stat", encoding="utf-8") as stat:
        fields = stat.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def poll(probe: Callable[[], T | None], *, timeout: float, interval: float, what: str) -> T:
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except SkiffyError as exc:
            value, last = None, exc
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout} s waiting for {what}; last: {last!r}")
        time.sleep(interval)


@dataclass
class FakeServerProcess:
    proc: subprocess.Popen[bytes]
    base_url: str
    log_path: Path

    def stop(self) -> None:
        stop_process(self.proc, timeout=5)

    def requests(self) -> list[dict[str, Any]]:
        entries = []
        for line in self.log_path.read_text(encoding="utf-8").splitlines():
            if line.startswith("{"):
                entries.append(json.loads(line))
        return entries


class DaemonCrashedError(RuntimeError):
    """The daemon exited while it should have been serving."""


def start_fake_server(
    body_path: Path, password: str, workdir: Path, *, parts: int = 1
) -> FakeServerProcess:
    log_path = workdir / f"fake-homeserver-{parts}.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.bench.fake_homeserver",
                "--body",
                str(body_path),
                "--user",
                OWN_USER,
                "--long-poll",
                "1.0",
                "--parts",
                str(parts),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=clean_env(**{PASSWORD_ENV: password}),
            cwd=Path(__file__).resolve().parents[2],
            start_new_session=True,
        )

    def listening() -> str | None:
        if proc.poll() is not None:
            raise RuntimeError(f"the fake homeserver exited: {log_path.read_text()}")
        for line in log_path.read_text(encoding="utf-8").splitlines():
            if line.startswith("listening "):
                return line.split(" ", 1)[1].strip()
        return None

    try:
        url = poll(listening, timeout=20, interval=0.02, what="the fake homeserver")
    except BaseException:
        stop_process(proc, timeout=5)
        raise
    return FakeServerProcess(proc, url, log_path)


@dataclass
class WarmStart:
    how: str
    seconds: float
    rooms: int
    state: str
    tries: int
    memory_kib: dict[str, int] = field(default_factory=dict)
    #: From spawn to the daemon's own ``daemon.ready`` log line (imports, keyring, cache open).
    daemon_ready_log_s: float | None = None
    #: CPU time the daemon had used when the rooms were answered.
    cpu_s: float | None = None


@dataclass
class DaemonRun:
    rooms_expected: int
    #: Responses the initial sync was served in (1: the whole account at once).
    parts: int
    idle_memory_kib: dict[str, int]
    login_cli_s: float
    login_to_ready_s: float
    #: CPU time the daemon used from just before the login to ready.
    login_to_ready_cpu_s: float
    server_send_s: float | None
    ready_memory_kib: dict[str, int]
    ready_memory_after_1s_kib: dict[str, int]
    rooms_after_ready: int
    warm: list[WarmStart]
    cli_rooms_s: float
    sync_requests: int
    #: Interpreter start and the daemon's imports alone (as ``skiffyd run``
    #: makes them: :mod:`skiffyd.entry`), best of 3.
    import_s: float
    log_lines: list[str] = field(default_factory=list)


#: What ``skiffyd run`` imports before it starts (skiffyd.entry.run_daemon).
_DAEMON_IMPORTS = "import sys; sys.modules['rich'] = None; import trio, skiffyd.daemon"


def _last_error(inst: SkiffyInstance) -> str:
    """The daemon's exit status and the last lines of its log that name an error."""
    lines = inst.log_tail(80).splitlines()
    errors = [line for line in lines if "Error" in line or '"error"' in line]
    status = inst.proc.returncode if inst.proc is not None else "?"
    return f"skiffyd run exited ({status}): " + " | ".join(
        line.strip()[:200] for line in (errors or lines)[-3:]
    )


def _rooms_count(client: DaemonClient) -> int | None:
    result = client.request(ipc_schema.Rooms())
    assert isinstance(result, ipc_schema.RoomsResult)
    return len(result.rooms)


def _status(client: DaemonClient) -> ipc_schema.StatusResult:
    result = client.request(ipc_schema.Status())
    assert isinstance(result, ipc_schema.StatusResult)
    return result


def _daemon_ready_logged(inst: SkiffyInstance, spawned_at: float) -> float | None:
    """Seconds from ``spawned_at`` (epoch) to the last ``daemon.ready`` line of the log."""
    stamp = None
    for line in inst.log_tail(200).splitlines():
        if '"daemon.ready"' not in line:
            continue
        with contextlib.suppress(ValueError, KeyError):
            stamp = datetime.fromisoformat(json.loads(line)["timestamp"]).timestamp()
    return None if stamp is None or stamp < spawned_at else stamp - spawned_at


def _warm_start_ipc(inst: SkiffyInstance, expected: int) -> WarmStart:
    tries = 0
    spawned_at = time.time()
    t0 = time.monotonic()
    inst.spawn()
    client = DaemonClient(inst.paths, timeout=30)
    try:

        def answered() -> int | None:
            nonlocal tries
            tries += 1
            n = _rooms_count(client)
            return n if n == expected else None

        n = poll(answered, timeout=60, interval=0.005, what="Rooms from the cache")
        seconds = time.monotonic() - t0
        state = _status(client).state
        assert inst.pid is not None
        mem = memory(inst.pid)
        cpu = cpu_seconds(inst.pid)
    finally:
        client.close()
    return WarmStart(
        "in-process DaemonClient, Rooms every 5 ms",
        seconds,
        n,
        state,
        tries,
        mem,
        _daemon_ready_logged(inst, spawned_at),
        cpu,
    )


def _warm_start_cli(inst: SkiffyInstance, expected: int) -> WarmStart:
    tries = 0
    spawned_at = time.time()
    t0 = time.monotonic()
    inst.spawn()

    def answered() -> int | None:
        nonlocal tries
        tries += 1
        r = inst.cli("rooms", "--json", timeout=30)
        if r.returncode != 0:
            return None
        n = len(json.loads(r.stdout))
        return n if n == expected else None

    n = poll(answered, timeout=60, interval=0.0, what="`skiffyd rooms --json`")
    seconds = time.monotonic() - t0
    state = json.loads(inst.cli_ok("status", "--json")).get("state", "?")
    assert inst.pid is not None
    return WarmStart(
        "`skiffyd rooms --json` in a loop",
        seconds,
        n,
        state,
        tries,
        memory(inst.pid),
        _daemon_ready_logged(inst, spawned_at),
        cpu_seconds(inst.pid),
    )


def run(corpus: Corpus, workdir: Path, *, parts: int = 1) -> DaemonRun:
    """Raises :class:`DaemonCrashedError` (with the daemon's last log lines) if it dies."""
    body_path = workdir / "initial-sync.json"
    body_path.write_bytes(corpus.data)
    password = secrets.token_urlsafe(18)
    expected = len(corpus.rooms)
    root = Path(tempfile.mkdtemp(prefix="skb-", dir="/tmp"))
    try:
        with SecretService() as ss:
            inst = SkiffyInstance(root, env=ss.env(), ready_timeout=60)
            fake = start_fake_server(body_path, password, workdir, parts=parts)
            try:
                inst.start()
                assert inst.pid is not None
                idle = memory(inst.pid)
                cpu_before = cpu_seconds(inst.pid)
                client = DaemonClient(inst.paths, timeout=120)
                try:
                    t0 = time.monotonic()
                    inst.login(fake.base_url, OWN_USER, password)
                    t_login = time.monotonic()

                    def ready() -> bool | None:
                        if inst.pid is None:
                            raise DaemonCrashedError(_last_error(inst))
                        status = _status(client)
                        done = status.state == "ready" and status.full_syncs >= 1
                        return True if done and status.syncs >= parts else None

                    poll(ready, timeout=180, interval=0.01, what="state ready")
                    t_ready = time.monotonic()
                    ready_mem = memory(inst.pid)
                    ready_cpu = cpu_seconds(inst.pid) - cpu_before
                    rooms_after = _rooms_count(client) or 0
                    time.sleep(1.0)
                    ready_mem_later = memory(inst.pid)
                finally:
                    client.close()
                t_cli = time.monotonic()
                inst.cli_ok("rooms", "--json")
                cli_rooms_s = time.monotonic() - t_cli
                inst.terminate()
            finally:
                inst.kill9()
                fake.stop()
            requests = fake.requests()
            initial = [
                r
                for r in requests
                if r["path"].endswith("/sync")
                and (not r["since"] or r["since"].startswith("initial_part"))
            ]
            server_send = sum(r["end"] - r["start"] for r in initial) if initial else None
            sync_requests = sum(1 for r in requests if r["path"].endswith("/sync"))

            # Warm starts: the fake server is gone, so there is no network at all.
            warm: list[WarmStart] = []
            for measure in (_warm_start_ipc, _warm_start_ipc, _warm_start_ipc, _warm_start_cli):
                try:
                    warm.append(measure(inst, expected))
                finally:
                    inst.terminate()
            log_lines = [
                line
                for line in inst.log_tail(400).splitlines()
                if any(k in line for k in ("sync.initial_done", "daemon.ready", "error"))
            ][-12:]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    imports = []
    for _ in range(3):
        t = time.monotonic()
        subprocess.run([sys.executable, "-c", _DAEMON_IMPORTS], check=True, env=clean_env())
        imports.append(time.monotonic() - t)
    return DaemonRun(
        rooms_expected=expected,
        import_s=min(imports),
        parts=parts,
        idle_memory_kib=idle,
        login_cli_s=t_login - t0,
        login_to_ready_s=t_ready - t0,
        login_to_ready_cpu_s=ready_cpu,
        server_send_s=server_send,
        ready_memory_kib=ready_mem,
        ready_memory_after_1s_kib=ready_mem_later,
        rooms_after_ready=rooms_after,
        warm=warm,
        cli_rooms_s=cli_rooms_s,
        sync_requests=sync_requests,
        log_lines=log_lines,
    )
