"""A throwaway Synapse homeserver on 127.0.0.1.

Synapse lives in its own virtual environment (it must not share dependencies
with skiffyd): ``$SKIFFY_SYNAPSE_PYTHON`` if set, else
``<repo>/.synapse-venv/bin/python`` (``make test`` and ``make demo`` create it).

::

    with Synapse(tmp_dir) as hs:          # generate config, start, wait
        alice = hs.register("alice", "pw")  # shared-secret admin API
        hs.base_url                         # http://127.0.0.1:<port>
        hs.restart()                        # same port, same data

The configuration is made for tests: server name ``localhost``, SQLite,
presence off, no federation key servers, no metrics, no URL previews, cheap
password hashing and every ``rc_*`` rate limit relaxed to 1000/s (force
429s for one user with :meth:`Synapse.override_ratelimit`). Every HTTP call
made here goes to 127.0.0.1 only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import secrets
import subprocess
import time
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from skiffyd.devenv.procs import clean_env, free_port, repo_root, stop_process, tail

SERVER_NAME = "localhost"

#: Every rate limiter Synapse 1.163 reads (synapse/config/ratelimiting.py),
#: by config key; dotted keys are nested. rc_federation has another shape and
#: is not used (no federation here).
RATE_LIMITS = (
    "rc_message",
    "rc_registration",
    "rc_registration_token_validity",
    "rc_login.address",
    "rc_login.account",
    "rc_login.failed_attempts",
    "rc_admin_redaction",
    "rc_joins.local",
    "rc_joins.remote",
    "rc_joins_per_room",
    "rc_key_requests",
    "rc_3pid_validation",
    "rc_invites.per_room",
    "rc_invites.per_user",
    "rc_invites.per_issuer",
    "rc_third_party_invite",
    "rc_media_create",
    "rc_presence.per_user",
    "rc_delayed_event_mgmt",
    "rc_room_creation",
    "rc_reports",
    "rc_user_directory",
    "rc_profile",
)


class SynapseError(RuntimeError):
    """Synapse is missing, would not start, or refused an admin call."""


def synapse_python() -> Path:
    """The interpreter of Synapse's own virtual environment."""
    configured = os.environ.get("SKIFFY_SYNAPSE_PYTHON")
    path = Path(configured) if configured else repo_root() / ".synapse-venv" / "bin" / "python"
    if not path.exists():
        where = "SKIFFY_SYNAPSE_PYTHON" if configured else "the default location"
        raise SynapseError(
            f"no Synapse interpreter at {path} ({where}); run `make test` (it creates "
            "`.synapse-venv` with `pip install matrix-synapse`) or set SKIFFY_SYNAPSE_PYTHON "
            "to the python of a virtual environment where matrix-synapse is installed"
        )
    return path


def _relaxed_rate_limits() -> dict[str, Any]:
    config: dict[str, Any] = {}
    for key in RATE_LIMITS:
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = {"per_second": 1000, "burst_count": 1000}
    return config


def _signing_key() -> str:
    # Synapse's signing key file: "<alg> <version> <unpadded base64 of the
    # 32-byte ed25519 seed>"; any 32 random bytes are a valid seed.
    seed = base64.b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    return f"ed25519 a_{secrets.token_hex(2)} {seed}\n"


@dataclass(frozen=True)
class Account:
    """A registered user. The password and token never appear in a repr."""

    user_id: str
    localpart: str
    password: str = field(repr=False)
    access_token: str = field(repr=False)
    device_id: str | None = None


