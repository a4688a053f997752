"""structlog set-up: JSON lines when not on a TTY, pretty on a TTY.

Secrets and message bodies never reach a log: callers log codes, ids and
counts, and :func:`_scrub` drops any field whose name says it holds one, as
a second line of defence. User ids are logged hashed (:func:`hash_user`),
and each IPC command's lines carry its ``request_id``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import sys
from typing import TYPE_CHECKING, Any

import structlog

if TYPE_CHECKING:
    from collections.abc import MutableMapping

_SECRET_KEYS = frozenset(
    {
        "password",
        "access_token",
        "refresh_token",
        "token",
        "body",
        "cache_key",
        "pickle_key",
        "formatted_body",
        "content",
        "authorization",
    }
)


_USER_KEYS = frozenset({"user_id", "sender", "user", "inviter"})


def hash_user(user_id: str) -> str:
    """A stable pseudonym for a user id: logs can be correlated, not read."""
    return "u:" + hashlib.sha256(user_id.encode()).hexdigest()[:12]


def _scrub(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        lowered = key.lower()
        if lowered in _SECRET_KEYS:
            event_dict[key] = "<redacted>"
        elif lowered in _USER_KEYS and isinstance(event_dict[key], str):
            event_dict[key] = hash_user(event_dict[key])
    return event_dict


_threshold = logging.INFO


def _level_filter(
    _logger: Any, method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    # Checked per event, not baked into cached loggers, so a reload (SIGHUP)
    # changes the level of every logger at once.
    if logging.getLevelNamesMapping().get(method.upper(), logging.INFO) < _threshold:
        raise structlog.DropEvent
    return event_dict


class _LibraryHandler(logging.Handler):
    """Libraries' stdlib logging (matrix-nio's crypto machine) as structured events.

    Their text names users, rooms and devices in the clear, so only where it
    came from and how bad it was is kept; the text is dropped.
    """

    def emit(self, record: logging.LogRecord) -> None:
        logger = structlog.get_logger("library")
        method = "error" if record.levelno >= logging.ERROR else "warning"
        getattr(logger, method)("library.log", logger=record.name, line=record.lineno)


def _route_library_logs() -> None:
    nio_logger = logging.getLogger("nio")
    if not any(isinstance(h, _LibraryHandler) for h in nio_logger.handlers):
        nio_logger.addHandler(_LibraryHandler())
    nio_logger.setLevel(logging.WARNING)
    nio_logger.propagate = False


def configure(level: str | None = None) -> None:
    global _threshold
    level_name = (level or os.environ.get("SKIFFY_LOG_LEVEL", "info")).upper()
    _threshold = logging.getLevelNamesMapping().get(level_name, logging.INFO)
    fmt = os.environ.get("SKIFFY_LOG_FORMAT", "auto")
    pretty = fmt == "pretty" or (fmt == "auto" and sys.stderr.isatty())
    # Pretty output renders tracebacks as plain text: structlog's default,
    # when rich is installed, is a rich traceback WITH local variables, which
    # could put a token or a password on the terminal.
    renderer: Any = (
        structlog.dev.ConsoleRenderer(exception_formatter=structlog.dev.plain_traceback)
        if pretty
        else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            _level_filter,
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            structlog.processors.format_exc_info if not pretty else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.DEBUG),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    _route_library_logs()
