"""``skiffyd service install|uninstall|status`` (skiffyd.service, skiffyd.cli.ops).

The service managers run behind an injectable runner: most tests pass a
fake that records the calls and answers like systemctl/launchctl, with the
files written under a temporary home. The rendered unit is checked with the
real ``systemd-analyze verify --user`` (failing on any output) and the
rendered plist with the real ``xmllint`` and ``plistlib``. The CLI tests run
the real ``systemctl`` with ``XDG_RUNTIME_DIR`` pointing at an empty
directory and no session bus, so no user manager is reachable, on any
machine: the real user manager is never touched.

Not testable here: launchctl itself (macOS), and a reachable systemd user
manager (this container's PID 1 is not systemd).
"""

from __future__ import annotations

import json
import os
import plistlib
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from skiffyd import service
from skiffyd.config import Paths
from skiffyd.devenv.instance import skiffyd_command
from skiffyd.devenv.procs import clean_env
from skiffyd.errors import ConfigError
from skiffyd.service import (
    LAUNCHD_LABEL,
    CommandResult,
    LaunchdAgent,
    SystemdUserService,
    for_platform,
    passphrase_credential,
    program_command,
    render_plist,
    render_unit,
    run_command,
    systemd_quote,
    systemd_split,
    unit_credential,
    unit_program,
)
from tests.service.test_units import PLIST, UNIT, parse_unit, require, verify

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

Answer = CommandResult | tuple[int, str] | tuple[int, str, str]


class FakeRunner:
    """Records argument vectors; answers from ``answers`` (by joined argv), else success."""

    def __init__(self, answers: Mapping[str, Answer] | None = None) -> None:
        self.calls: list[tuple[str, ...]] = []
        self.answers = dict(answers or {})

    def __call__(self, argv: Sequence[str]) -> CommandResult:
        args = tuple(argv)
        self.calls.append(args)
        answer = self.answers.get(" ".join(args))
        if answer is None:
            return CommandResult(args, 0, "", "")
        if isinstance(answer, CommandResult):
            return answer
        code, out, *err = answer
        return CommandResult(args, code, out, err[0] if err else "")


NO_BUS = (1, "", "Failed to connect to bus: No such file or directory")


@pytest.fixture
def program(tmp_path: Path) -> list[str]:
    """A stand-in ``skiffyd`` script: systemd-analyze checks that it exists."""
    path = tmp_path / "venv" / "bin" / "skiffyd"
    path.parent.mkdir(parents=True)
    path.write_text("#!/bin/sh\nexit 0\n")
    path.chmod(0o755)
    return [str(path)]


def systemd(tmp_path: Path, runner: FakeRunner, *, booted: bool = True) -> SystemdUserService:
    marker = tmp_path / "run-systemd-system"
    if booted:
        marker.mkdir(parents=True, exist_ok=True)
    return SystemdUserService(
        tmp_path / "home" / ".config" / "systemd" / "user", runner, booted_marker=marker
    )


# ------------------------------------------------------------------ templates


def test_packaged_templates_are_the_canonical_files() -> None:
    # The wheel carries the templates in skiffyd/service.py; the repository's
    # systemd/ and launchd/ files stay the ones to edit (and to check).
    assert UNIT.read_text() == service.SYSTEMD_UNIT_TEMPLATE, (
        "skiffyd/service.py's SYSTEMD_UNIT_TEMPLATE differs from systemd/skiffyd.service: "
        "paste the file into it again"
    )
    assert PLIST.read_text() == service.LAUNCHD_PLIST_TEMPLATE, (
        "skiffyd/service.py's LAUNCHD_PLIST_TEMPLATE differs from "
        "launchd/org.skiffyd.daemon.plist: paste the file into it again"
    )


def test_rendered_unit_changes_only_exec_start(program: list[str]) -> None:
    canonical = parse_unit(UNIT.read_text())
    rendered = parse_unit(render_unit(program))
    assert rendered["Service"].pop("ExecStart") == [f"{program[0]} run"]
    canonical["Service"].pop("ExecStart")
    assert rendered == canonical