class Synapse:
    """A Synapse in ``directory`` (config, SQLite database, media, logs)."""

    def __init__(
        self,
        directory: Path,
        *,
        python: Path | None = None,
        start_timeout: float = 60.0,
        extra_config: dict[str, Any] | None = None,
    ) -> None:
        self.directory = Path(directory).resolve()
        self.python = python
        self.start_timeout = start_timeout
        self.extra_config = dict(extra_config or {})
        self.server_name = SERVER_NAME
        self.port: int | None = None
        #: Seconds the last start took, from spawn to /versions answering.
        self.start_seconds: float | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._shared_secret: str | None = None
        self._admin: Account | None = None

    # ------------------------------------------------------------------ paths

    @property
    def config_path(self) -> Path:
        return self.directory / "homeserver.yaml"

    @property
    def log_path(self) -> Path:
        """Synapse's own log (WARNING and up)."""
        return self.directory / "homeserver.log"

    @property
    def console_path(self) -> Path:
        """Synapse's stdout and stderr (startup failures land here)."""
        return self.directory / "console.log"

    @property
    def base_url(self) -> str:
        if self.port is None:
            raise SynapseError("Synapse has not been started")
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None and self._proc.poll() is None else None

    def is_running(self) -> bool:
        return self.pid is not None

    # ----------------------------------------------------------------- config

    def _write_config(self) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        (self.directory / "media").mkdir(exist_ok=True)
        key_path = self.directory / "signing.key"
        if not key_path.exists():
            key_path.write_text(_signing_key(), encoding="ascii")
            key_path.chmod(0o600)
        assert self.port is not None
        self._shared_secret = secrets.token_hex(32)
        log_config = {
            "version": 1,
            "formatters": {
                "precise": {
                    "format": "%(asctime)s - %(name)s - %(lineno)d - %(levelname)s - "
                    "%(request)s - %(message)s"
                }
            },
            "filters": {
                "context": {"()": "synapse.logging.context.LoggingContextFilter", "request": ""}
            },
            "handlers": {
                "file": {
                    "class": "logging.FileHandler",
                    "formatter": "precise",
                    "filename": str(self.log_path),
                    "filters": ["context"],
                    "encoding": "utf8",
                }
            },
            "root": {"level": "WARNING", "handlers": ["file"]},
            "disable_existing_loggers": False,
        }
        log_config_path = self.directory / "log.yaml"
        # JSON is YAML: no YAML library needed on this side.
        log_config_path.write_text(json.dumps(log_config, indent=2), encoding="utf-8")
        config: dict[str, Any] = {
            "server_name": self.server_name,
            "pid_file": str(self.directory / "homeserver.pid"),
            "public_baseurl": f"http://127.0.0.1:{self.port}/",
            "listeners": [
                {
                    "port": self.port,
                    "bind_addresses": ["127.0.0.1"],
                    "type": "http",
                    "tls": False,
                    "x_forwarded": False,
                    "resources": [{"names": ["client"], "compress": False}],
                }
            ],
            "database": {
                "name": "sqlite3",
                "args": {"database": str(self.directory / "homeserver.db")},
            },
            "log_config": str(log_config_path),
            "media_store_path": str(self.directory / "media"),
            "signing_key_path": str(key_path),
            "registration_shared_secret": self._shared_secret,
            "macaroon_secret_key": secrets.token_hex(32),
            "form_secret": secrets.token_hex(32),
            "enable_registration": False,
            "report_stats": False,
            "enable_metrics": False,
            "url_preview_enabled": False,
            "trusted_key_servers": [],
            "suppress_key_server_warning": True,
            "presence": {"enabled": False},
            "bcrypt_rounds": 4,
            **_relaxed_rate_limits(),
            **self.extra_config,
        }
        self.config_path.write_text(json.dumps(config, indent=2), encoding="utf-8")
        self.config_path.chmod(0o600)

    # -------------------------------------------------------------- lifecycle

    def start(self) -> float:
        """Generate the config on first use, start Synapse, wait for /versions.

        Returns the seconds it took. Raises :class:`SynapseError` with the tail
        of its logs if it dies or does not answer within ``start_timeout``.
        """
        if self.is_running():
            return 0.0
        first = self.port is None
        attempts = 3 if first else 1
        for attempt in range(attempts):
            if first:
                self.port = free_port()
                self._write_config()
            try:
                return self._spawn_and_wait()
            except SynapseError as exc:
                # Another process may have taken the port between free_port()
                # and Synapse's bind: pick a new one and try again.
                if "Address already in use" in str(exc) and attempt + 1 < attempts:
                    continue
                raise
        raise AssertionError("unreachable")

    def _spawn_and_wait(self) -> float:
        python = self.python or synapse_python()
        started = time.monotonic()
        console = self.console_path.open("ab")
        try:
            self._proc = subprocess.Popen(
                [
                    str(python),
                    "-m",
                    "synapse.app.homeserver",
                    "--config-path",
                    str(self.config_path),
                ],
                cwd=self.directory,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                env=clean_env(),
                start_new_session=True,  # its own process group: Ctrl-C is ours to forward
            )
        finally:
            console.close()
        deadline = started + self.start_timeout
        with httpx.Client(timeout=2.0, trust_env=False) as client:
            while True:
                code = self._proc.poll()
                if code is not None:
                    self._proc = None
                    raise SynapseError(
                        f"Synapse exited with status {code} while starting; its logs:\n"
                        f"{self._log_tails()}"
                    )
                try:
                    r = client.get(f"{self.base_url}/_matrix/client/versions")
                    if r.status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    self.stop()
                    raise SynapseError(
                        f"Synapse did not answer /versions within {self.start_timeout:g} s; "
                        f"its logs:\n{self._log_tails()}"
                    )
                time.sleep(0.05)
        self.start_seconds = time.monotonic() - started
        return self.start_seconds

    def _log_tails(self) -> str:
        return (
            f"--- {self.console_path.name}\n{tail(self.console_path)}\n"
            f"--- {self.log_path.name}\n{tail(self.log_path)}"
        )

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM by PID, SIGKILL after ``timeout``. Safe to call twice."""
        if self._proc is not None:
            stop_process(self._proc, timeout=timeout)
            self._proc = None

    def restart(self) -> float:
        """Stop (if running) and start again on the same port with the same data."""
        self.stop()
        return self.start()

    def __enter__(self) -> Synapse:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -------------------------------------------------------------- admin API

    def _client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=30.0, trust_env=False)

    def register_account(self, localpart: str, password: str, *, admin: bool = False) -> Account:
        """Register a user with the shared-secret admin API."""
        if self._shared_secret is None:
            raise SynapseError("Synapse has not been configured")
        with self._client() as client:
            r = client.get("/_synapse/admin/v1/register")
            _check(r, "get a registration nonce")
            nonce = r.json()["nonce"]
            mac = hmac.new(self._shared_secret.encode(), digestmod=hashlib.sha1)
            mac.update(
                b"\x00".join(
                    [
                        nonce.encode(),
                        localpart.encode(),
                        password.encode(),
                        b"admin" if admin else b"notadmin",
                    ]
                )
            )
            r = client.post(
                "/_synapse/admin/v1/register",
                json={
                    "nonce": nonce,
                    "username": localpart,
                    "password": password,
                    "admin": admin,
                    "mac": mac.hexdigest(),
                },
            )
            _check(r, f"register {localpart!r}")
            body = r.json()
        return Account(
            user_id=body["user_id"],
            localpart=localpart,
            password=password,
            access_token=body["access_token"],
            device_id=body.get("device_id"),
        )

    def register(self, localpart: str, password: str, admin: bool = False) -> str:
        """Register a user; returns the user id (``@localpart:localhost``)."""
        return self.register_account(localpart, password, admin=admin).user_id

    def _admin_token(self) -> str:
        if self._admin is None:
            self._admin = self.register_account(
                f"devenv-admin-{secrets.token_hex(4)}", secrets.token_urlsafe(24), admin=True
            )
        return self._admin.access_token

    def override_ratelimit(
        self, user_id: str, messages_per_second: int = 0, burst_count: int = 0
    ) -> None:
        """Set a per-user message rate limit (admin API; integers only).

        Both 0 (the defaults) means *no* limit for that user. To force 429s,
        use a small limit such as ``messages_per_second=1, burst_count=1``.
        """
        with self._client() as client:
            r = client.post(
                f"/_synapse/admin/v1/users/{urllib.parse.quote(user_id)}/override_ratelimit",
                headers={"Authorization": f"Bearer {self._admin_token()}"},
                json={"messages_per_second": messages_per_second, "burst_count": burst_count},
            )
            _check(r, f"override the rate limit of {user_id}")

    def delete_ratelimit_override(self, user_id: str) -> None:
        """Back to the server-wide (relaxed) limits for ``user_id``."""
        with self._client() as client:
            r = client.delete(
                f"/_synapse/admin/v1/users/{urllib.parse.quote(user_id)}/override_ratelimit",
                headers={"Authorization": f"Bearer {self._admin_token()}"},
            )
            _check(r, f"delete the rate limit override of {user_id}")


def _check(r: httpx.Response, what: str) -> None:
    if r.status_code != 200:
        try:
            detail = r.json()
        except ValueError:
            detail = r.text[:200]
        raise SynapseError(f"could not {what}: HTTP {r.status_code} {detail}")


def main() -> None:
    """``python -m skiffyd.devenv.synapse DIR``: run one in the foreground (for poking at)."""
    import sys
    import tempfile

    directory = (
        Path(sys.argv[1]) if len(sys.argv) > 1 else Path(tempfile.mkdtemp(prefix="synapse-"))
    )
    hs = Synapse(directory)
    seconds = hs.start()
    print(
        f"Synapse at {hs.base_url} (data in {directory}), ready in {seconds:.2f} s; Ctrl-C stops it"
    )
    try:
        while hs.is_running():
            time.sleep(0.5)
    except KeyboardInterrupt:
        pass
    finally:
        hs.stop()


if __name__ == "__main__":
    main()
