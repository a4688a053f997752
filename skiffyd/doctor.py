"""``skiffyd doctor``: what is wrong with this setup, and how to fix it.

Each check is a plain function returning :class:`Check` (a name, a status,
what was found, and a fix when something is wrong), so tests run them one
by one against temporary directories, a real keyring, a real daemon and real
HTTP servers. :func:`run_checks` runs them all in order, feeding each what
the earlier ones learned (the daemon's status, the account's credentials):

=============  ==============================================================
config         ``config.toml`` reads, and which credentials store it chooses
credentials    that store: a usable, non-plaintext keyring backend, or the
               encrypted file's passphrase (``skip`` when only the service
               is given it)
runtime dir    ``$XDG_RUNTIME_DIR/skiffyd`` is a directory of ours, mode 0700
sockets        ``cmd.sock``, ``events.sock`` and ``daemon.lock`` are ours, 0600
daemon         the daemon answers ``Status``; its state
account        the account pointer, and the stored credentials for that account
cache          the cache file is ours, 0600, and decrypts with the stored key
homeserver     ``GET /_matrix/client/versions`` answers; TLS errors told apart
clock          the homeserver's ``Date`` against the local clock (warn > 30 s)
service        the systemd unit or launchd agent: installed, enabled, running
=============  ==============================================================

The cache is opened read-only (then closed at once, never migrated) only
when no daemon has it open: when the daemon is running with a session, that
it got there is the proof that the key fits. Nothing secret is ever put in
a check: no token, no key, no password; credentials are read only to find
the cache key and the homeserver.
"""

from __future__ import annotations

import contextlib
import email.utils
import os
import ssl
import stat
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import ipc_schema as wire
from skiffyd import __version__
from skiffyd.config import Paths
from skiffyd.errors import (
    CacheError,
    CacheWrongKeyError,
    ConfigError,
    CredentialsError,
    DaemonNotRunningError,
    NoKeyringError,
    SkiffyError,
)

if TYPE_CHECKING:
    from collections.abc import Iterable

    import httpx

    from skiffyd.config import Settings
    from skiffyd.credentials import Credentials
    from skiffyd.service import ServiceManager

__all__ = [
    "CLOCK_SKEW_LIMIT",
    "Account",
    "Check",
    "ServerTime",
    "check_account",
    "check_cache",
    "check_clock",
    "check_config",
    "check_credentials",
    "check_daemon",
    "check_homeserver",
    "check_kept_outbox",
    "check_runtime_dir",
    "check_service",
    "check_sockets",
    "daemon_pid",
    "failed",
    "render_text",
    "run_checks",
]

CheckStatus = Literal["pass", "warn", "fail", "skip"]

#: Clock skew (seconds) against the homeserver above which doctor warns.
CLOCK_SKEW_LIMIT = 30.0