@pytest.mark.parametrize(
    "word",
    [
        "/usr/bin/skiffyd",
        "/home/a b/.venv/bin/skiffyd",
        "/opt/100%/sk",
        "/opt/$HOME/x",
        "/opt/quote\"and'apostrophe",
        "/opt/back\\slash",
    ],
)
def test_systemd_quoting_round_trips(word: str) -> None:
    # `$` is a variable in the arguments, but literal in the program path.
    assert systemd_split("/bin/prog " + systemd_quote(word)) == ["/bin/prog", word]
    assert systemd_split(systemd_quote(word, program=True)) == [word]
    python = "/opt/my python/bin/python$3"
    assert unit_program(render_unit([python, word])) == [python, word]
    if not any(c in word for c in "\\\"'"):
        assert unit_program(render_unit([word, "-m", "skiffyd"])) == [word, "-m", "skiffyd"]


def test_render_refuses_relative_or_control_characters() -> None:
    with pytest.raises(ConfigError):
        render_unit(["skiffyd"])
    with pytest.raises(ConfigError):
        render_unit(["/opt/new\nline/skiffyd"])
    with pytest.raises(ConfigError):
        render_unit(["/opt/tab\there/skiffyd"])
    # systemd refuses these in an executable name ("contains special characters").
    for odd in ("/opt/back\\slash/skiffyd", '/opt/"quoted"/skiffyd', "/opt/it's/skiffyd"):
        with pytest.raises(ConfigError, match="backslash or a quote"):
            render_unit([odd])
    with pytest.raises(ConfigError):
        render_plist(["/x/skiffyd"], Path("relative/home"))


def test_installed_unit_verifies_without_any_output(tmp_path: Path) -> None:
    # The unit as `service install` writes it, for the skiffyd of this
    # environment, through the real systemd-analyze.
    runner = FakeRunner()
    manager = systemd(tmp_path / "a", runner)
    result = manager.install()
    assert result.ok
    assert result.program == program_command()
    output = verify(manager.path, tmp_path / "env")
    assert output == "", f"systemd-analyze verify --user {manager.path}:\n{output}"


def test_unit_with_an_awkward_program_path_verifies(tmp_path: Path) -> None:
    # Blanks, % (a specifier) and $ (a variable) in the path: if the quoting
    # were wrong, verify would name a program that does not exist.
    odd = tmp_path / "my tools" / "100%" / "$x" / "skiffyd"
    odd.parent.mkdir(parents=True)
    odd.write_text("#!/bin/sh\nexit 0\n")
    odd.chmod(0o755)
    unit = tmp_path / "unit" / "skiffyd.service"
    unit.parent.mkdir()
    unit.write_text(render_unit([str(odd)]))
    output = verify(unit, tmp_path / "env")
    assert output == "", f"systemd-analyze verify --user:\n{output}"
    # The check is real: the same path without the program is reported.
    odd.unlink()
    assert "skiffyd" in verify(unit, tmp_path / "env2")


