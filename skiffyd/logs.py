"""structlog set-up: JSON lines when not on a TTY, pretty on a TTY.

Secrets and message bodies never reach a log: callers log codes, ids and
counts, and :func:`_scrub` drops any field whose name says it holds one, as
a second line of defence.
"""

from __future__ import annotations

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


def _scrub(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    for key in list(event_dict):
        if key.lower() in _SECRET_KEYS:
            event_dict[key] = "<redacted>"
    return event_dict


def configure(level: str | None = None) -> None:
    level_name = (level or os.environ.get("SKIFFY_LOG_LEVEL", "info")).upper()
    fmt = os.environ.get("SKIFFY_LOG_FORMAT", "auto")
    pretty = fmt == "pretty" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if pretty else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            _scrub,
            structlog.processors.format_exc_info if not pretty else structlog.dev.set_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
