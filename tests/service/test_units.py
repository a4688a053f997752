"""The service definitions: the systemd user unit and the launchd agent.

They are checked with the real tools. ``systemd-analyze verify`` prints
problems as warnings and still exits 0, so a check fails on ANY output. A
missing tool is a failure naming the Debian package to install, never a skip.

``verify --user`` resolves ``%h`` from ``$HOME`` and checks that ExecStart's
program exists and is executable, so it runs with a throwaway home holding a
stand-in ``~/.local/bin/skiffyd``: the unit is verified exactly as shipped,
and the real home directory is never touched.
"""

from __future__ import annotations

import os
import plistlib
import shutil
import subprocess
from pathlib import Path

import pytest

from skiffyd.config import Paths

REPO = Path(__file__).resolve().parents[2]
UNIT = REPO / "systemd" / "skiffyd.service"
PLIST = REPO / "launchd" / "org.skiffyd.daemon.plist"


def require(program: str, package: str) -> str:
    path = shutil.which(program)
    if path is None:
        pytest.fail(
            f"`{program}` is not installed; install the Debian package `{package}` "
            f"(apt-get install {package})",
            pytrace=False,
        )
    return path


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as {section: {key: [values, in order]}} (keys may repeat)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"directive outside a section: {line!r}"
        assert not line.endswith("\\"), "continuation lines are not expected here"
        key, sep, value = line.partition("=")
        assert sep, f"not a directive: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit: dict[str, dict[str, list[str]]], section: str, key: str) -> str:
    values = unit.get(section, {}).get(key, [])
    assert len(values) == 1, f"[{section}] {key}= is set {len(values)} times, expected once"
    return values[0]


# ------------------------------------------------------------------ systemd