def test_rendered_plist_is_valid_with_the_program_and_home(tmp_path: Path) -> None:
    home = Path("/Users/Tom & Jerry <home>")
    data = render_plist(["/opt/sk iffy/bin/skiffyd"], home)
    plist = plistlib.loads(data)
    assert plist["Label"] == LAUNCHD_LABEL
    assert plist["ProgramArguments"] == ["/opt/sk iffy/bin/skiffyd", "run"]
    assert plist["StandardErrorPath"] == f"{home}/Library/Logs/skiffyd/skiffyd.log"
    assert plist["StandardOutPath"] == plist["StandardErrorPath"]
    assert b"@HOME@" not in data
    # Everything else is the template's.
    template = plistlib.loads(PLIST.read_bytes())
    for key in ("RunAtLoad", "KeepAlive", "ThrottleInterval", "ExitTimeOut", "ProcessType"):
        assert plist[key] == template[key]
    assert plist["Umask"] == 0o077
    assert plist["EnvironmentVariables"] == {"SKIFFY_LOG_FORMAT": "json"}
    # And the XML itself is well formed (the & and < in the home are escaped).
    out = tmp_path / "agent.plist"
    out.write_bytes(data)
    xmllint = require("xmllint", "libxml2-utils")
    r = subprocess.run(
        [xmllint, "--noout", "--nonet", str(out)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert r.returncode == 0
    assert (r.stdout + r.stderr).strip() == ""


# ------------------------------------------------------------------ program


def test_program_is_the_script_this_process_was_started_as(tmp_path: Path) -> None:
    bindir = tmp_path / "bin"
    bindir.mkdir()
    real = tmp_path / "venv" / "bin" / "skiffyd"
    real.parent.mkdir(parents=True)
    real.write_text("#!/bin/sh\n")
    real.chmod(0o755)
    link = bindir / "skiffyd"
    link.symlink_to(real)
    # A link (pipx, uv tool) is kept: it survives upgrades, its target may not.
    assert program_command(str(link), "/nonexistent/python") == [str(link)]


def test_program_falls_back_to_the_script_beside_python_then_to_dash_m(tmp_path: Path) -> None:
    python = tmp_path / "venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text("")
    assert program_command("-c", str(python)) == [str(python), "-m", "skiffyd"]
    script = python.parent / "skiffyd"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    assert program_command("-c", str(python)) == [str(script)]
    # A file named skiffyd that is not executable is not a program.
    other = tmp_path / "skiffyd"
    other.write_text("")
    assert program_command(str(other), str(python)) == [str(script)]


def test_platforms_and_their_paths(tmp_path: Path) -> None:
    home = tmp_path / "home"
    linux = for_platform("linux", env={"HOME": str(home)})
    assert isinstance(linux, SystemdUserService)
    assert linux.path == home / ".config" / "systemd" / "user" / "skiffyd.service"
    custom = for_platform("linux", env={"HOME": str(home), "XDG_CONFIG_HOME": str(tmp_path / "c")})
    assert custom.path == tmp_path / "c" / "systemd" / "user" / "skiffyd.service"
    # A relative XDG_CONFIG_HOME is invalid and ignored, as the spec says.
    relative = for_platform("linux", env={"HOME": str(home), "XDG_CONFIG_HOME": "rel"})
    assert relative.path == linux.path
    mac = for_platform("darwin", env={"HOME": str(home)})
    assert isinstance(mac, LaunchdAgent)
    assert mac.path == home / "Library" / "LaunchAgents" / "org.skiffyd.daemon.plist"
    assert mac.target == f"gui/{os.getuid()}/org.skiffyd.daemon"
    with pytest.raises(ConfigError, match="Linux"):
        for_platform("win32", env={"HOME": str(home)})


def test_real_runner_reports_a_missing_program_instead_of_raising() -> None:
    result = run_command(["skiffyd-no-such-program-here", "--user"])
    assert result.returncode == 127
    assert not result.ok
    assert "not found" in result.message
    ok = run_command(["sh", "-c", "echo out; echo err >&2; exit 3"])
    assert (ok.returncode, ok.stdout, ok.stderr) == (3, "out\n", "err\n")


# ------------------------------------------------------------------ systemd


def test_install_writes_the_unit_then_reloads_and_enables(
    tmp_path: Path, program: list[str]
) -> None:
    runner = FakeRunner()
    manager = systemd(tmp_path, runner)
    result = manager.install(program=program)
    assert result.ok, result.error
    assert result.changed
    assert manager.path.read_text() == render_unit(program)
    assert stat.S_IMODE(manager.path.stat().st_mode) == 0o644
    assert runner.calls == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "--now", "skiffyd.service"),
    ]
    assert [c.argv for c in result.commands] == runner.calls
    # Again: nothing changed, the same two calls (idempotent).
    again = manager.install(program=program)
    assert again.ok
    assert not again.changed
    assert not again.notes
    assert not list(manager.unit_dir.glob(".*tmp"))


def test_reinstall_with_a_new_program_notes_the_restart(tmp_path: Path, program: list[str]) -> None:
    manager = systemd(tmp_path, FakeRunner())
    manager.install(program=program)
    result = manager.install(program=["/elsewhere/skiffyd"])
    assert result.changed
    assert any("restart" in n for n in result.notes)


def test_install_no_enable_only_reloads(tmp_path: Path, program: list[str]) -> None:
    runner = FakeRunner()
    manager = systemd(tmp_path, runner)
    result = manager.install(program=program, enable=False)
    assert result.ok
    assert manager.path.exists()
    assert runner.calls == [("systemctl", "--user", "daemon-reload")]