_START_HINT = (
    "start it: `systemctl --user start skiffyd` if it is installed as a service "
    "(`skiffyd service install`), otherwise `skiffyd run`"
)
_LOGIN_HINT = "log in: `skiffyd login --homeserver https://your.server --user @you:your.server`"


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    status: CheckStatus
    detail: str
    fix: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def failed(checks: Iterable[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


# ------------------------------------------------------------------ credentials


def check_config(paths: Paths) -> tuple[Check, Settings]:
    """``config.toml``: readable, and which credentials store it chooses."""
    from skiffyd.config import CONFIG_FILE, Settings

    path = paths.config_dir / CONFIG_FILE
    try:
        settings = Settings.load(paths)
    except ConfigError as exc:
        return (
            Check(
                "config",
                "fail",
                exc.message,
                f"fix {path} (see docs/operations.md); the daemon does not start with it",
            ),
            Settings(),
        )
    where = str(path) if path.exists() else f"no {path}, defaults"
    store = "the OS keyring" if settings.credentials_backend == "keyring" else "an encrypted file"
    return Check("config", "pass", f"{where}: credentials in {store}"), settings


def _keyring_check() -> Check:
    from skiffyd import credentials

    try:
        backend = credentials.check_keyring()
    except NoKeyringError as exc:
        backends = (exc.details or {}).get("backends")
        if backends:
            return Check(
                "credentials",
                "fail",
                f"{exc.message}: {', '.join(backends)}",
                "select a real backend (a Secret Service, the macOS Keychain) with "
                "PYTHON_KEYRING_BACKEND, or remove the keyring configuration that picks this one",
            )
        return Check(
            "credentials", "fail", "no usable OS keyring backend", credentials.NO_KEYRING_HELP
        )
    except Exception as exc:
        return Check(
            "credentials",
            "fail",
            f"the keyring library failed to start: {type(exc).__name__}",
            "check the keyring configuration (`python -m keyring diagnose`)",
        )
    inner = list(getattr(backend, "backends", [backend]))
    names = [f"{type(b).__module__}.{type(b).__name__}" for b in inner]
    names = [n for n in names if not n.startswith("keyring.backends.fail")]
    return Check("credentials", "pass", "keyring " + ", ".join(names))


def check_credentials(paths: Paths, settings: Settings | None = None) -> tuple[Check, bool]:
    """The credentials store ``settings`` choose (and this process will use).

    Returns the check and whether credentials can be read here. The
    encrypted-file store's passphrase may be given only to the service
    (systemd's ``$CREDENTIALS_DIRECTORY``): then nothing can be read from a
    shell, which is a ``skip``, not a failure.
    """
    from skiffyd import credentials
    from skiffyd.config import Settings

    settings = settings if settings is not None else Settings()
    credentials.configure(
        settings.credentials_backend,
        directory=paths.data_dir,
        passphrase_file=settings.passphrase_file,
    )
    if settings.credentials_backend == "keyring":
        check = _keyring_check()
        return check, check.status == "pass"
    try:
        credentials.check_backend()
    except NoKeyringError as exc:
        if settings.passphrase_file is None:
            return (
                Check(
                    "credentials",
                    "skip",
                    "encrypted-file store; its passphrase is given only to the service "
                    "(systemd LoadCredentialEncrypted=), so it is not opened here",
                ),
                False,
            )
        return (
            Check(
                "credentials",
                "fail",
                f"encrypted-file store: {exc.message}",
                "check [credentials] passphrase_file in config.toml: a readable file of at "
                "least 16 characters",
            ),
            False,
        )
    return (
        Check(
            "credentials", "pass", f"encrypted-file store, passphrase {settings.passphrase_file}"
        ),
        True,
    )


# ------------------------------------------------------------------ files


def _ownership_problem(path: Path, st: os.stat_result, mode: int) -> tuple[str, str] | None:
    """(what is wrong, fix) for a file that should be ours with ``mode``."""
    if st.st_uid != os.getuid():
        return (
            f"{path} belongs to uid {st.st_uid}, not to you (uid {os.getuid()})",
            f"remove it (`rm -r {path}`) or use your own XDG_RUNTIME_DIR / XDG_DATA_HOME",
        )
    actual = stat.S_IMODE(st.st_mode)
    if actual != mode:
        return (
            f"{path} has mode {actual:04o}, expected {mode:04o}",
            f"`chmod {mode:o} {path}`",
        )
    return None


def check_runtime_dir(paths: Paths, *, daemon_running: bool) -> Check:
    """The runtime directory: a directory (not a link) of ours, mode 0700."""
    path = paths.runtime_dir
    try:
        st = path.lstat()
    except FileNotFoundError:
        if daemon_running:
            return Check(
                "runtime dir",
                "fail",
                f"{path} does not exist, yet a daemon is running",
                "run the CLI with the daemon's XDG_RUNTIME_DIR",
            )
        return Check("runtime dir", "pass", f"{path} does not exist yet (the daemon creates it)")
    except OSError as exc:
        return Check("runtime dir", "fail", f"cannot inspect {path}: {exc.strerror}")
    if not stat.S_ISDIR(st.st_mode):
        return Check(
            "runtime dir",
            "fail",
            f"{path} is not a directory",
            f"remove it (`rm {path}`); the daemon creates the directory",
        )
    problem = _ownership_problem(path, st, 0o700)
    if problem:
        return Check("runtime dir", "fail", *problem)
    return Check("runtime dir", "pass", f"{path} (0700, yours)")


def check_sockets(paths: Paths, *, daemon_running: bool) -> Check:
    """The IPC sockets and the lock file: ours and 0600."""
    files = [paths.command_socket, paths.event_socket, paths.lock_file]
    present: list[Path] = []
    for path in files:
        try:
            st = path.lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            return Check("sockets", "fail", f"cannot inspect {path}: {exc.strerror}")
        problem = _ownership_problem(path, st, 0o600)
        if problem:
            return Check("sockets", "fail", *problem)
        present.append(path)
    names = ", ".join(p.name for p in present)
    if daemon_running:
        missing = [p.name for p in files[:2] if p not in present]
        if missing:
            return Check(
                "sockets",
                "fail",
                f"the daemon runs but {', '.join(missing)} is missing in {paths.runtime_dir}",
                "restart the daemon (it listens again on start)",
            )
        return Check("sockets", "pass", f"{names} (0600, yours)")
    if present:
        return Check("sockets", "pass", f"{names} left by an earlier run (0600, yours)")
    return Check("sockets", "pass", "no sockets (the daemon is not running)")


# ------------------------------------------------------------------ daemon


def daemon_pid(paths: Paths) -> int | None:
    """The pid in the instance lock, if that process is alive (it may not answer)."""
    try:
        pid = int(paths.lock_file.read_text().strip() or "0")
    except (OSError, ValueError):
        return None
    if pid <= 0:
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        return pid
    cmdline = Path(f"/proc/{pid}/cmdline")
    with contextlib.suppress(OSError):
        if b"skiffyd" not in cmdline.read_bytes():
            return None  # the pid was reused by something else
    return pid


def check_daemon(paths: Paths, *, timeout: float = 5.0) -> tuple[Check, wire.StatusResult | None]:
    """Ask the daemon for its status."""
    from skiffyd.ipc.client import DaemonClient, DaemonTimeoutError

    try:
        with DaemonClient(paths, timeout=timeout) as client:
            st = client.request_as(wire.Status(), wire.StatusResult)
    except DaemonTimeoutError as exc:
        return (
            Check(
                "daemon",
                "fail",
                exc.message,
                "the daemon is stuck: restart it (`systemctl --user restart skiffyd`, or "
                "stop and start `skiffyd run`) and look at its log",
            ),
            None,
        )
    except DaemonNotRunningError as exc:
        return Check("daemon", "fail", exc.message, _START_HINT), None
    except SkiffyError as exc:
        return Check("daemon", "fail", f"{exc.message} [{exc.code}]", None), None
    account = f", account {st.user_id}" if st.user_id else ""
    where = f"running (pid {st.pid}), state {st.state}{account}"
    if st.state == "offline":
        problem = f": {st.last_error}" if st.last_error else ""
        return (
            Check(
                "daemon",
                "warn",
                f"{where}{problem}",
                "the daemon cannot reach the homeserver and retries by itself; "
                "see the homeserver check",
            ),
            st,
        )
    if st.state == "logged_out":
        if st.last_error:
            return Check("daemon", "fail", f"{where}: {st.last_error}", _LOGIN_HINT), st
        return Check("daemon", "warn", f"{where}: no account logged in", _LOGIN_HINT), st
    return Check("daemon", "pass", where), st


# ------------------------------------------------------------------ account


@dataclass(frozen=True, slots=True)
class Account:
    """What :func:`check_account` found: the user id, and credentials if readable."""

    user_id: str
    credentials: Credentials | None = None


def _credentials_file(paths: Paths, user_id: str) -> Path:
    from skiffyd.credentials import EncryptedFileStore

    return EncryptedFileStore(paths.data_dir, None)._path(user_id)


def _kept_outbox(paths: Paths) -> tuple[str, int] | None:
    """What a revoked session's kept-outbox note says (the daemon writes it;
    see docs/architecture.md); None if there is none or it cannot be read."""
    try:
        return paths.read_kept_outbox()
    except (OSError, ValueError):
        return None


def _kept_fix(user_id: str, *, other_logged_in: bool = False) -> str:
    first = "`skiffyd logout`, then " if other_logged_in else ""
    return (
        f"to send them, {first}log in as {user_id} (`skiffyd login`); to drop them, "
        f"`skiffyd forget-account {user_id} --discard-outbox`"
    )


def check_kept_outbox(paths: Paths, logged_in: str | None) -> Check | None:
    """A revoked session's kept outbox of an account other than ``logged_in``
    (the account the pointer names), or None. With no account logged in,
    :func:`check_account` says it instead."""
    kept = _kept_outbox(paths)
    if logged_in is None or kept is None or kept[0] == logged_in:
        return None
    user_id, items = kept
    return Check(
        "kept outbox",
        "warn",
        f"the revoked session of {user_id} left {items} unsent message"
        f"{'s' if items != 1 else ''} for that account's next login",
        _kept_fix(user_id, other_logged_in=True),
    )


def check_account(
    paths: Paths,
    status: wire.StatusResult | None = None,
    *,
    settings: Settings | None = None,
    readable: bool = True,
) -> tuple[Check, Account | None]:
    """The account pointer and its credentials (read here, never shown).

    ``readable``: whether :func:`check_credentials` found the store usable
    from here; if not, only the encrypted file's presence and mode are checked.
    """
    from skiffyd import credentials

    in_file = settings is not None and settings.credentials_backend == "encrypted-file"
    item = "credentials file" if in_file else "keyring item"
    pointer = paths.account_pointer
    try:
        user_id = paths.read_account_pointer() or ""
    except OSError as exc:
        return Check("account", "fail", f"cannot read {pointer}: {exc.strerror}"), None
    if not user_id:
        detail, fix = f"no account (no pointer at {pointer})", _LOGIN_HINT
        kept = _kept_outbox(paths)
        if kept is not None:
            detail += (
                f"; the revoked session of {kept[0]} left {kept[1]} unsent message"
                f"{'s' if kept[1] != 1 else ''} for its next login"
            )
            fix = _kept_fix(kept[0])
        return Check("account", "warn", detail, fix), None
    account = Account(user_id)
    if in_file:
        path = _credentials_file(paths, user_id)
        try:
            st = path.lstat()
        except FileNotFoundError:
            return (
                Check(
                    "account",
                    "fail",
                    f"{user_id}: no credentials file ({path})",
                    f"the session cannot be resumed; {_LOGIN_HINT}",
                ),
                account,
            )
        except OSError as exc:
            return Check("account", "fail", f"cannot inspect {path}: {exc.strerror}"), account
        problem = _ownership_problem(path, st, 0o600)
        if problem:
            return Check("account", "fail", *problem), account
        if not readable:
            return (
                Check(
                    "account",
                    "pass",
                    f"{user_id}: credentials file present ({path}, 0600), not opened here",
                ),
                account,
            )
    elif not readable:
        return Check("account", "skip", f"{user_id}: the keyring cannot be read here"), account
    try:
        creds = credentials.load(user_id)
    except CredentialsError as exc:
        fix = (
            "check the passphrase the config names"
            if in_file
            else "unlock the keyring (or start its daemon) and run doctor again"
        )
        return Check("account", "fail", f"{user_id}: {exc.message}", fix), account
    if creds is None:
        where = (
            "the credentials file is gone"
            if in_file
            else f"the keyring has no item for this account (service `{credentials.SERVICE}`)"
        )
        return (
            Check(
                "account",
                "fail",
                f"{user_id}: {where}",
                f"the session cannot be resumed; {_LOGIN_HINT}",
            ),
            account,
        )
    if creds.user_id != user_id:
        return (
            Check(
                "account", "fail", f"the {item} for {user_id} is for {creds.user_id}", _LOGIN_HINT
            ),
            account,
        )
    account = Account(user_id, creds)
    refresh = "with a refresh token" if creds.refresh_token else "no refresh token"
    detail = (
        f"{user_id} on {creds.homeserver} (device {creds.device_id}), {item} present, {refresh}"
    )
    if status is not None and status.user_id and status.user_id != user_id:
        return (
            Check(
                "account",
                "warn",
                f"{detail}; but the daemon runs {status.user_id}",
                "restart the daemon so that it resumes the stored account",
            ),
            account,
        )
    return Check("account", "pass", detail), account


# ------------------------------------------------------------------ cache


def check_cache(
    paths: Paths,
    user_id: str,
    cache_key: str | None,
    *,
    daemon_has_it_open: bool,
    may_open: bool = True,
) -> Check:
    """The cache file: ours, 0600 (and its WAL files), decryptable with the key.

    ``daemon_has_it_open``: the daemon runs this account, so it opened the
    cache with this key already; it is not opened a second time.
    ``may_open``: False when a daemon may be running that could not be asked.
    ``cache_key`` None: the credentials could not be read here; only the
    files are checked.
    """
    from skiffyd.cache.migrations import MIGRATIONS
    from skiffyd.cache.store import CacheReader

    path = paths.account_dir(user_id) / "cache.db"
    try:
        path.lstat()
    except FileNotFoundError:
        if daemon_has_it_open:
            return Check(
                "cache",
                "fail",
                f"{path} is missing while the daemon runs the account",
                "restart the daemon",
            )
        return Check(
            "cache",
            "warn",
            f"no cache at {path} yet",
            "start the daemon: it creates the cache when it resumes the account",
        )
    for member in (path, path.with_name("cache.db-wal"), path.with_name("cache.db-shm")):
        try:
            st = member.lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            return Check("cache", "fail", f"cannot inspect {member}: {exc.strerror}")
        if not stat.S_ISREG(st.st_mode):
            return Check("cache", "fail", f"{member} is not a regular file")
        problem = _ownership_problem(member, st, 0o600)
        if problem:
            return Check("cache", "fail", *problem)
    if daemon_has_it_open:
        return Check("cache", "pass", f"{path} (0600), open in the daemon with the stored key")
    if cache_key is None:
        return Check(
            "cache",
            "skip",
            f"{path} (0600); the key was not tried: the credentials cannot be read here",
        )
    if not may_open:
        return Check(
            "cache",
            "warn",
            f"{path} (0600); the key was not tried: a daemon holds the lock but does not answer",
            "restart the daemon, then run doctor again",
        )
    try:
        # Read-only: doctor never migrates (a migration may rebuild a table;
        # the daemon runs them when it next opens the cache).
        reader = CacheReader.open(path, cache_key)
        try:
            schema = reader.schema_version()
        finally:
            reader.close()
    except CacheWrongKeyError:
        return Check(
            "cache",
            "fail",
            f"{path} cannot be decrypted with the stored cache key",
            "stop skiffyd, move the cache aside (`mv cache.db cache.db.unreadable`, and its "
            "-wal and -shm files) and start it again: it builds a new cache from the homeserver",
        )
    except CacheError as exc:
        return Check("cache", "fail", f"{path}: {exc.message}", None)
    known = len(MIGRATIONS)
    if schema > known:
        return Check(
            "cache",
            "fail",
            f"{path} was written by a newer skiffyd (schema {schema}, this one knows {known})",
            "run the skiffyd that wrote it, or move the cache aside and let this one "
            "build a new one",
        )
    later = (
        f"; schema {schema}, the daemon brings it to {known} when it starts"
        if schema < known
        else ""
    )
    return Check("cache", "pass", f"{path} (0600) decrypts with the stored key{later}")


# ------------------------------------------------------------------ network


@dataclass(frozen=True, slots=True)
class ServerTime:
    """The homeserver's ``Date`` header and the local time it was received at."""

    date: str | None
    local_time: float


def _tls_reason(exc: BaseException) -> str | None:
    """The TLS failure inside an httpx connection error, if it is one."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ssl.SSLCertVerificationError):
            return f"certificate verify failed: {current.verify_message}"
        if isinstance(current, ssl.SSLError):
            return str(current.reason or current)
        current = current.__cause__ or current.__context__
    text = str(exc)
    if "SSL" in text or "CERTIFICATE" in text.upper():
        return text
    return None


def check_homeserver(
    url: str, *, timeout: float = 10.0, transport: httpx.BaseTransport | None = None
) -> tuple[Check, ServerTime | None]:
    """``GET {url}/_matrix/client/versions``: reachable, TLS, a Matrix server."""
    import httpx

    from skiffyd.core.homeserver import normalize_homeserver

    try:
        base = normalize_homeserver(url)
    except SkiffyError as exc:
        return Check("homeserver", "fail", exc.message, _LOGIN_HINT), None
    endpoint = f"{base}/_matrix/client/versions"
    tls_version: str | None = None
    try:
        with httpx.Client(
            timeout=timeout,
            follow_redirects=False,
            headers={"User-Agent": f"skiffyd/{__version__} doctor"},
            transport=transport,
        ) as client:
            sent = time.time()
            with client.stream("GET", endpoint) as response:
                received = time.time()
                # Asked before the body is read: the connection may close after it.
                stream = response.extensions.get("network_stream")
                ssl_object = stream.get_extra_info("ssl_object") if stream is not None else None
                if ssl_object is not None:
                    tls_version = ssl_object.version()
                response.read()
    except httpx.TimeoutException:
        return (
            Check(
                "homeserver",
                "fail",
                f"{base} did not answer within {timeout:g} s",
                "check the network, a firewall or proxy, and that the server is up",
            ),
            None,
        )
    except httpx.HTTPError as exc:
        reason = _tls_reason(exc)
        if reason is not None and base.startswith("https:"):
            return (
                Check(
                    "homeserver",
                    "fail",
                    f"TLS with {base} failed: {reason}",
                    "the server's certificate is not trusted (expired, issued for another "
                    "name, or signed by an unknown CA): fix the certificate; for a private CA "
                    "set SSL_CERT_FILE to a bundle that includes it, for the service too",
                ),
                None,
            )
        return (
            Check(
                "homeserver",
                "fail",
                f"cannot reach {base}: {exc or type(exc).__name__}",
                "check the URL, DNS and the network",
            ),
            None,
        )
    clock = ServerTime(response.headers.get("date"), (sent + received) / 2)
    if response.is_redirect:
        location = response.headers.get("location", "?")
        return (
            Check(
                "homeserver",
                "fail",
                f"{endpoint} redirects to {location}",
                "log in with the homeserver's client API URL (see "
                "https://<your domain>/.well-known/matrix/client)",
            ),
            clock,
        )
    versions: list[str] = []
    with contextlib.suppress(ValueError, AttributeError, TypeError):
        versions = [str(v) for v in response.json().get("versions", [])]
    if response.status_code != 200 or not versions:
        return (
            Check(
                "homeserver",
                "fail",
                f"{endpoint} answered HTTP {response.status_code}"
                + ("" if versions else ", not a Matrix versions document"),
                "check that this is the homeserver's client API URL (see "
                "https://<your domain>/.well-known/matrix/client)",
            ),
            clock,
        )
    transport_desc = f"TLS ok ({tls_version})" if tls_version else "plain HTTP (loopback)"
    if base.startswith("https:") and not tls_version:
        transport_desc = "TLS ok"
    return (
        Check(
            "homeserver",
            "pass",
            f"{base} answers, {transport_desc}, Matrix {versions[0]} to {versions[-1]}",
        ),
        clock,
    )


def check_clock(server: ServerTime | None, *, limit: float = CLOCK_SKEW_LIMIT) -> Check:
    """The local clock against the homeserver's ``Date`` header (1 s resolution)."""
    if server is None:
        return Check("clock", "skip", "no answer from the homeserver to compare with")
    if not server.date:
        return Check("clock", "skip", "the homeserver sent no Date header")
    try:
        remote = email.utils.parsedate_to_datetime(server.date).timestamp()
    except (TypeError, ValueError, IndexError):
        return Check(
            "clock", "skip", f"unreadable Date header from the homeserver: {server.date!r}"
        )
    # Date is truncated to the second: the server's time is in [remote, remote + 1).
    skew = server.local_time - (remote + 0.5)
    size = abs(skew)
    if size <= limit:
        return Check("clock", "pass", f"within {max(1, round(size))} s of the homeserver's")
    direction = "ahead of" if skew > 0 else "behind"
    return Check(
        "clock",
        "warn",
        f"the local clock is {round(size)} s {direction} the homeserver's",
        "turn on time synchronisation (`timedatectl set-ntp true`, chrony or ntpd; on macOS "
        "set the time automatically): token expiry and certificate checks depend on it",
    )


# ------------------------------------------------------------------ service


def check_service(manager: ServiceManager | None) -> Check:
    """The systemd unit or launchd agent, from ``skiffyd service status``."""
    if manager is None:
        return Check("service", "skip", "no supported service manager on this system")
    try:
        st = manager.status()
    except SkiffyError as exc:
        return Check("service", "fail", exc.message)
    reinstall = "`skiffyd service install` (writes this skiffyd's path)"
    if not st.installed:
        return Check(
            "service",
            "warn",
            f"not installed as a {st.manager} service ({st.path} does not exist)",
            "`skiffyd service install`, unless you run `skiffyd run` under your own supervisor",
        )
    if not st.program:
        return Check("service", "fail", f"{st.path} names no program to run", reinstall)
    if not st.program_exists:
        return Check(
            "service", "fail", f"{st.path} runs {st.program[0]}, which does not exist", reinstall
        )
    if st.error:
        return Check("service", "warn", f"{st.path} is installed, but {st.error}")
    enabled_ok = st.enabled in ("enabled", "loaded")
    running = st.active in ("active", "activating", "reloading", "running")
    where = f"{st.path}: {st.enabled or 'unknown'}, {st.active or 'unknown'}"
    start = (
        "`systemctl --user enable --now skiffyd.service`"
        if st.manager == "systemd"
        else "`skiffyd service install` (loads the agent)"
    )
    if st.active == "failed":
        return Check(
            "service",
            "fail",
            where,
            "see why: `journalctl --user -u skiffyd -n 50`; then "
            "`systemctl --user reset-failed skiffyd` and `systemctl --user start skiffyd`",
        )
    if not enabled_ok or not running:
        return Check("service", "warn", where, start)
    if st.current is False:
        return Check(
            "service",
            "warn",
            f"{where}; the file differs from what this version of skiffyd writes",
            reinstall,
        )
    headless = _headless_problem(manager)
    if headless:
        return Check("service", "warn", f"{where}; {headless[0]}", headless[1])
    return Check("service", "pass", where)


def _headless_problem(manager: ServiceManager) -> tuple[str, str] | None:
    """The unit and the encrypted-file store's passphrase credential disagree."""
    from skiffyd.service import SystemdUserService, unit_credential

    if not isinstance(manager, SystemdUserService):
        return None
    if manager.credential_note:
        return "the unit cannot give the daemon its passphrase", manager.credential_note
    if manager.credential is None:
        return None
    try:
        loaded = unit_credential(manager.path.read_text())
    except OSError:
        return None
    if loaded != manager.credential:
        return (
            f"the unit does not load the passphrase credential {manager.credential}",
            "`skiffyd service install` (turns on LoadCredentialEncrypted= for it)",
        )
    return None


# ------------------------------------------------------------------ all


def run_checks(
    paths: Paths | None = None,
    *,
    service: ServiceManager | Literal["auto"] | None = "auto",
    daemon_timeout: float = 5.0,
    http_timeout: float = 10.0,
) -> list[Check]:
    """Every check, in order. ``service="auto"``: this platform's service manager."""
    paths = paths if paths is not None else Paths.from_env()
    checks: list[Check] = []

    config_check, settings = check_config(paths)
    checks.append(config_check)
    cred_check, readable = check_credentials(paths, settings)
    checks.append(cred_check)

    daemon_check, status = check_daemon(paths, timeout=daemon_timeout)
    lingering = daemon_pid(paths) if status is None else None
    running = status is not None or lingering is not None
    checks.append(check_runtime_dir(paths, daemon_running=running))
    checks.append(check_sockets(paths, daemon_running=running))
    checks.append(daemon_check)

    account: Account | None = None
    if cred_check.status == "fail" and settings.credentials_backend == "keyring":
        checks.append(Check("account", "skip", "needs a keyring"))
    else:
        account_check, account = check_account(paths, status, settings=settings, readable=readable)
        checks.append(account_check)
        kept_check = check_kept_outbox(paths, account.user_id if account is not None else None)
        if kept_check is not None:
            checks.append(kept_check)
    creds = account.credentials if account is not None else None

    if account is None:
        checks.append(Check("cache", "skip", "no account"))
    else:
        has_it_open = (
            status is not None
            and status.user_id == account.user_id
            and status.state != "logged_out"
        )
        checks.append(
            check_cache(
                paths,
                account.user_id,
                creds.cache_key if creds is not None else None,
                daemon_has_it_open=has_it_open,
                may_open=status is not None or lingering is None,
            )
        )

    homeserver = creds.homeserver if creds is not None else status.homeserver if status else None
    if homeserver:
        hs_check, server_time = check_homeserver(homeserver, timeout=http_timeout)
        checks.append(hs_check)
        checks.append(check_clock(server_time))
    else:
        checks.append(Check("homeserver", "skip", "no account, so no homeserver to check"))
        checks.append(Check("clock", "skip", "no homeserver to compare with"))

    if service == "auto":
        from skiffyd.service import for_platform

        try:
            manager: ServiceManager | None = for_platform(paths=paths)
        except ConfigError:
            manager = None
    else:
        manager = service
    checks.append(check_service(manager))
    return checks


def render_text(checks: Iterable[Check]) -> str:
    """The human report: one line per check, its fix indented below."""
    checks = list(checks)
    width = max((len(c.name) for c in checks), default=0)
    lines: list[str] = []
    for c in checks:
        lines.append(f"{c.status:<4}  {c.name:<{width}}  {c.detail}")
        if c.fix and c.status in ("fail", "warn"):
            lines.append(f"{'':<4}  {'':<{width}}  fix: {c.fix}")
    fails = sum(c.status == "fail" for c in checks)
    warns = sum(c.status == "warn" for c in checks)
    if fails or warns:
        parts = [f"{fails} failed"] if fails else []
        parts += [f"{warns} warning{'s' if warns != 1 else ''}"] if warns else []
        lines.append(", ".join(parts))
    else:
        lines.append("all checks passed")
    return "\n".join(lines)
