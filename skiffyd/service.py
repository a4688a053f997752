"""``skiffyd service install|uninstall|status``: the daemon as a user service.

Linux: a systemd user unit, ``$XDG_CONFIG_HOME/systemd/user/skiffyd.service``
(default ``~/.config/systemd/user``), enabled and started with
``systemctl --user``. macOS: a launchd agent,
``~/Library/LaunchAgents/org.skiffyd.daemon.plist``, loaded with
``launchctl bootstrap gui/<uid>``.

The files are rendered from templates shipped in this module
(:data:`SYSTEMD_UNIT_TEMPLATE`, :data:`LAUNCHD_PLIST_TEMPLATE`): verbatim
copies of the repository's canonical ``systemd/skiffyd.service`` and
``launchd/org.skiffyd.daemon.plist`` (a test keeps them equal), so an
installed wheel needs no data files. Rendering is pure
(:func:`render_unit`, :func:`render_plist`): only the program path changes
(and ``@HOME@`` in the plist, because launchd expands nothing).

Every ``systemctl``/``launchctl`` call goes through a :data:`Runner`, a
function from an argument vector to a :class:`CommandResult`, so tests pass
a fake that records the calls. A service manager that cannot be reached (no
systemd user manager, as in a container or an SSH session without one) is a
result with an ``error`` that says what failed and what to do, never an
exception: the file is written all the same.
"""

from __future__ import annotations

import os
import plistlib
import re
import subprocess
import sys
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from skiffyd.config import Paths
from skiffyd.errors import ConfigError

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

SYSTEMD_UNIT_NAME = "skiffyd.service"
LAUNCHD_LABEL = "org.skiffyd.daemon"
#: The name of the systemd credential that carries the encrypted-file passphrase.
PASSPHRASE_CREDENTIAL = "skiffyd-passphrase"
#: Seconds one systemctl/launchctl call may take.
COMMAND_TIMEOUT = 30.0


@dataclass(frozen=True, slots=True)
class CommandResult:
    """What one ``systemctl``/``launchctl`` call did."""

    argv: tuple[str, ...]
    returncode: int
    stdout: str = ""
    stderr: str = ""

    @property
    def ok(self) -> bool:
        return self.returncode == 0

    @property
    def command(self) -> str:
        return " ".join(self.argv)

    @property
    def message(self) -> str:
        """Its error output on one line (stdout if stderr is empty)."""
        text = (self.stderr.strip() or self.stdout.strip()).replace("\n", " ")
        return text or f"exit status {self.returncode}"


class Runner(Protocol):
    def __call__(self, argv: Sequence[str]) -> CommandResult: ...