def test_install_dry_run_changes_nothing(tmp_path: Path, program: list[str]) -> None:
    runner = FakeRunner()
    manager = systemd(tmp_path, runner)
    result = manager.install(program=program, dry_run=True)
    assert result.ok
    assert not manager.path.exists()
    assert not manager.unit_dir.exists()
    assert runner.calls == []
    assert result.content == render_unit(program)
    assert result.planned == [
        ("systemctl", "--user", "daemon-reload"),
        ("systemctl", "--user", "enable", "--now", "skiffyd.service"),
    ]


def test_install_without_a_user_manager_writes_the_file_and_says_why(
    tmp_path: Path, program: list[str]
) -> None:
    runner = FakeRunner({"systemctl --user daemon-reload": NO_BUS})
    manager = systemd(tmp_path, runner, booted=True)
    result = manager.install(program=program)
    assert manager.path.exists()
    assert not result.ok
    assert result.error is not None
    assert "Failed to connect to bus" in result.error
    assert "No systemd user manager is reachable" in result.error
    assert "enable --now skiffyd.service" in result.error
    assert runner.calls == [("systemctl", "--user", "daemon-reload")]
    # On a system that does not run systemd at all, it says that.
    unbooted = systemd(tmp_path / "b", FakeRunner({"systemctl --user daemon-reload": NO_BUS}))
    unbooted.booted_marker = tmp_path / "no-such-dir"
    error = unbooted.install(program=program).error
    assert error is not None
    assert "not running systemd" in error
    # With --no-enable the same failure is a note, not an error.
    quiet = systemd(tmp_path / "c", FakeRunner({"systemctl --user daemon-reload": NO_BUS}))
    result = quiet.install(program=program, enable=False)
    assert result.ok
    assert any("Failed to connect to bus" in n for n in result.notes)


def test_install_reports_a_service_that_fails_to_start(tmp_path: Path, program: list[str]) -> None:
    failure = (
        1,
        "",
        "Job for skiffyd.service failed because the control process exited with error code.",
    )
    runner = FakeRunner({"systemctl --user enable --now skiffyd.service": failure})
    result = systemd(tmp_path, runner).install(program=program)
    assert result.error is not None
    assert "Job for skiffyd.service failed" in result.error
    assert "journalctl --user -u skiffyd" in result.error


def test_uninstall_disables_removes_and_reloads(tmp_path: Path, program: list[str]) -> None:
    runner = FakeRunner()
    manager = systemd(tmp_path, runner)
    manager.install(program=program)
    runner.calls.clear()
    dry = manager.uninstall(dry_run=True)
    assert manager.path.exists()
    assert runner.calls == []
    assert dry.planned == [
        ("systemctl", "--user", "disable", "--now", "skiffyd.service"),
        ("systemctl", "--user", "daemon-reload"),
    ]
    result = manager.uninstall()
    assert result.ok
    assert result.removed
    assert not manager.path.exists()
    assert runner.calls == dry.planned
    # Not installed: nothing to do, nothing run.
    runner.calls.clear()
    again = manager.uninstall()
    assert again.ok
    assert not again.was_installed
    assert runner.calls == []


def test_uninstall_without_a_manager(tmp_path: Path, program: list[str]) -> None:
    answers = {
        "systemctl --user disable --now skiffyd.service": NO_BUS,
        "systemctl --user daemon-reload": NO_BUS,
    }
    # systemd runs, but this shell cannot reach the user manager: it may still
    # be running the service, so that is an error (the file is removed anyway).
    booted = systemd(tmp_path / "a", FakeRunner(answers), booted=True)
    booted.install(program=program, enable=False)
    result = booted.uninstall()
    assert not booted.path.exists()
    assert result.error is not None
    assert result.error.startswith(f"removed {booted.path}, but")
    # No systemd at all: nothing can be running it.
    unbooted = systemd(tmp_path / "b", FakeRunner(answers), booted=False)
    unbooted.install(program=program, enable=False)
    result = unbooted.uninstall()
    assert result.ok
    assert not unbooted.path.exists()
    assert result.notes