def verify(unit_file: Path, root: Path, *, with_program: bool = True) -> str:
    """Run ``systemd-analyze verify --user`` in a private environment; its output."""
    analyze = require("systemd-analyze", "systemd")
    home = root / "home"
    runtime = root / "run"
    runtime.mkdir(mode=0o700, parents=True)
    (home / ".local" / "bin").mkdir(parents=True)
    if with_program:
        program = home / ".local" / "bin" / "skiffyd"
        program.write_text("#!/bin/sh\nexit 0\n")
        program.chmod(0o755)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(home),
        "XDG_RUNTIME_DIR": str(runtime),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "XDG_STATE_HOME": str(home / ".local" / "state"),
        "LANG": "C.UTF-8",
        "SYSTEMD_COLORS": "0",
        "SYSTEMD_PAGER": "",
    }
    result = subprocess.run(
        [analyze, "verify", "--user", str(unit_file)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    if result.returncode != 0 and not output:
        output = f"(no output, exit status {result.returncode})"
    return output


def test_unit_verifies_without_any_output(tmp_path: Path) -> None:
    output = verify(UNIT, tmp_path)
    assert output == "", f"systemd-analyze verify --user {UNIT.name}:\n{output}"


def test_verify_reports_problems_it_would_otherwise_hide(tmp_path: Path) -> None:
    # The check above is only meaningful if verify speaks up here: an unknown
    # key is a warning with exit status 0.
    broken = tmp_path / "unit" / "skiffyd.service"
    broken.parent.mkdir()
    text = UNIT.read_text()
    assert "\n[Service]\n" in text
    broken.write_text(text.replace("\n[Service]\n", "\n[Service]\nNoSuchKey=1\n", 1))
    output = verify(broken, tmp_path / "env")
    assert "NoSuchKey" in output


def test_unit_runs_the_console_script_from_the_home_directory(tmp_path: Path) -> None:
    # Without the stand-in program verify must complain about ExecStart's path:
    # proof that %h resolved to the throwaway home and that the path is checked.
    output = verify(UNIT, tmp_path, with_program=False)
    assert "/.local/bin/skiffyd" in output


def test_unit_is_a_notify_service_that_restarts_on_failure(unit: dict) -> None:
    assert one(unit, "Service", "Type") == "notify"
    assert one(unit, "Service", "Restart") == "on-failure"
    exec_start = one(unit, "Service", "ExecStart")
    assert exec_start.startswith(("/", "%h/")), "systemd needs an absolute path"
    assert exec_start.endswith("/skiffyd run")
    assert "SKIFFY_LOG_FORMAT=json" in unit["Service"].get("Environment", [])
    assert one(unit, "Install", "WantedBy") == "default.target"


def test_unit_watchdog_is_fed_by_the_daemon(unit: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    from skiffyd import daemon

    assert one(unit, "Service", "WatchdogSec") == "30s"
    monkeypatch.setenv("WATCHDOG_USEC", "30000000")
    monkeypatch.delenv("WATCHDOG_PID", raising=False)
    assert daemon._watchdog_interval() == 15.0  # pings at half the interval
    monkeypatch.setenv("WATCHDOG_PID", "1")  # another process is the watched one
    assert daemon._watchdog_interval() is None


def test_unit_is_hardened(unit: dict) -> None:
    service = unit["Service"]
    expected = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        # Namespacing options in a user unit only work with a user namespace.
        "PrivateUsers": "yes",
        "PrivateTmp": "yes",
        "ProtectKernelTunables": "yes",
        "LockPersonality": "yes",
        "SystemCallArchitectures": "native",
        "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
        "UMask": "0077",
    }
    for key, value in expected.items():
        assert one(unit, "Service", key) == value, f"{key}= should be {value}"
    assert "SystemCallFilter" in service


def test_unit_can_write_exactly_the_daemon_directories(
    unit: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The writable paths must be the ones skiffyd uses with XDG defaults.
    home = tmp_path / "home"
    runtime = tmp_path / "run"
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(runtime))
    for var in ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME"):
        monkeypatch.delenv(var, raising=False)
    paths = Paths.from_env()

    def expand(value: str) -> Path:
        return Path(value.replace("%h", str(home)).replace("%t", str(runtime)))

    writable = {expand(v) for v in one(unit, "Service", "ReadWritePaths").split()}
    assert writable == {paths.data_dir, paths.state_dir, paths.runtime_dir}
    # ProtectSystem=strict needs them to exist: systemd creates the runtime dir,
    # ExecStartPre the other two.
    assert runtime / one(unit, "Service", "RuntimeDirectory") == paths.runtime_dir
    assert one(unit, "Service", "RuntimeDirectoryMode") == "0700"
    mkdir = one(unit, "Service", "ExecStartPre")
    assert mkdir.startswith("+/bin/mkdir -p -m 0700 ")
    created = {expand(v) for v in mkdir.split()[4:]}
    assert created == {paths.data_dir, paths.state_dir}


# ------------------------------------------------------------------ launchd


def test_plist_is_well_formed_xml() -> None:
    xmllint = require("xmllint", "libxml2-utils")
    result = subprocess.run(
        [xmllint, "--noout", "--nonet", str(PLIST)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0
    assert output == "", f"xmllint --noout {PLIST.name}:\n{output}"


def test_plist_describes_the_agent() -> None:
    with PLIST.open("rb") as f:
        plist = plistlib.load(f)
    assert plist["Label"] == "org.skiffyd.daemon"
    program, *args = plist["ProgramArguments"]
    assert program.endswith("/skiffyd")
    assert args == ["run"]
    assert plist["RunAtLoad"] is True
    assert plist["KeepAlive"] == {"SuccessfulExit": False}
    assert plist["ProcessType"] == "Background"
    assert plist["EnvironmentVariables"] == {"SKIFFY_LOG_FORMAT": "json"}
    assert "/Library/Logs/skiffyd/" in plist["StandardErrorPath"]


def test_plist_paths_are_absolute_once_installed() -> None:
    # launchd expands neither ~ nor $HOME: the template uses @HOME@, which the
    # install step replaces (docs/operations.md).
    with PLIST.open("rb") as f:
        plist = plistlib.load(f)
    paths = [
        plist["ProgramArguments"][0],
        plist["StandardErrorPath"],
        plist["StandardOutPath"],
    ]
    for value in paths:
        assert "~" not in value
        assert "$" not in value
        assert value.replace("@HOME@", "/Users/someone").startswith("/")
