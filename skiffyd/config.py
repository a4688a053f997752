"""Where skiffyd keeps things: XDG base directories, resolved once at start.

* ``$XDG_CONFIG_HOME/skiffyd``   settings (none required yet)
* ``$XDG_DATA_HOME/skiffyd``     the encrypted cache and nio's crypto store,
                                 one folder per account
* ``$XDG_STATE_HOME/skiffyd``    the account pointer (which user id is active)
* ``$XDG_RUNTIME_DIR/skiffyd``   the IPC sockets and the instance lock (0700)

Without ``XDG_RUNTIME_DIR`` (no systemd-logind session) the runtime dir falls
back to ``/tmp/skiffyd-<uid>``, created 0700 and refused if someone else owns it.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from skiffyd.errors import ConfigError


def _xdg(var: str, default: str) -> Path:
    value = os.environ.get(var, "")
    # The spec says relative paths are invalid and must be ignored.
    if value and os.path.isabs(value):
        return Path(value)
    return Path.home() / default


@dataclass(frozen=True, slots=True)
class Paths:
    config_dir: Path
    data_dir: Path
    state_dir: Path
    runtime_dir: Path

    @classmethod
    def from_env(cls) -> Paths:
        runtime = os.environ.get("XDG_RUNTIME_DIR", "")
        runtime_base = Path(runtime) if runtime and os.path.isabs(runtime) else None
        runtime_dir = (
            runtime_base / "skiffyd" if runtime_base else Path(f"/tmp/skiffyd-{os.getuid()}")
        )
        return cls(
            config_dir=_xdg("XDG_CONFIG_HOME", ".config") / "skiffyd",
            data_dir=_xdg("XDG_DATA_HOME", ".local/share") / "skiffyd",
            state_dir=_xdg("XDG_STATE_HOME", ".local/state") / "skiffyd",
            runtime_dir=runtime_dir,
        )

    @property
    def command_socket(self) -> Path:
        return self.runtime_dir / "cmd.sock"

    @property
    def event_socket(self) -> Path:
        return self.runtime_dir / "events.sock"

    @property
    def lock_file(self) -> Path:
        return self.runtime_dir / "daemon.lock"

    @property
    def account_pointer(self) -> Path:
        return self.state_dir / "account"

    def read_account_pointer(self) -> str | None:
        """The user id :attr:`account_pointer` names ("" if it is empty);
        None if there is no pointer. Other OSErrors are raised."""
        try:
            return self.account_pointer.read_text().strip()
        except FileNotFoundError:
            return None

    @property
    def kept_outbox_note(self) -> Path:
        """Names the account whose revoked session left its outbox for the
        next login (JSON: ``user_id``, ``items``), so a restart can say so."""
        return self.state_dir / "kept-outbox"

    def read_kept_outbox(self) -> tuple[str, int] | None:
        """The account and count :attr:`kept_outbox_note` names; None if
        there is no note. ValueError if it is not what the daemon writes."""
        try:
            text = self.kept_outbox_note.read_text()
        except FileNotFoundError:
            return None
        try:
            data = json.loads(text)
            return str(data["user_id"]), int(data["items"])
        except (KeyError, TypeError) as exc:
            raise ValueError("not a kept-outbox note") from exc

    def account_dir(self, user_id: str) -> Path:
        # A hash, not the user id, so that the data dir's listing does not
        # name the account.
        digest = hashlib.sha256(user_id.encode()).hexdigest()[:16]
        return self.data_dir / digest

    def ensure_private_dir(self, path: Path) -> None:
        """Create ``path`` 0700 (parents as needed) and check that it is ours."""
        try:
            path.mkdir(mode=0o700, parents=True, exist_ok=True)
            st = path.lstat()
        except OSError as exc:
            raise ConfigError(f"cannot create directory {path}: {exc.strerror}") from exc
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
            raise ConfigError(f"{path} is not a directory owned by this user")
        if stat.S_IMODE(st.st_mode) != 0o700:
            os.chmod(path, 0o700)


CONFIG_FILE = "config.toml"
_LOG_LEVELS = ("debug", "info", "warning", "error")
_BACKENDS = ("keyring", "encrypted-file")


@dataclass(frozen=True, slots=True)
class Settings:
    """``$XDG_CONFIG_HOME/skiffyd/config.toml``; every key is optional::

        log_level = "info"               # debug | info | warning | error

        [credentials]
        backend = "keyring"              # or "encrypted-file" (headless)
        # encrypted-file only: where the passphrase is read from. Default:
        # $CREDENTIALS_DIRECTORY/skiffyd-passphrase (systemd LoadCredential*).
        passphrase_file = "/path/to/file"

    SIGHUP re-reads it: the log level applies at once; a credentials change
    applies at the next start (the session's credentials stay where they are).
    """

    log_level: str = "info"
    credentials_backend: str = "keyring"
    passphrase_file: Path | None = None

    @classmethod
    def load(cls, paths: Paths) -> Settings:
        import tomllib

        path = paths.config_dir / CONFIG_FILE
        try:
            with path.open("rb") as f:
                data = tomllib.load(f)
        except FileNotFoundError:
            data = {}
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"cannot read {path}: {exc}") from exc
        known = {"log_level", "credentials"}
        unknown = sorted(set(data) - known)
        creds = data.get("credentials", {})
        if unknown or not isinstance(creds, dict):
            raise ConfigError(f"{path}: unknown settings {unknown or ['credentials']}")
        unknown = sorted(set(creds) - {"backend", "passphrase_file"})
        if unknown:
            raise ConfigError(f"{path}: unknown [credentials] settings {unknown}")
        level = data.get("log_level", "info")
        if level not in _LOG_LEVELS:
            raise ConfigError(f"{path}: log_level must be one of {', '.join(_LOG_LEVELS)}")
        backend = creds.get("backend", "keyring")
        if backend not in _BACKENDS:
            raise ConfigError(f"{path}: credentials.backend must be one of {', '.join(_BACKENDS)}")
        passphrase = creds.get("passphrase_file")
        if passphrase is None and os.environ.get("CREDENTIALS_DIRECTORY"):
            passphrase = os.path.join(os.environ["CREDENTIALS_DIRECTORY"], "skiffyd-passphrase")
        if passphrase is not None and not isinstance(passphrase, str):
            raise ConfigError(f"{path}: credentials.passphrase_file must be a path")
        return cls(
            log_level=level,
            credentials_backend=backend,
            passphrase_file=Path(passphrase) if passphrase else None,
        )