def test_status_reads_the_file_and_asks_systemctl(tmp_path: Path, program: list[str]) -> None:
    runner = FakeRunner(
        {
            "systemctl --user is-enabled skiffyd.service": (0, "enabled\n"),
            "systemctl --user is-active skiffyd.service": (0, "active\n"),
        }
    )
    manager = systemd(tmp_path, runner)
    missing = manager.status()
    assert not missing.installed
    assert missing.program is None
    manager.install(program=program)
    st = manager.status()
    assert st.installed
    assert st.program == program
    assert st.program_exists is True
    assert st.current is True
    assert (st.enabled, st.active, st.error) == ("enabled", "active", None)
    assert json.loads(json.dumps(st.to_json()))["program"] == program
    # A hand-edited file is not current; a program that is gone is reported.
    manager.path.write_text(manager.path.read_text() + "# edited\n")
    assert manager.status().current is False
    Path(program[0]).unlink()
    assert manager.status().program_exists is False


def test_status_when_systemctl_answers_but_cannot_reach_the_manager(
    tmp_path: Path, program: list[str]
) -> None:
    # What this container does: is-enabled reads the files, is-active needs the bus.
    runner = FakeRunner(
        {
            "systemctl --user is-enabled skiffyd.service": (1, "disabled\n"),
            "systemctl --user is-active skiffyd.service": NO_BUS,
        }
    )
    manager = systemd(tmp_path, runner)
    manager.install(program=program, enable=False)
    st = manager.status()
    assert st.enabled == "disabled"
    assert st.active is None
    assert st.error is not None
    assert "Failed to connect to bus" in st.error


# ------------------------------------------------------------------ launchd

PRINT = f"gui/{os.getuid()}/{LAUNCHD_LABEL}"
NOT_LOADED = (113, "", f'Could not find service "{LAUNCHD_LABEL}" in domain for user gui: 501')
RUNNING = (0, f"{PRINT} = {{\n\tactive count = 1\n\tstate = running\n\tpid = 4242\n}}\n")


def launchd(tmp_path: Path, runner: FakeRunner) -> LaunchdAgent:
    return LaunchdAgent(tmp_path / "Users" / "me", os.getuid(), runner)


def test_launchd_install_writes_the_plist_and_bootstraps(
    tmp_path: Path, program: list[str]
) -> None:
    runner = FakeRunner({f"launchctl print {PRINT}": NOT_LOADED})
    agent = launchd(tmp_path, runner)
    result = agent.install(program=program)
    assert result.ok, result.error
    assert plistlib.loads(agent.path.read_bytes())["ProgramArguments"] == [*program, "run"]
    assert agent.log_dir.is_dir()  # launchd needs it before the agent starts
    assert runner.calls == [
        ("launchctl", "print", PRINT),
        ("launchctl", "bootstrap", f"gui/{os.getuid()}", str(agent.path)),
    ]


def test_launchd_reinstall_unloads_the_old_definition_first(
    tmp_path: Path, program: list[str]
) -> None:
    runner = FakeRunner({f"launchctl print {PRINT}": RUNNING})
    agent = launchd(tmp_path, runner)
    assert agent.install(program=program).ok
    assert runner.calls == [
        ("launchctl", "print", PRINT),
        ("launchctl", "bootout", PRINT),
        ("launchctl", "bootstrap", f"gui/{os.getuid()}", str(agent.path)),
    ]


def test_launchd_install_failure_and_no_enable(tmp_path: Path, program: list[str]) -> None:
    failing = FakeRunner(
        {
            f"launchctl print {PRINT}": NOT_LOADED,
            f"launchctl bootstrap gui/{os.getuid()} {launchd(tmp_path, FakeRunner()).path}": (
                5,
                "",
                "Bootstrap failed: 5: Input/output error",
            ),
        }
    )
    result = launchd(tmp_path, failing).install(program=program)
    assert result.error is not None
    assert "Bootstrap failed" in result.error
    assert "GUI session" in result.error
    quiet = FakeRunner()
    agent = launchd(tmp_path / "q", quiet)
    assert agent.install(program=program, enable=False).ok
    assert agent.path.exists()
    assert quiet.calls == []


