"""The ``skiffyd`` command's entry point.

``skiffyd run`` is what systemd and launchd start, and how soon it serves
the cache after a start is one of the project's goals (docs/benchmarks.md),
so it goes straight to the daemon. Every other verb is the typer CLI
(:mod:`skiffyd.cli`), whose import (typer, rich, pydantic: about 0.2 s) the
daemon has no use for.
"""

from __future__ import annotations

import sys

#: Exit status of ``skiffyd run`` when it cannot start for a reason a restart
#: will not fix (no keyring, already running, bad config): sysexits' EX_CONFIG,
#: which the systemd unit lists in RestartPreventExitStatus.
EXIT_CONFIG = 78


def main() -> None:
    if sys.argv[1:] == ["run"]:
        sys.exit(run_daemon())
    from skiffyd.cli import main as cli_main

    cli_main()


def run_daemon() -> int:
    """Run the daemon in the foreground until it is stopped; the exit status.

    A failure to start prints one line, ``skiffyd: <what> [<CODE>]``, on
    stderr, as every verb does.
    """
    # structlog imports rich when it can (typer brings it along) to render
    # tracebacks, which the daemon never asks of it (skiffyd.logs: plain
    # tracebacks, never a rich one with local variables, which could hold a
    # token). Unimportable here, it is not loaded: ~70 ms of every start.
    if "rich" not in sys.modules:
        sys.modules["rich"] = None  # type: ignore[assignment]
    import trio

    import ipc_schema as wire
    from skiffyd import logs
    from skiffyd.daemon import serve
    from skiffyd.errors import SkiffyError

    config_codes = {
        wire.ErrorCode.CREDENTIALS_NO_KEYRING,
        wire.ErrorCode.DAEMON_ALREADY_RUNNING,
        wire.ErrorCode.CONFIG_INVALID,
    }
    logs.configure()
    try:
        trio.run(serve)
    except SkiffyError as exc:
        return _failed(exc, config_codes)
    except BaseExceptionGroup as group:
        errors = [e for e in _leaves(group) if isinstance(e, SkiffyError)]
        if errors:
            return _failed(errors[0], config_codes)
        raise
    return 0


def _failed(exc: Exception, config_codes: set[str]) -> int:
    code = getattr(exc, "code", None)
    message = getattr(exc, "message", str(exc))
    line = f"skiffyd: {message}" + (f" [{code}]" if code else "")
    print(line.replace("\n", " "), file=sys.stderr)
    return EXIT_CONFIG if code in config_codes else 1


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in _leaves(e)]
    return [exc]
