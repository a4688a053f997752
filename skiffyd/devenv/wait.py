"""Polling with a deadline: the one way the dev environment waits for things.

Never sleep a fixed time and hope; never assert on elapsed time. Ask
repeatedly until the answer is good or the deadline passes, and then say what
the last answer was.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from collections.abc import Callable

T = TypeVar("T")


class WaitTimeout(AssertionError):
    """The condition was not met before the deadline.

    An ``AssertionError`` so that pytest shows it as a test failure.
    """


def wait_for(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    interval: float = 0.05,
    what: str = "condition",
    describe: Callable[[], str] | None = None,
    fatal: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``probe`` until it returns something truthy; return that.

    ``probe`` may raise: the exception counts as "not yet" and the last one is
    reported if the deadline passes, except for the ``fatal`` types, which
    propagate at once (for example "the process died"). ``describe`` adds context to the failure
    message (for example the tail of a log file).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            value = probe()
        except fatal:
            raise
        except Exception as exc:
            last = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            extra = ""
            if describe is not None:
                try:
                    extra = "\n" + describe()
                except Exception as exc:  # the description must not hide the timeout
                    extra = f"\n(could not describe: {exc!r})"
            raise WaitTimeout(
                f"timed out after {timeout:g} s waiting for {what}; last: {last!r}{extra}"
            )
        time.sleep(interval)
        interval = min(interval * 1.5, 0.5)