def test_launchd_status_and_uninstall(tmp_path: Path, program: list[str]) -> None:
    runner = FakeRunner({f"launchctl print {PRINT}": RUNNING})
    agent = launchd(tmp_path, runner)
    agent.install(program=program)
    st = agent.status()
    assert (st.installed, st.enabled, st.active, st.current) == (True, "loaded", "running", True)
    assert st.program == program
    runner.calls.clear()
    result = agent.uninstall()
    assert result.ok
    assert not agent.path.exists()
    assert runner.calls == [("launchctl", "print", PRINT), ("launchctl", "bootout", PRINT)]
    runner.answers[f"launchctl print {PRINT}"] = NOT_LOADED
    st = agent.status()
    assert (st.installed, st.enabled, st.active, st.error) == (
        False,
        "not loaded",
        "not running",
        None,
    )


# ------------------------------------------------------------------ the CLI

#: Runs the real CLI with the ops verbs, whether or not skiffyd/cli/__init__.py
#: registers them yet (then it does it here, once).
_WIRED_CLI = textwrap.dedent(
    """
    from skiffyd.cli import app, main, ops
    if "doctor" not in {c.name for c in app.registered_commands}:
        ops.register(app)
    main()
    """
)


def run_cli(
    *args: str, env: Mapping[str, str], timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _WIRED_CLI, *args],
        env=dict(env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        stdin=subprocess.DEVNULL,
    )


@pytest.fixture
def no_manager_env(tmp_path: Path) -> dict[str, str]:
    """A user whose systemd user manager cannot be reached (on any machine)."""
    home = tmp_path / "home"
    runtime = tmp_path / "run"
    home.mkdir()
    runtime.mkdir(mode=0o700)
    env = clean_env(HOME=str(home), XDG_RUNTIME_DIR=str(runtime), LANG="C.UTF-8")
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        env.pop(var, None)
    return env


def assert_one_line_error(r: subprocess.CompletedProcess[str]) -> str:
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, r.stderr
    assert lines[0].startswith("skiffyd: ")
    return lines[0]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="systemd: Linux only")
def test_cli_install_without_a_user_manager(no_manager_env: dict[str, str]) -> None:
    require("systemctl", "systemd")
    unit = Path(no_manager_env["HOME"]) / ".config" / "systemd" / "user" / "skiffyd.service"

    dry = run_cli("service", "install", "--dry-run", env=no_manager_env)
    assert dry.returncode == 0, dry.stderr
    assert not unit.exists()
    assert "would run: systemctl --user enable --now skiffyd.service" in dry.stdout
    assert f"ExecStart={skiffyd_command()[0]} run" in dry.stdout

    r = run_cli("service", "install", env=no_manager_env)
    line = assert_one_line_error(r)
    assert unit.exists()
    assert f"wrote {unit}" in r.stdout
    assert "not running" in line
    assert "systemctl --user daemon-reload" in line
    assert unit_program(unit.read_text()) == skiffyd_command()

    quiet = run_cli("service", "install", "--no-enable", env=no_manager_env)
    assert quiet.returncode == 0, quiet.stderr
    assert "not enabled (--no-enable)" in quiet.stdout

    st = run_cli("service", "status", "--json", env=no_manager_env)
    assert st.returncode == 0, st.stderr
    data = json.loads(st.stdout)
    assert data["installed"] is True
    assert data["path"] == str(unit)
    assert data["program"] == skiffyd_command()
    assert data["program_exists"] is True
    assert data["current"] is True
    assert data["active"] is None
    assert "Failed to connect to bus" in data["error"]

    human = run_cli("service", "status", env=no_manager_env)
    assert human.returncode == 0
    assert f"file:      {unit} (installed)" in human.stdout

    gone = run_cli("service", "uninstall", env=no_manager_env)
    assert not unit.exists()
    assert "Traceback" not in gone.stderr
    if Path("/run/systemd/system").is_dir():
        # systemd runs here but is unreachable: it may still run the service.
        assert_one_line_error(gone)
    else:
        assert gone.returncode == 0, gone.stderr
        assert f"removed {unit}" in gone.stdout
    again = run_cli("service", "uninstall", env=no_manager_env)
    assert again.returncode == 0
    assert "not installed" in again.stdout


def test_console_script_has_the_ops_verbs() -> None:
    # Fails until skiffyd/cli/__init__.py calls ops.register(app).
    for args in (("doctor", "--help"), ("service", "--help"), ("service", "install", "--help")):
        r = subprocess.run(
            [*skiffyd_command(), *args],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
            stdin=subprocess.DEVNULL,
        )
        assert r.returncode == 0, f"skiffyd {' '.join(args)}: {r.stderr.strip()}"


