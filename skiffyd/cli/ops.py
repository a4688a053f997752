"""Operations verbs: ``skiffyd doctor`` and ``skiffyd service install|uninstall|status``.

Unlike the other verbs these do not need the daemon: they look at (and
install) what runs it. :func:`register` adds them to the main app; the work
is in :mod:`skiffyd.doctor` and :mod:`skiffyd.service`, imported when a verb
runs so that ``skiffyd --help`` stays fast.

Exit status: ``doctor`` 1 when a check failed (warnings do not count);
``service install`` 1 when the service could not be enabled or started (the
file is written all the same), except with ``--no-enable``; ``service
uninstall`` 1 when a running service manager could not be told; ``service
status`` 0 whatever the state, 1 only when it cannot tell.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import msgspec
import typer

if TYPE_CHECKING:
    from skiffyd.service import CommandResult, ServiceManager

JsonOpt = Annotated[bool, typer.Option("--json", help="Print JSON for scripts.")]
DryRunOpt = Annotated[
    bool, typer.Option("--dry-run", help="Show what would be written and run; change nothing.")
]


def _fail(message: str, code: str | None = None) -> NoReturn:
    # The CLI's one error style: `skiffyd: <what went wrong> [<CODE>]` on stderr.
    line = f"skiffyd: {message}" + (f" [{code}]" if code else "")
    print(line.replace("\n", " "), file=sys.stderr)
    raise typer.Exit(1)


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def _manager() -> ServiceManager:
    from skiffyd.config import Paths
    from skiffyd.errors import SkiffyError
    from skiffyd.service import for_platform

    try:
        return for_platform(paths=Paths.from_env())
    except SkiffyError as exc:
        _fail(exc.message, exc.code)


def _ran(commands: list[CommandResult]) -> None:
    for c in commands:
        print(f"ran: {c.command}" + ("" if c.ok else f" (failed: {c.message})"))


def doctor(as_json: JsonOpt = False) -> None:
    """Check the config, credentials, directories, daemon, cache, homeserver, clock and service."""
    from skiffyd import doctor as doc

    checks = doc.run_checks()
    if as_json:
        _print_json({"ok": not doc.failed(checks), "checks": [c.to_json() for c in checks]})
    else:
        print(doc.render_text(checks))
    if doc.failed(checks):
        raise typer.Exit(1)


def service_install(
    dry_run: DryRunOpt = False,
    no_enable: Annotated[
        bool, typer.Option("--no-enable", help="Only write the file; do not enable or start it.")
    ] = False,
) -> None:
    """Write the systemd user unit (or launchd agent) for this skiffyd, enable and start it."""
    from skiffyd.errors import SkiffyError

    manager = _manager()
    try:
        result = manager.install(enable=not no_enable, dry_run=dry_run)
    except SkiffyError as exc:
        _fail(exc.message, exc.code)
    program = " ".join([*result.program, "run"])
    if dry_run:
        verb = "would write" if result.changed else "would leave unchanged"
        print(f"{verb} {result.path}, running `{program}`:")
        print(result.content.rstrip("\n"))
        for argv in result.planned:
            print(f"would run: {' '.join(argv)}")
        return
    state = "wrote" if result.changed else "unchanged:"
    print(f"{state} {result.path} (runs `{program}`)")
    _ran(result.commands)
    for note in result.notes:
        print(f"note: {note}")
    if result.error:
        _fail(f"the service file is written, but it is not running: {result.error}")
    if no_enable:
        print("not enabled (--no-enable)")
    elif manager.kind == "systemd":
        print(
            "enabled and started; see `skiffyd service status` or `systemctl --user status skiffyd`"
        )
    else:
        print("loaded; see `skiffyd service status`")


def service_uninstall(dry_run: DryRunOpt = False) -> None:
    """Stop and disable the service and remove its file."""
    from skiffyd.errors import SkiffyError

    manager = _manager()
    try:
        result = manager.uninstall(dry_run=dry_run)
    except SkiffyError as exc:
        _fail(exc.message, exc.code)
    if dry_run:
        if not result.was_installed and not result.planned:
            print(f"nothing to do: {result.path} does not exist")
            return
        for argv in result.planned:
            print(f"would run: {' '.join(argv)}")
        if result.was_installed:
            print(f"would remove {result.path}")
        return
    _ran(result.commands)
    for note in result.notes:
        print(f"note: {note}")
    if result.error:
        _fail(result.error)
    if result.removed:
        print(f"removed {result.path}")
    else:
        print(f"not installed: {result.path} does not exist")


def service_status(as_json: JsonOpt = False) -> None:
    """Whether the service is installed, enabled and running, and where its file is."""
    from skiffyd.errors import SkiffyError

    manager = _manager()
    try:
        st = manager.status()
    except SkiffyError as exc:
        _fail(exc.message, exc.code)
    if as_json:
        _print_json(st.to_json())
        return
    print(f"manager:   {st.manager} (user)")
    print(f"file:      {st.path} ({'installed' if st.installed else 'not installed'})")
    if st.installed:
        program = " ".join([*st.program, "run"]) if st.program else "(none)"
        missing = "" if st.program_exists else " (does not exist)"
        print(f"program:   {program}{missing}")
        if st.current is False:
            print("file:      differs from what this skiffyd writes: `skiffyd service install`")
    print(f"enabled:   {st.enabled or 'unknown'}")
    print(f"active:    {st.active or 'unknown'}")
    if st.error:
        print(f"problem:   {st.error}")
    if not st.installed:
        print("install it with `skiffyd service install`")


def register(app: typer.Typer) -> None:
    """Add ``doctor`` and the ``service`` group to the main app."""
    app.command("doctor")(doctor)
    service_app = typer.Typer(
        help="Run skiffyd as a user service (systemd on Linux, launchd on macOS).",
        no_args_is_help=True,
    )
    service_app.command("install")(service_install)
    service_app.command("uninstall")(service_uninstall)
    service_app.command("status")(service_status)
    app.add_typer(service_app, name="service")
