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