# ------------------------------------------------------- headless passphrase


def config_paths(root: Path, toml: str | None) -> Paths:
    paths = Paths(
        config_dir=root / "config" / "skiffyd",
        data_dir=root / "data" / "skiffyd",
        state_dir=root / "state" / "skiffyd",
        runtime_dir=root / "run" / "skiffyd",
    )
    if toml is not None:
        paths.config_dir.mkdir(parents=True, exist_ok=True)
        (paths.config_dir / "config.toml").write_text(toml)
    return paths


ENCRYPTED_FILE = '[credentials]\nbackend = "encrypted-file"\n'


def test_passphrase_credential_follows_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    assert passphrase_credential(config_paths(tmp_path / "a", None)) == (None, None)
    keyring_cfg = '[credentials]\nbackend = "keyring"\n'
    assert passphrase_credential(config_paths(tmp_path / "b", keyring_cfg)) == (None, None)
    own_file = ENCRYPTED_FILE + 'passphrase_file = "/etc/skiffyd/pass"\n'
    assert passphrase_credential(config_paths(tmp_path / "c", own_file)) == (None, None)
    paths = config_paths(tmp_path / "d", ENCRYPTED_FILE)
    cred = paths.config_dir / "passphrase.cred"
    missing, note = passphrase_credential(paths)
    assert missing is None
    assert note is not None
    assert f"systemd-creds encrypt --user --name=skiffyd-passphrase PASSPHRASE-FILE {cred}" in note
    cred.write_bytes(b"encrypted by systemd-creds")
    assert passphrase_credential(paths) == (cred, None)
    broken = passphrase_credential(config_paths(tmp_path / "e", "[credentials\n"))
    assert broken[0] is None
    assert broken[1] is not None
    assert "config.toml" in broken[1]


def test_unit_loads_the_passphrase_credential(tmp_path: Path, program: list[str]) -> None:
    cred = tmp_path / "my config" / "skiffyd" / "passphrase.cred"
    with pytest.raises(ConfigError, match="without blanks"):
        render_unit(program, credential=cred)
    cred = tmp_path / "cfg" / "skiffyd" / "passphrase.cred"
    text = render_unit(program, credential=cred)
    unit = parse_unit(text)
    assert unit["Service"]["LoadCredentialEncrypted"] == [f"skiffyd-passphrase:{cred}"]
    assert unit_credential(text) == cred
    assert unit_credential(render_unit(program)) is None  # commented out by default
    assert "LoadCredentialEncrypted" not in parse_unit(render_unit(program))["Service"]
    # systemd accepts it (the file itself is only needed when the service starts).
    path = tmp_path / "unit" / "skiffyd.service"
    path.parent.mkdir()
    path.write_text(text)
    output = verify(path, tmp_path / "env")
    assert output == "", f"systemd-analyze verify --user:\n{output}"


def test_install_turns_the_credential_on_and_status_knows_it(
    tmp_path: Path, program: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("CREDENTIALS_DIRECTORY", raising=False)
    paths = config_paths(tmp_path / "skiffy", ENCRYPTED_FILE)
    env = {"HOME": str(tmp_path / "home")}
    runner = FakeRunner()
    # No encrypted passphrase yet: installed all the same, with a note saying how.
    manager = for_platform("linux", runner=runner, env=env, paths=paths)
    assert isinstance(manager, SystemdUserService)
    result = manager.install(program=program)
    assert result.ok
    assert any("systemd-creds encrypt" in n for n in result.notes)
    assert unit_credential(manager.path.read_text()) is None
    # With it: the unit loads it, and status finds the file current.
    cred = paths.config_dir / "passphrase.cred"
    cred.write_bytes(b"encrypted")
    manager = for_platform("linux", runner=runner, env=env, paths=paths)
    assert isinstance(manager, SystemdUserService)
    result = manager.install(program=program)
    assert result.ok
    assert not result.notes or all("systemd-creds" not in n for n in result.notes)
    assert unit_credential(manager.path.read_text()) == cred
    assert manager.status().current is True
    # The same file seen by a manager that knows nothing of the config: still current.
    plain = SystemdUserService(manager.unit_dir, FakeRunner())
    assert plain.status().current is True