def run_command(argv: Sequence[str]) -> CommandResult:
    """The real runner: run ``argv`` with this process's environment."""
    args = tuple(argv)
    try:
        proc = subprocess.run(
            args,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        return CommandResult(args, 127, "", f"{args[0]}: command not found")
    except subprocess.TimeoutExpired:
        return CommandResult(args, 124, "", f"{args[0]} did not finish in {COMMAND_TIMEOUT:g} s")
    except OSError as exc:
        return CommandResult(args, 126, "", f"cannot run {args[0]}: {exc.strerror}")
    return CommandResult(args, proc.returncode, proc.stdout, proc.stderr)


# ------------------------------------------------------------------ program


def program_command(argv0: str | None = None, executable: str | None = None) -> list[str]:
    """The absolute command that runs this skiffyd (``run`` is appended later).

    The ``skiffyd`` script this process was started as; else the one beside
    the interpreter (a virtual environment's ``bin/``); else
    ``<python> -m skiffyd``. Symbolic links are kept, not resolved: pipx and
    ``uv tool`` put a link in ``~/.local/bin`` that stays valid across
    upgrades, while the file it points to moves.
    """
    argv0 = sys.argv[0] if argv0 is None else argv0
    executable = sys.executable if executable is None else executable
    candidates: list[Path] = []
    if argv0 and Path(argv0).name == "skiffyd":
        candidates.append(Path(os.path.abspath(argv0)))
    if executable:
        candidates.append(Path(os.path.abspath(executable)).parent / "skiffyd")
    for path in candidates:
        if path.is_file() and os.access(path, os.X_OK):
            return [str(path)]
    if not executable:
        raise ConfigError("cannot tell where skiffyd is installed (no sys.executable)")
    return [os.path.abspath(executable), "-m", "skiffyd"]


def _check_program(program: Sequence[str]) -> list[str]:
    args = list(program)
    if not args or not os.path.isabs(args[0]):
        raise ConfigError(f"the service's program must be an absolute path, not {args[:1]}")
    for arg in args:
        if any(ord(c) < 32 or ord(c) == 127 for c in arg):
            raise ConfigError("the program path contains a control character")
    return args


# ------------------------------------------------------------------ systemd


def systemd_quote(arg: str, *, program: bool = False) -> str:
    """One word of a systemd command line, as systemd will read it back.

    ``%`` starts a specifier, so it is doubled; so is ``$`` (a variable) in
    the arguments, but not in the program path, where systemd takes it
    literally. Words with blanks or quotes are double-quoted, C-escaped.
    """
    word = arg.replace("\\", "\\\\").replace("%", "%%")
    if not program:
        word = word.replace("$", "$$")
    if not word or any(c.isspace() or c in "\"'" for c in word):
        word = '"' + word.replace('"', '\\"') + '"'
    return word


def systemd_split(line: str) -> list[str]:
    """The inverse of :func:`systemd_quote` for the words it writes."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        while i < n and line[i].isspace():
            i += 1
        if i >= n:
            break
        word: list[str] = []
        quote = line[i] if line[i] in "\"'" else None
        if quote:
            i += 1
        while i < n:
            c = line[i]
            if quote and c == quote:
                i += 1
                break
            if not quote and c.isspace():
                break
            if c == "\\" and i + 1 < n:
                word.append(line[i + 1])
                i += 2
                continue
            if (c == "%" or (c == "$" and words)) and i + 1 < n and line[i + 1] == c:
                word.append(c)
                i += 2
                continue
            word.append(c)
            i += 1
        words.append("".join(word))
    return words


_UNIT_HEADER = """\
# skiffyd as a systemd user service, written by `skiffyd service install`.
#
# Installing again rewrites this file, and `skiffyd service uninstall`
# removes it: put local changes in a drop-in (`systemctl --user edit skiffyd`).
#
# The data directories below are the XDG defaults. If XDG_DATA_HOME or
# XDG_STATE_HOME are set for the user manager, change ExecStartPre= and
# ReadWritePaths= in a drop-in to match (see docs/operations.md).

"""

_EXEC_START = re.compile(r"^ExecStart=.*$", re.MULTILINE)


_LOAD_CREDENTIAL = re.compile(
    rf"^#?LoadCredentialEncrypted={PASSPHRASE_CREDENTIAL}:.*$", re.MULTILINE
)


def render_unit(
    program: Sequence[str], template: str | None = None, *, credential: Path | None = None
) -> str:
    """The unit file for ``program`` (the command before ``run``).

    ``credential``: the systemd-encrypted passphrase of the encrypted-file
    credentials store; the template's commented-out
    ``LoadCredentialEncrypted=`` line is turned on with this path.
    """
    args = _check_program(program)
    if any(c in args[0] for c in "\\\"'"):
        # systemd refuses such an executable name ("contains special characters").
        raise ConfigError(
            f"systemd cannot run a program whose path contains a backslash or a quote: "
            f"{args[0]!r}; install skiffyd in another directory"
        )
    text = SYSTEMD_UNIT_TEMPLATE if template is None else template
    body_at = text.find("\n[Unit]\n")
    if body_at < 0 or len(_EXEC_START.findall(text)) != 1:
        raise ConfigError("the unit template has no [Unit] section or not one ExecStart=")
    body = text[body_at + 1 :]
    words = [systemd_quote(args[0], program=True)] + [systemd_quote(a) for a in [*args[1:], "run"]]
    exec_start = "ExecStart=" + " ".join(words)
    body = _EXEC_START.sub(lambda _: exec_start, body)
    if credential is not None:
        cred = str(credential)
        if not credential.is_absolute() or any(c.isspace() or ord(c) < 32 for c in cred):
            raise ConfigError(
                f"the passphrase credential must be an absolute path without blanks: {cred!r}"
            )
        if len(_LOAD_CREDENTIAL.findall(body)) != 1:
            raise ConfigError("the unit template has no LoadCredentialEncrypted= line")
        line = f"LoadCredentialEncrypted={PASSPHRASE_CREDENTIAL}:{cred.replace('%', '%%')}"
        body = _LOAD_CREDENTIAL.sub(lambda _: line, body)
    return _UNIT_HEADER + body


def unit_credential(text: str) -> Path | None:
    """The passphrase credential a unit file loads (an uncommented line), if any."""
    for match in _LOAD_CREDENTIAL.finditer(text):
        line = match.group(0)
        if not line.startswith("#"):
            value = line.split(":", 1)[1].replace("%%", "%")
            return Path(value)
    return None


def passphrase_credential(paths: Paths | None = None) -> tuple[Path | None, str | None]:
    """The encrypted passphrase the unit should load, or why there is none.

    Only when ``config.toml`` chooses the encrypted-file credentials store
    without a ``passphrase_file`` (so the daemon reads it from systemd's
    ``$CREDENTIALS_DIRECTORY``): then ``$XDG_CONFIG_HOME/skiffyd/passphrase.cred``
    (``systemd-creds encrypt --user --name=skiffyd-passphrase …``) is loaded.
    Returns ``(path, None)``, ``(None, None)`` when nothing is needed, or
    ``(None, what to do)``.
    """
    from skiffyd.config import Settings

    paths = paths if paths is not None else Paths.from_env()
    try:
        settings = Settings.load(paths)
    except ConfigError as exc:
        return None, f"{exc.message}: the daemon will not start until it is fixed"
    if settings.credentials_backend != "encrypted-file" or settings.passphrase_file is not None:
        return None, None
    cred = paths.config_dir / "passphrase.cred"
    if cred.is_file():
        return cred, None
    return None, (
        "config.toml chooses the encrypted-file credentials store with the passphrase "
        f"from systemd, but {cred} does not exist: create it with `systemd-creds encrypt "
        f"--user --name={PASSPHRASE_CREDENTIAL} PASSPHRASE-FILE {cred}` and install again"
    )


def unit_program(text: str) -> list[str] | None:
    """The program of a unit file's (last) ``ExecStart=``, without ``run``."""
    lines = [m.group(0) for m in _EXEC_START.finditer(text)]
    lines = [line for line in lines if line != "ExecStart="]
    if not lines:
        return None
    words = systemd_split(lines[-1].removeprefix("ExecStart="))
    if words and words[0][:1] in "@-:+!" and not words[0].startswith("/"):
        words[0] = words[0].lstrip("@-:+!")
    if words and words[-1] == "run":
        words.pop()
    return words or None


# ------------------------------------------------------------------ launchd


def _replace_home(value: Any, home: str) -> Any:
    if isinstance(value, str):
        return value.replace("@HOME@", home)
    if isinstance(value, list):
        return [_replace_home(v, home) for v in value]
    if isinstance(value, dict):
        return {k: _replace_home(v, home) for k, v in value.items()}
    return value


def render_plist(program: Sequence[str], home: Path, template: str | None = None) -> bytes:
    """The agent's plist: ``@HOME@`` replaced and ``ProgramArguments`` set."""
    args = _check_program(program)
    if not home.is_absolute():
        raise ConfigError(f"the home directory must be an absolute path, not {home}")
    text = LAUNCHD_PLIST_TEMPLATE if template is None else template
    data = plistlib.loads(text.encode())
    data = _replace_home(data, str(home))
    data["ProgramArguments"] = [*args, "run"]
    return plistlib.dumps(data, sort_keys=False)


def plist_program(data: bytes) -> list[str] | None:
    try:
        parsed = plistlib.loads(data)
    except Exception:
        return None
    argv = parsed.get("ProgramArguments") if isinstance(parsed, dict) else None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        return None
    words = list(argv)
    if words and words[-1] == "run":
        words.pop()
    return words or None


# ------------------------------------------------------------------ results


@dataclass(slots=True)
class InstallResult:
    manager: str
    path: Path
    content: str
    program: list[str]
    dry_run: bool = False
    #: The file was (or, in a dry run, would be) different from what was there.
    changed: bool = True
    #: Commands run, in order (in a dry run: none).
    commands: list[CommandResult] = field(default_factory=list)
    #: Commands a dry run would run.
    planned: list[tuple[str, ...]] = field(default_factory=list)
    #: Why enabling or starting failed, with what to do; None when all went well.
    error: str | None = None
    #: Worth saying, not a failure (e.g. the running service uses the old file).
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class UninstallResult:
    manager: str
    path: Path
    was_installed: bool
    dry_run: bool = False
    removed: bool = False
    commands: list[CommandResult] = field(default_factory=list)
    planned: list[tuple[str, ...]] = field(default_factory=list)
    error: str | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass(slots=True)
class ServiceStatus:
    manager: str
    path: Path
    installed: bool
    #: The installed file's program (before ``run``), if it could be read.
    program: list[str] | None = None
    #: Whether that program exists and is executable.
    program_exists: bool | None = None
    #: Whether the file is exactly what this version's template makes of it.
    current: bool | None = None
    #: systemd: ``systemctl is-enabled`` (enabled, disabled, …);
    #: launchd: ``loaded`` or ``not loaded``. None: could not be asked.
    enabled: str | None = None
    #: systemd: ``systemctl is-active`` (active, inactive, failed, …);
    #: launchd: ``running`` or ``not running``. None: could not be asked.
    active: str | None = None
    #: Why the service manager could not be asked.
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "manager": self.manager,
            "path": str(self.path),
            "installed": self.installed,
            "program": self.program,
            "program_exists": self.program_exists,
            "current": self.current,
            "enabled": self.enabled,
            "active": self.active,
            "error": self.error,
        }


