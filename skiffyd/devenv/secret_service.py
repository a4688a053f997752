"""A real Secret Service in a private D-Bus session.

``dbus-daemon`` with a minimal session config (no service activation, so no
other keyring can be started behind our back) listening on a socket in a
private directory, and ``gnome-keyring-daemon --foreground --unlock
--components=secrets`` on that bus with its HOME, XDG_DATA_HOME and
XDG_RUNTIME_DIR in the same directory: the keyrings of the person running the
tests are never opened. Both are stopped by their own PIDs.

::

    with SecretService() as ss:
        subprocess.run([...], env={**os.environ, **ss.env()})

Debian packages: ``dbus`` and ``gnome-keyring``.
"""

from __future__ import annotations

import secrets
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

from skiffyd.devenv.procs import clean_env, stop_process, tail

SECRETS_NAME = "org.freedesktop.secrets"

_BUS_CONFIG = """<!DOCTYPE busconfig PUBLIC "-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd">
<busconfig>
  <type>session</type>
  <listen>unix:path={socket}</listen>
  <auth>EXTERNAL</auth>
  <policy context="default">
    <allow send_destination="*" eavesdrop="true"/>
    <allow eavesdrop="true"/>
    <allow own="*"/>
  </policy>
</busconfig>
"""


class SecretServiceError(RuntimeError):
    """dbus-daemon or gnome-keyring-daemon is missing or would not start."""


def _require(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        raise SecretServiceError(
            f"{program} not found: install the Debian package `{package}` "
            "(apt-get install -y gnome-keyring dbus)"
        )
    return path


class SecretService:
    """gnome-keyring's Secret Service on a private session bus."""

    def __init__(self, directory: Path | None = None, *, start_timeout: float = 20.0) -> None:
        # Short by default: the bus socket path must fit in sun_path (108 bytes).
        self._own_dir = directory is None
        self.directory = Path(directory or tempfile.mkdtemp(prefix="skss-")).resolve()
        self.start_timeout = start_timeout
        #: Seconds from spawning dbus-daemon to an unlocked default collection.
        self.start_seconds: float | None = None
        self._dbus: subprocess.Popen[bytes] | None = None
        self._keyring: subprocess.Popen[bytes] | None = None
        self._address: str | None = None

    @property
    def bus_address(self) -> str:
        if self._address is None:
            raise SecretServiceError("the secret service has not been started")
        return self._address

    def env(self) -> dict[str, str]:
        """What a child process needs in its environment to use this service."""
        return {"DBUS_SESSION_BUS_ADDRESS": self.bus_address}

    @property
    def pids(self) -> tuple[int, ...]:
        return tuple(p.pid for p in (self._dbus, self._keyring) if p and p.poll() is None)

    def start(self) -> float:
        dbus_daemon = _require("dbus-daemon", "dbus")
        keyring_daemon = _require("gnome-keyring-daemon", "gnome-keyring")
        started = time.monotonic()
        home = self.directory / "home"
        runtime = self.directory / "run"
        for d in (home, runtime, self.directory / "data", self.directory / "config"):
            d.mkdir(mode=0o700, parents=True, exist_ok=True)
        socket = self.directory / "bus"
        if len(str(socket)) > 100:
            raise SecretServiceError(f"{socket} is too long for a unix socket path")
        config = self.directory / "bus.conf"
        config.write_text(_BUS_CONFIG.format(socket=socket), encoding="utf-8")
        env = clean_env(
            HOME=str(home),
            XDG_DATA_HOME=str(self.directory / "data"),
            XDG_CONFIG_HOME=str(self.directory / "config"),
            XDG_CACHE_HOME=str(self.directory / "cache"),
            XDG_RUNTIME_DIR=str(runtime),
        )
        with (self.directory / "dbus.log").open("ab") as log:
            self._dbus = subprocess.Popen(
                [dbus_daemon, f"--config-file={config}", "--nofork", "--print-address=1"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        assert self._dbus.stdout is not None
        line = self._dbus.stdout.readline().decode().strip()
        self._dbus.stdout.close()
        if not line:
            self.stop()
            raise SecretServiceError(
                f"dbus-daemon did not start:\n{tail(self.directory / 'dbus.log')}"
            )
        self._address = line
        env["DBUS_SESSION_BUS_ADDRESS"] = line
        with (self.directory / "keyring.log").open("ab") as log:
            self._keyring = subprocess.Popen(
                [
                    keyring_daemon,
                    "--foreground",
                    "--unlock",
                    "--components=secrets",
                    f"--control-directory={runtime / 'keyring'}",
                ],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                env=env,
                start_new_session=True,
            )
        assert self._keyring.stdin is not None
        # --unlock reads the login keyring's password from stdin until EOF and
        # creates that keyring (the default collection) when it does not exist.
        self._keyring.stdin.write(secrets.token_urlsafe(24).encode())
        self._keyring.stdin.close()
        try:
            self._wait_ready(started + self.start_timeout)
        except BaseException:
            self.stop()
            raise
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    def _wait_ready(self, deadline: float) -> None:
        import secretstorage
        from jeepney.bus_messages import message_bus
        from jeepney.io.blocking import open_dbus_connection

        last: object = None
        while True:
            for name, proc in (
                ("dbus-daemon", self._dbus),
                ("gnome-keyring-daemon", self._keyring),
            ):
                if proc is None or proc.poll() is not None:
                    raise SecretServiceError(
                        f"{name} exited while starting:\n{tail(self.directory / 'keyring.log')}"
                    )
            try:
                with open_dbus_connection(bus=self.bus_address) as conn:
                    reply = conn.send_and_get_reply(message_bus.NameHasOwner(SECRETS_NAME))
                    if reply.body[0]:
                        collection = secretstorage.get_default_collection(conn)
                        if not collection.is_locked():
                            return
                        last = "default collection locked"
                    else:
                        last = f"{SECRETS_NAME} has no owner yet"
            except Exception as exc:
                last = exc
            if time.monotonic() > deadline:
                raise SecretServiceError(
                    f"the Secret Service was not ready in time ({last!r}):\n"
                    f"{tail(self.directory / 'keyring.log')}"
                )
            time.sleep(0.02)

    def delete_items(self, attributes: dict[str, str]) -> int:
        """Delete every item whose attributes include ``attributes``; how many.

        ``{"service": "skiffy"}`` removes what skiffyd (through ``keyring``)
        stored, so that a shared service is left as it was found.
        """
        import secretstorage
        from jeepney.io.blocking import open_dbus_connection

        with open_dbus_connection(bus=self.bus_address) as conn:
            items = list(secretstorage.search_items(conn, attributes))
            for item in items:
                item.delete()
        return len(items)

    def stop(self) -> None:
        """Stop gnome-keyring, then dbus-daemon, each by its PID."""
        if self._keyring is not None:
            stop_process(self._keyring, timeout=5)
            self._keyring = None
        if self._dbus is not None:
            stop_process(self._dbus, timeout=5)
            self._dbus = None
        self._address = None
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def __enter__(self) -> SecretService:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def main() -> None:
    """``python -m skiffyd.devenv.secret_service``: start one, print its env, wait."""
    with SecretService() as ss:
        print(f"ready in {ss.start_seconds:.3f} s; pids {ss.pids}")
        for k, v in ss.env().items():
            print(f"export {k}={v}")
        try:
            while True:
                time.sleep(1)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
