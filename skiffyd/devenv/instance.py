"""``skiffyd run`` in isolated XDG directories, and the CLI pointed at it.

::

    inst = SkiffyInstance(Path(tempfile.mkdtemp(prefix="sk-")), env=ss.env())
    inst.start()                                  # waits for `status --json`
    inst.login(hs.base_url, user_id, password)    # --password-stdin
    inst.wait_state("ready")
    inst.cli("rooms", "--json")                   # a CompletedProcess
    inst.kill9(); inst.start()                    # crash and resume
    inst.terminate()                              # SIGTERM by PID

The root directory holds ``config/ data/ state/ run/ home/`` (the daemon's
XDG_CONFIG_HOME, XDG_DATA_HOME, XDG_STATE_HOME, XDG_RUNTIME_DIR and HOME) and
``daemon.log``, the daemon's stdout and stderr (JSON lines, because
``SKIFFY_LOG_FORMAT=json``). Keep the root short: the IPC socket paths under
``run/`` must fit in 107 bytes.

The CLI is the ``skiffyd`` console script next to the running interpreter
(the project's virtual environment), so tests exercise what users run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipc_schema as wire
from skiffyd.config import Paths
from skiffyd.devenv.procs import clean_env, stop_process, tail, wait_exit
from skiffyd.devenv.wait import wait_for
from skiffyd.ipc.client import DaemonClient

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

#: Longest path a unix socket can have (sun_path is 108 bytes with the NUL).
MAX_SOCKET_PATH = 107


class InstanceError(RuntimeError):
    """The daemon would not start, or the CLI answered something unexpected."""


def skiffyd_command() -> list[str]:
    """How to run the ``skiffyd`` console script of this environment."""
    script = Path(sys.executable).parent / "skiffyd"
    if script.exists():
        return [str(script)]
    found = shutil.which("skiffyd")
    if found:
        return [found]
    raise InstanceError(
        "the `skiffyd` console script is not installed next to "
        f"{sys.executable}; run `pip install -e .` in this environment"
    )


def parse_json_list(text: str) -> list[dict[str, Any]]:
    """A JSON array, or JSON lines (one object per line), as a list of objects."""
    text = text.strip()
    if not text:
        return []
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        return [json.loads(line) for line in text.splitlines() if line.strip()]
    if isinstance(value, list):
        return value
    if isinstance(value, dict):
        return [value]
    raise InstanceError(f"expected JSON objects, got {type(value).__name__}")


class SkiffyInstance:
    """One ``skiffyd run`` process (restartable) with its own XDG directories."""

    def __init__(
        self,
        root: Path,
        *,
        env: Mapping[str, str] | None = None,
        command: Sequence[str] | None = None,
        ready_timeout: float = 30.0,
    ) -> None:
        self.root = Path(root).resolve()
        self.command = list(command) if command is not None else skiffyd_command()
        self.ready_timeout = ready_timeout
        self.proc: subprocess.Popen[bytes] | None = None
        dirs = {
            "XDG_CONFIG_HOME": self.root / "config",
            "XDG_DATA_HOME": self.root / "data",
            "XDG_STATE_HOME": self.root / "state",
            "XDG_RUNTIME_DIR": self.root / "run",
            "HOME": self.root / "home",
        }
        for d in dirs.values():
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.env = clean_env(
            **{k: str(v) for k, v in dirs.items()},
            SKIFFY_LOG_FORMAT="json",
            PYTHONUNBUFFERED="1",
            **(env or {}),
        )
        self.paths = Paths(
            config_dir=dirs["XDG_CONFIG_HOME"] / "skiffyd",
            data_dir=dirs["XDG_DATA_HOME"] / "skiffyd",
            state_dir=dirs["XDG_STATE_HOME"] / "skiffyd",
            runtime_dir=dirs["XDG_RUNTIME_DIR"] / "skiffyd",
        )
        longest = max(len(str(self.paths.command_socket)), len(str(self.paths.event_socket)))
        if longest > MAX_SOCKET_PATH:
            raise InstanceError(f"{self.root} is too long for the IPC socket paths")

    # ------------------------------------------------------------------ paths

    @property
    def log_path(self) -> Path:
        """The daemon's stdout and stderr, across restarts."""
        return self.root / "daemon.log"

    @property
    def data_home(self) -> Path:
        return Path(self.env["XDG_DATA_HOME"])

    @property
    def state_home(self) -> Path:
        return Path(self.env["XDG_STATE_HOME"])

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc is not None and self.proc.poll() is None else None

    def log_tail(self, lines: int = 40) -> str:
        return tail(self.log_path, lines)

    # -------------------------------------------------------------- lifecycle

    def spawn(self) -> subprocess.Popen[bytes]:
        """Start ``skiffyd run`` without waiting for it (see :meth:`start`)."""
        if self.pid is not None:
            raise InstanceError(f"the daemon is already running (pid {self.pid})")
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [*self.command, "run"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                cwd=self.root,
                start_new_session=True,
            )
        return self.proc

    def start(self, timeout: float | None = None) -> dict[str, Any]:
        """Start the daemon and wait until ``skiffyd status --json`` answers."""
        proc = self.spawn()

        def answered() -> dict[str, Any] | None:
            if proc.poll() is not None:
                raise InstanceError(
                    f"skiffyd run exited with status {proc.returncode}:\n{self.log_tail()}"
                )
            r = self.cli("status", "--json", timeout=10)
            if r.returncode != 0:
                return None
            status: dict[str, Any] = json.loads(r.stdout)
            return status

        try:
            return wait_for(
                answered,
                timeout=timeout or self.ready_timeout,
                interval=0.1,
                what="`skiffyd status --json` to answer",
                describe=self.log_tail,
                fatal=(InstanceError,),
            )
        except BaseException:
            self.kill9()
            raise

    def kill9(self) -> int | None:
        """SIGKILL the daemon by its PID (a crash); returns its exit status."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            with suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGKILL)
        code = self.proc.wait(timeout=10)
        self.proc = None
        return code

    def terminate(self, timeout: float = 15.0) -> int | None:
        """SIGTERM by PID (SIGKILL after ``timeout``); returns its exit status."""
        if self.proc is None:
            return None
        code = stop_process(self.proc, timeout=timeout)
        self.proc = None
        return code

    def stop_with(self, sig: signal.Signals, timeout: float = 15.0) -> int | None:
        """Send ``sig`` by PID and wait for the exit; its status (None: still running)."""
        if self.proc is None:
            return None
        with suppress(ProcessLookupError):
            os.kill(self.proc.pid, sig)
        code = wait_exit(self.proc, timeout)
        if code is not None:
            self.proc = None
        return code

    def restart(self, timeout: float | None = None) -> dict[str, Any]:
        self.terminate()
        return self.start(timeout)

    def run_foreground(self, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run another ``skiffyd run`` with the same environment, to completion."""
        proc = subprocess.Popen(
            [*self.command, "run"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self.env,
            cwd=self.root,
            start_new_session=True,
            text=True,
        )
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_process(proc, timeout=5)
            out, err = proc.communicate()
            raise InstanceError(
                f"a second `skiffyd run` was still running after {timeout:g} s; stderr:\n{err}"
            ) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)

    # -------------------------------------------------------------------- CLI

    def cli(
        self, *args: str, input: str | None = None, timeout: float = 60.0
    ) -> subprocess.CompletedProcess[str]:
        """Run ``skiffyd ARGS…`` against this daemon; never raises on failure."""
        return subprocess.run(
            [*self.command, *args],
            input=input if input is not None else "",
            capture_output=True,
            text=True,
            env=self.env,
            cwd=self.root,
            timeout=timeout,
            check=False,
        )

    def cli_ok(self, *args: str, input: str | None = None) -> str:
        """Run ``skiffyd ARGS…``; its stdout, or :class:`InstanceError` if it failed."""
        r = self.cli(*args, input=input)
        if r.returncode != 0:
            raise InstanceError(
                f"`skiffyd {' '.join(args[:1])}` exited {r.returncode}: {r.stderr.strip()}"
            )
        return r.stdout

    def status(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.cli_ok("status", "--json"))
        return value

    def wait_state(self, *states: str, timeout: float = 60.0) -> dict[str, Any]:
        """Poll ``status --json`` until its state is one of ``states``; the status."""

        def probe() -> dict[str, Any] | None:
            status = self.status()
            return status if status.get("state") in states else None

        return wait_for(
            probe,
            timeout=timeout,
            interval=0.1,
            what=f"state in {states}",
            describe=self.log_tail,
        )

    def login(self, homeserver: str, user_id: str, password: str) -> str:
        """``skiffyd login … --password-stdin``; its stdout."""
        return self.cli_ok(
            "login",
            "--homeserver",
            homeserver,
            "--user",
            user_id,
            "--password-stdin",
            input=password + "\n",
        )

    def login_ready(
        self, homeserver: str, user_id: str, password: str, timeout: float = 60.0
    ) -> dict[str, Any]:
        """:meth:`login`, then wait for the ``ready`` state; the status."""
        self.login(homeserver, user_id, password)
        return self.wait_state("ready", timeout=timeout)

    def join_invited(self, room_id: str, timeout: float = 30.0) -> None:
        """Wait for the invite to ``room_id`` to arrive by /sync, then ``skiffyd join`` it."""
        wait_for(
            lambda: any(r.get("room_id") == room_id for r in self.rooms()),
            timeout=timeout,
            what=f"the invite to {room_id} in `skiffyd rooms`",
            describe=self.log_tail,
        )
        self.cli_ok("join", room_id)

    def rooms(self) -> list[dict[str, Any]]:
        rooms: list[dict[str, Any]] = json.loads(self.cli_ok("rooms", "--json"))
        return rooms

    def messages(self, room_id: str, limit: int | None = None) -> list[dict[str, Any]]:
        args = ["messages", room_id, "--json"]
        if limit is not None:
            args[2:2] = ["--limit", str(limit)]
        return parse_json_list(self.cli_ok(*args))

    def send(self, room_id: str, text: str) -> str:
        """``skiffyd send``; the client transaction id it printed."""
        return self.cli_txn("send", room_id, text)

    def cli_txn(self, *args: str) -> str:
        """Run a queueing verb (``send``, ``edit``, ``redact``, ``react``, …); its txn id."""
        out = self.cli_ok(*args).strip()
        with suppress(json.JSONDecodeError):
            value = json.loads(out)
            txn_id = value.get("txn_id") if isinstance(value, dict) else None
            if isinstance(txn_id, str):
                return txn_id
        if not out or len(out.split()) != 1:
            raise InstanceError(f"`skiffyd {args[0]}` printed {out!r}, not a transaction id")
        return out

    def send_many(self, room_id: str, bodies: Sequence[str]) -> list[str]:
        """Queue many messages over one IPC connection; their txn ids, in order.

        The same ``Send`` command ``skiffyd send`` makes, without starting a
        process per message (each costs ~0.2 s of CPU): for tests that need a
        backlog of hundreds queued faster than the outbox drains it.
        """
        with DaemonClient(self.paths, timeout=30.0) as client:
            return [
                client.request_as(wire.Send(room_id=room_id, body=body), wire.SendResult).txn_id
                for body in bodies
            ]

    def outbox(self) -> list[dict[str, Any]]:
        """``skiffyd outbox list --json``: the queued and failed items."""
        return parse_json_list(self.cli_ok("outbox", "list", "--json"))

    def log_records(self) -> list[dict[str, Any]]:
        """The daemon's JSON log lines so far (across restarts); other lines are skipped."""
        records: list[dict[str, Any]] = []
        if not self.log_path.exists():
            return records
        for line in self.log_path.read_text(encoding="utf-8", errors="replace").splitlines():
            if not line.startswith("{"):
                continue
            with suppress(json.JSONDecodeError):
                value = json.loads(line)
                if isinstance(value, dict):
                    records.append(value)
        return records

    def tail(self, *args: str) -> TailProcess:
        """Start ``skiffyd tail --json`` (stop it with :meth:`TailProcess.stop`)."""
        return TailProcess(self, args)


class TailProcess:
    """A running ``skiffyd tail --json``; its lines are collected in a file."""

    def __init__(self, instance: SkiffyInstance, args: Sequence[str]) -> None:
        self.path = instance.root / f"tail-{time.monotonic_ns()}.jsonl"
        self._stderr = instance.root / f"{self.path.stem}.stderr"
        with self.path.open("wb") as out, self._stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [*instance.command, "tail", "--json", *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                env=instance.env,
                cwd=instance.root,
                start_new_session=True,
            )

    def events(self) -> list[dict[str, Any]]:
        """Every complete line printed so far, parsed."""
        data = self.path.read_bytes()
        complete = data[: data.rfind(b"\n") + 1]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def stderr(self) -> str:
        return tail(self._stderr)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> int | None:
        code = stop_process(self.proc, timeout=5)
        return code

    def wait_exit(self, timeout: float) -> int | None:
        return wait_exit(self.proc, timeout)

    def __enter__(self) -> TailProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