# ------------------------------------------------------------------ managers


def _write_atomic(path: Path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            os.write(fd, data)
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from exc


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from exc


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


class ServiceManager(ABC):
    """One service manager's install, uninstall and status for this user."""

    #: ``systemd`` or ``launchd``.
    kind: str
    #: The unit file or plist.
    path: Path

    def __init__(self, runner: Runner | None = None) -> None:
        self.run: Runner = runner if runner is not None else run_command

    @abstractmethod
    def render(self, program: Sequence[str]) -> str: ...

    @abstractmethod
    def installed_program(self, data: bytes) -> list[str] | None: ...

    def is_current(self, program: Sequence[str], data: bytes) -> bool:
        """Whether ``data`` is what this version renders for ``program``."""
        return self.render(program).encode() == data

    @abstractmethod
    def install(
        self, *, program: Sequence[str] | None = None, enable: bool = True, dry_run: bool = False
    ) -> InstallResult: ...

    @abstractmethod
    def uninstall(self, *, dry_run: bool = False) -> UninstallResult: ...

    @abstractmethod
    def query(self, status: ServiceStatus) -> None:
        """Fill in ``enabled``, ``active`` and ``error`` from the manager."""

    def status(self) -> ServiceStatus:
        status = ServiceStatus(manager=self.kind, path=self.path, installed=False)
        data = _read(self.path)
        if data is not None:
            status.installed = True
            status.program = self.installed_program(data)
            if status.program:
                status.program_exists = _executable(status.program[0])
                try:
                    status.current = self.is_current(status.program, data)
                except ConfigError:
                    status.current = False
        self.query(status)
        return status

    def _prepare(self, program: Sequence[str] | None, dry_run: bool) -> InstallResult:
        args = list(program) if program is not None else program_command()
        content = self.render(args)
        old = _read(self.path)
        return InstallResult(
            manager=self.kind,
            path=self.path,
            content=content,
            program=args,
            dry_run=dry_run,
            changed=old != content.encode(),
        )


class SystemdUserService(ServiceManager):
    """A systemd user unit, managed with ``systemctl --user``."""

    kind = "systemd"

    def __init__(
        self,
        unit_dir: Path,
        runner: Runner | None = None,
        *,
        booted_marker: Path = Path("/run/systemd/system"),
        credential: Path | None = None,
        credential_note: str | None = None,
    ) -> None:
        super().__init__(runner)
        self.unit_dir = unit_dir
        self.path = unit_dir / SYSTEMD_UNIT_NAME
        # sd_booted(3): this directory exists when systemd is the init system.
        self.booted_marker = booted_marker
        #: The encrypted passphrase to load (see :func:`passphrase_credential`).
        self.credential = credential
        self.credential_note = credential_note

    @classmethod
    def for_user(
        cls,
        env: Mapping[str, str] | None = None,
        runner: Runner | None = None,
        *,
        paths: Paths | None = None,
    ) -> SystemdUserService:
        """The user's unit directory; the headless passphrase from ``paths``' config."""
        env = os.environ if env is None else env
        config = env.get("XDG_CONFIG_HOME", "")
        if not (config and os.path.isabs(config)):
            home = env.get("HOME") or str(Path.home())
            config = os.path.join(home, ".config")
        credential, note = passphrase_credential(paths) if paths is not None else (None, None)
        return cls(
            Path(config) / "systemd" / "user",
            runner,
            credential=credential,
            credential_note=note,
        )

    def systemctl(self, *args: str) -> tuple[str, ...]:
        return ("systemctl", "--user", *args)

    def render(self, program: Sequence[str]) -> str:
        return render_unit(program, credential=self.credential)

    def installed_program(self, data: bytes) -> list[str] | None:
        return unit_program(data.decode(errors="replace"))

    def is_current(self, program: Sequence[str], data: bytes) -> bool:
        text = data.decode(errors="replace")
        return render_unit(program, credential=unit_credential(text)) == text

    def explain(self, result: CommandResult) -> str:
        """Why a systemctl call failed, and what to do about it."""
        what = f"`{result.command}` failed: {result.message}"
        if result.returncode == 127:
            return f"{what}. systemctl is not installed: this system does not run systemd"
        if not self.booted_marker.is_dir():
            return (
                f"{what}. This system is not running systemd (no {self.booted_marker}), "
                "so there is no user manager to run the service: run `skiffyd run` "
                "under the supervisor you use instead"
            )
        if "bus" in result.message.lower() or "XDG_RUNTIME_DIR" in result.message:
            return (
                f"{what}. No systemd user manager is reachable from this shell: log in "
                "with a full session (or `loginctl enable-linger $USER` and set "
                "XDG_RUNTIME_DIR=/run/user/$(id -u)), then run "
                f"`systemctl --user daemon-reload` and `systemctl --user enable --now "
                f"{SYSTEMD_UNIT_NAME}`"
            )
        return f"{what}. See `systemctl --user status {SYSTEMD_UNIT_NAME}` and `journalctl --user -u skiffyd`"

    def _step(self, out: list[CommandResult], *args: str) -> CommandResult:
        result = self.run(self.systemctl(*args))
        out.append(result)
        return result

    def install(
        self, *, program: Sequence[str] | None = None, enable: bool = True, dry_run: bool = False
    ) -> InstallResult:
        result = self._prepare(program, dry_run)
        steps = [self.systemctl("daemon-reload")]
        if enable:
            steps.append(self.systemctl("enable", "--now", SYSTEMD_UNIT_NAME))
        if self.credential_note:
            result.notes.append(self.credential_note)
        if dry_run:
            result.planned = steps
            return result
        existed = self.path.exists()
        _write_atomic(self.path, result.content.encode())
        reload = self._step(result.commands, "daemon-reload")
        if not enable:
            if not reload.ok:
                result.notes.append("systemd was not told about the file: " + self.explain(reload))
            return result
        if not reload.ok:
            result.error = self.explain(reload)
            return result
        started = self._step(result.commands, "enable", "--now", SYSTEMD_UNIT_NAME)
        if not started.ok:
            result.error = self.explain(started)
            return result
        if existed and result.changed:
            result.notes.append(
                "if the service was already running it still runs with the old unit: "
                f"`systemctl --user restart {SYSTEMD_UNIT_NAME}`"
            )
        return result

    def uninstall(self, *, dry_run: bool = False) -> UninstallResult:
        result = UninstallResult(
            manager=self.kind, path=self.path, was_installed=self.path.exists(), dry_run=dry_run
        )
        if not result.was_installed:
            return result
        steps = [
            self.systemctl("disable", "--now", SYSTEMD_UNIT_NAME),
            self.systemctl("daemon-reload"),
        ]
        if dry_run:
            result.planned = steps
            return result
        disabled = self._step(result.commands, "disable", "--now", SYSTEMD_UNIT_NAME)
        # Without a user manager, `disable` still removes the enablement links
        # (it works on the files); only stopping needs the manager.
        try:
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot remove {self.path}: {exc.strerror}") from exc
        result.removed = True
        reload = self._step(result.commands, "daemon-reload")
        failed = disabled if not disabled.ok else reload if not reload.ok else None
        if failed is not None:
            why = self.explain(failed)
            if self.booted_marker.is_dir():
                # A manager may still be running the service from the old file.
                result.error = f"removed {self.path}, but {why}"
            else:
                result.notes.append(
                    "systemd is not running here, so nothing was running the service"
                )
        return result

    def query(self, status: ServiceStatus) -> None:
        enabled = self.run(self.systemctl("is-enabled", SYSTEMD_UNIT_NAME))
        words = enabled.stdout.split()
        # is-enabled exits non-zero for "disabled" too: read its answer instead.
        status.enabled = words[0] if words else None
        if not status.installed and status.enabled is None:
            status.enabled = "not-found"
        active = self.run(self.systemctl("is-active", SYSTEMD_UNIT_NAME))
        words = active.stdout.split()
        status.active = words[0] if words else None
        if status.active is None:
            status.error = self.explain(active)
        elif status.enabled is None:
            status.error = self.explain(enabled)


class LaunchdAgent(ServiceManager):
    """A launchd user agent in the GUI domain, managed with ``launchctl``."""

    kind = "launchd"

    def __init__(self, home: Path, uid: int, runner: Runner | None = None) -> None:
        super().__init__(runner)
        self.home = home
        self.uid = uid
        self.path = home / "Library" / "LaunchAgents" / f"{LAUNCHD_LABEL}.plist"
        self.log_dir = home / "Library" / "Logs" / "skiffyd"

    @property
    def domain(self) -> str:
        return f"gui/{self.uid}"

    @property
    def target(self) -> str:
        return f"{self.domain}/{LAUNCHD_LABEL}"

    def render(self, program: Sequence[str]) -> str:
        return render_plist(program, self.home).decode()

    def installed_program(self, data: bytes) -> list[str] | None:
        return plist_program(data)

    def explain(self, result: CommandResult) -> str:
        what = f"`{result.command}` failed: {result.message}"
        return (
            f"{what}. Load the agent from your logged-in GUI session (the gui/{self.uid} "
            f"domain exists only there); see `launchctl print {self.target}` and "
            f"{self.log_dir}/skiffyd.log"
        )

    def _loaded(self) -> CommandResult:
        return self.run(("launchctl", "print", self.target))

    def install(
        self, *, program: Sequence[str] | None = None, enable: bool = True, dry_run: bool = False
    ) -> InstallResult:
        result = self._prepare(program, dry_run)
        bootstrap = ("launchctl", "bootstrap", self.domain, str(self.path))
        if dry_run:
            if enable:
                result.planned = [("launchctl", "bootout", self.target), bootstrap]
            return result
        try:
            self.log_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create {self.log_dir}: {exc.strerror}") from exc
        _write_atomic(self.path, result.content.encode())
        if not enable:
            return result
        loaded = self._loaded()
        result.commands.append(loaded)
        if loaded.ok:
            # bootstrap refuses a loaded label: unload the old definition first.
            out = self.run(("launchctl", "bootout", self.target))
            result.commands.append(out)
            if not out.ok:
                result.error = self.explain(out)
                return result
        boot = self.run(bootstrap)
        result.commands.append(boot)
        if not boot.ok:
            result.error = self.explain(boot)
        return result

    def uninstall(self, *, dry_run: bool = False) -> UninstallResult:
        result = UninstallResult(
            manager=self.kind, path=self.path, was_installed=self.path.exists(), dry_run=dry_run
        )
        if dry_run:
            if result.was_installed:
                result.planned = [("launchctl", "bootout", self.target)]
            return result
        loaded = self._loaded()
        result.commands.append(loaded)
        if loaded.ok:
            out = self.run(("launchctl", "bootout", self.target))
            result.commands.append(out)
            if not out.ok:
                result.error = self.explain(out)
        if result.was_installed:
            try:
                self.path.unlink(missing_ok=True)
            except OSError as exc:
                raise ConfigError(f"cannot remove {self.path}: {exc.strerror}") from exc
            result.removed = True
        return result

    def query(self, status: ServiceStatus) -> None:
        out = self._loaded()
        if out.ok:
            status.enabled = "loaded"
            state = re.search(r"^\s*state = (\S+)", out.stdout, re.MULTILINE)
            status.active = "running" if state and state.group(1) == "running" else "not running"
        elif out.returncode in (113, 3) or "could not find service" in out.message.lower():
            status.enabled = "not loaded"
            status.active = "not running"
        else:
            status.error = self.explain(out)


def for_platform(
    platform: str | None = None,
    *,
    runner: Runner | None = None,
    env: Mapping[str, str] | None = None,
    paths: Paths | None = None,
) -> ServiceManager:
    """The service manager of this system: systemd on Linux, launchd on macOS.

    ``paths``: where skiffyd's config is, to set up the headless passphrase
    credential (systemd only); None: none is looked for.
    """
    platform = sys.platform if platform is None else platform
    env = os.environ if env is None else env
    if platform.startswith("linux"):
        return SystemdUserService.for_user(env, runner, paths=paths)
    if platform == "darwin":
        home = Path(env.get("HOME") or str(Path.home()))
        return LaunchdAgent(home, os.getuid(), runner)
    raise ConfigError(
        f"`skiffyd service` supports Linux (systemd) and macOS (launchd), not {platform}; "
        "run `skiffyd run` under your own service manager"
    )


# ---------------------------------------------------------------- templates
#
# Verbatim copies of systemd/skiffyd.service and launchd/org.skiffyd.daemon.plist
# (tests/service/test_install.py checks that they are equal). When the
# canonical file changes, paste it here again.

SYSTEMD_UNIT_TEMPLATE = """\
# skiffyd as a systemd user service.
#
#   skiffyd service install      # writes this file with the real ExecStart, enables it
#
# or by hand:
#
#   install -Dm644 systemd/skiffyd.service ~/.config/systemd/user/skiffyd.service
#   systemctl --user daemon-reload
#   systemctl --user enable --now skiffyd
#   journalctl --user -u skiffyd -f
#
# ExecStart assumes the `skiffyd` console script is in ~/.local/bin (where
# pipx, `uv tool install` and `pip install --user` put it). For any other
# install (a virtual environment, a distro package) point it at the real
# script with a drop-in, and keep the rest of this file as it is:
#
#   systemctl --user edit skiffyd
#     [Service]
#     ExecStart=
#     ExecStart=/path/to/venv/bin/skiffyd run
#
# The data directories below are the XDG defaults. If XDG_DATA_HOME or
# XDG_STATE_HOME are set for the user manager, change ExecStartPre= and
# ReadWritePaths= to match (see docs/operations.md).

[Unit]
Description=skiffyd, a headless Matrix client daemon
# The keyring (Secret Service) is reached over the session bus.
After=dbus.socket
# A daemon that keeps failing is given up on instead of restarted forever.
StartLimitIntervalSec=300
StartLimitBurst=5

[Service]
# The daemon writes READY=1 (IPC listening, account resumed), STATUS=<state>
# on every session state change, STOPPING=1 to $NOTIFY_SOCKET, and WATCHDOG=1
# from its event loop every WatchdogSec/2: a wedged daemon is restarted.
Type=notify
WatchdogSec=30s
NotifyAccess=main
ExecStartPre=+/bin/mkdir -p -m 0700 %h/.local/share/skiffyd %h/.local/state/skiffyd
ExecStart=%h/.local/bin/skiffyd run
Restart=on-failure
RestartSec=5s
# 78 (EX_CONFIG): no keyring, or another skiffyd already runs; a restart cannot help.
RestartPreventExitStatus=78
TimeoutStopSec=30s
# Headless, with no Secret Service: set [credentials] backend = "encrypted-file"
# in ~/.config/skiffyd/config.toml and give the passphrase as an encrypted
# credential (docs/operations.md):
#   systemd-creds encrypt --user --name=skiffyd-passphrase pass.txt ~/.config/skiffyd/passphrase.cred
#LoadCredentialEncrypted=skiffyd-passphrase:%h/.config/skiffyd/passphrase.cred
Environment=SKIFFY_LOG_FORMAT=json

# $XDG_RUNTIME_DIR/skiffyd: the IPC sockets and the instance lock.
RuntimeDirectory=skiffyd
RuntimeDirectoryMode=0700
UMask=0077

# Sandbox. In a user unit the file-system and kernel protections need a user
# namespace, hence PrivateUsers=yes (the user's own uid and gid stay mapped,
# so file ownership, D-Bus credentials and the IPC peer-uid check work).
PrivateUsers=yes
NoNewPrivileges=yes
ProtectSystem=strict
ReadWritePaths=%h/.local/share/skiffyd %h/.local/state/skiffyd %t/skiffyd
# Not ProtectHome=: the console script, its virtual environment and the
# keyring's configuration may live in the home directory. It stays
# read-only through ProtectSystem=strict.
PrivateTmp=yes
PrivateDevices=yes
ProtectKernelTunables=yes
ProtectKernelModules=yes
ProtectKernelLogs=yes
ProtectHostname=yes
# AF_UNIX: the IPC sockets, the session bus, sd_notify. AF_INET/6: the homeserver.
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
RestrictNamespaces=yes
RestrictRealtime=yes
RestrictSUIDSGID=yes
LockPersonality=yes
# Checked (docs/operations.md): skiffyd's native code (CPython, pynng via cffi
# in API mode, apsw, msgspec, vodozemac, cryptography, OpenSSL) needs no
# writable+executable memory, and only @system-service system calls.
MemoryDenyWriteExecute=yes
SystemCallArchitectures=native
SystemCallFilter=@system-service
SystemCallErrorNumber=EPERM

[Install]
WantedBy=default.target
"""

LAUNCHD_PLIST_TEMPLATE = r"""<?xml version="1.0" encoding="UTF-8"?>
<!DOCTYPE plist PUBLIC "-//Apple//DTD PLIST 1.0//EN" "http://www.apple.com/DTDs/PropertyList-1.0.dtd">
<!--
  skiffyd as a launchd user agent (macOS).

  launchd expands neither "~" nor "$HOME" and does not search the user's PATH,
  so this file is a template: replace @HOME@ with your home directory, and the
  program path if skiffyd is not in ~/.local/bin (see docs/operations.md):

    mkdir -p ~/Library/LaunchAgents ~/Library/Logs/skiffyd
    sed "s|@HOME@|$HOME|g" launchd/org.skiffyd.daemon.plist \
      > ~/Library/LaunchAgents/org.skiffyd.daemon.plist
    launchctl bootstrap gui/$(id -u) ~/Library/LaunchAgents/org.skiffyd.daemon.plist
-->
<plist version="1.0">
<dict>
	<key>Label</key>
	<string>org.skiffyd.daemon</string>
	<key>ProgramArguments</key>
	<array>
		<string>@HOME@/.local/bin/skiffyd</string>
		<string>run</string>
	</array>
	<key>RunAtLoad</key>
	<true/>
	<!-- Restart after a crash or an error exit; a clean stop (exit 0) stays stopped. -->
	<key>KeepAlive</key>
	<dict>
		<key>SuccessfulExit</key>
		<false/>
	</dict>
	<key>ThrottleInterval</key>
	<integer>10</integer>
	<!-- Seconds between SIGTERM and SIGKILL on stop. -->
	<key>ExitTimeOut</key>
	<integer>30</integer>
	<key>ProcessType</key>
	<string>Background</string>
	<!-- 0077: files the daemon creates are private to the user. -->
	<key>Umask</key>
	<integer>63</integer>
	<key>EnvironmentVariables</key>
	<dict>
		<key>SKIFFY_LOG_FORMAT</key>
		<string>json</string>
	</dict>
	<key>StandardErrorPath</key>
	<string>@HOME@/Library/Logs/skiffyd/skiffyd.log</string>
	<key>StandardOutPath</key>
	<string>@HOME@/Library/Logs/skiffyd/skiffyd.log</string>
</dict>
</plist>
"""
